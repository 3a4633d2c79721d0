-- Reservations: hold an estimate, settle the actual amount or release.
\set SHOW_CONTEXT never
SET credits.clock_override = '2026-12-07 09:00:00+00';
SELECT credits.subscribe('agent_run', 'pro');
-- An agent run is estimated at 30 credits: they are set aside at once.
SELECT credits.reserve('agent_run', 'agent', 30) AS h1 \gset
SELECT monthly_used, reserved, available FROM credits.balance('agent_run');
-- Held credits are not available to anyone else.
SELECT credits.try_debit('agent_run', 'agent', 71) AS denied;
SELECT credits.reserve('agent_run', 'agent', 71);
\echo :LAST_ERROR_SQLSTATE
-- The run cost 12.3456 (fractional agent credits): charge that, free the rest.
SELECT credits.settle(:h1, 12.3456) AS s1 \gset
SELECT kind, amount, ref = :h1 AS settles_h1 FROM credits.ledger WHERE entry_id = :s1;
SELECT monthly_used, reserved, available FROM credits.balance('agent_run');
-- A hold resolves at most once.
SELECT credits.settle(:h1, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.release(:h1);
\echo :LAST_ERROR_SQLSTATE
-- Release frees everything without charge.
SELECT credits.reserve('agent_run', 'agent', 20) AS h2 \gset
SELECT credits.release(:h2);
SELECT monthly_used, reserved, available FROM credits.balance('agent_run');
SELECT credits.settle(:h2, 5);
\echo :LAST_ERROR_SQLSTATE
-- Settling more than was held: the excess is charged only if available covers it.
SELECT credits.reserve('agent_run', 'agent', 10) AS h3 \gset
SELECT credits.settle(:h3, 15) IS NOT NULL AS settled_with_excess;
SELECT monthly_used, reserved, available FROM credits.balance('agent_run');
SELECT credits.reserve('agent_run', 'agent', 10) AS h4 \gset
SELECT credits.settle(:h4, 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT reserved FROM credits.balance('agent_run');  -- the failed settle changed nothing
-- An unresolved hold expires after its ttl: its credits come back, and it can no longer be settled.
SELECT credits.reserve('agent_run', 'agent', 5, '10 minutes') AS h5 \gset
SET credits.clock_override = '2026-12-07 09:09:59+00';
SELECT reserved FROM credits.balance('agent_run');
SET credits.clock_override = '2026-12-07 09:10:00+00';
SELECT reserved, available FROM credits.balance('agent_run');
SELECT credits.settle(:h5, 5);
\echo :LAST_ERROR_SQLSTATE
-- (the failed settle wrote nothing; the next write that locks the account records the expiry)
SELECT credits.release(:h4);
SELECT kind, amount, metadata FROM credits.ledger WHERE ref = :h5;
-- The Regenerate flow with a hold: reserve, the generation fails, release.
BEGIN;
SELECT credits.reserve('agent_run', 'visual_editor_prompt', 1) AS h6 \gset
SELECT credits.release(:h6);
COMMIT;
-- Idempotent reserve.
SELECT credits.reserve('agent_run', 'agent', 3, idempotency_key => 'run-77') AS k \gset
SELECT credits.reserve('agent_run', 'agent', 3, idempotency_key => 'run-77') = :k AS same_hold;
SELECT credits.reserve('agent_run', 'agent', 4, idempotency_key => 'run-77');
\echo :LAST_ERROR_SQLSTATE
-- Bad input.
SELECT credits.reserve('agent_run', 'agent', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.reserve('agent_run', 'agent', 1, '-1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.reserve('agent_run', 'agent', 1, '1 year');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.reserve('agent_run', 'agent', 1, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.reserve('nobody', 'agent', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.settle(NULL, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.settle(-7, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.settle(:k, 'NaN');
\echo :LAST_ERROR_SQLSTATE
-- Holds count against the daily window too.
SELECT credits.subscribe('agent_free', 'free');
SELECT credits.reserve('agent_free', 'agent', 8) AS hf \gset
SELECT credits.try_debit('agent_free', 'agent', 3) AS denied;
SELECT daily_remaining, reserved, available FROM credits.balance('agent_free');
SELECT * FROM credits.verify();
