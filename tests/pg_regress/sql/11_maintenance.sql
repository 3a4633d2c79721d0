-- Maintenance: durable window resets and expiries (SPEC §3).
-- The background worker calls the same logic at each UTC boundary; here it
-- is called by hand, as a DBA or pg_cron would: CALL credits.run_maintenance(at).
SET client_min_messages = warning;
SET credits.clock_override = '2027-03-30 12:00:00+00';
SELECT credits.subscribe('mt_free', 'free');
SELECT credits.subscribe('mt_pro', 'pro');
-- mt_free runs out for the day; mt_pro uses 40 of 100, has a grant that
-- expires with 5 left and a hold that is never resolved.
SELECT credits.debit('mt_free', 'code_generation', 10) IS NOT NULL AS debited;
SELECT credits.try_debit('mt_free', 'code_generation') IS NULL AS denied;
SELECT credits.debit('mt_pro', 'agent', 40) IS NOT NULL AS debited;
SELECT credits.grant('mt_pro', 5, 'promotional', '2027-04-01 06:00+00') IS NOT NULL AS granted;
SELECT credits.reserve('mt_pro', 'agent', 10, '1 hour') IS NOT NULL AS reserved;

-- Nobody calls these accounts for three days, over the month's end. One run
-- catches up: every missed window closed once, in order.
CALL credits.run_maintenance('2027-04-02 00:00:00.5+00');

SELECT account_id, window_kind, to_char(window_start, 'YYYY-MM-DD') AS window_start, plan,
       window_limit, used, forfeited, to_char(closed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS closed_at
  FROM credits.closed_windows WHERE account_id LIKE 'mt\_%' ORDER BY 1, 2, 3;

-- The ledger shows the forfeited allowance ('F'), the expired grant ('E')
-- and the expired hold ('X').
SELECT account_id, kind, amount, metadata, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS at
  FROM credits.ledger WHERE account_id LIKE 'mt\_%' AND kind IN ('F', 'E', 'X') ORDER BY entry_id;

-- mt_free had run out of its day: the window that opened again says so.
SELECT account_id, kind, window_kind, window_key, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS at
  FROM credits.events WHERE account_id LIKE 'mt\_%' ORDER BY event_id;

-- A second run for the same instant changes nothing.
SELECT (SELECT count(*) FROM credits.ledger) AS ledger_before,
       (SELECT count(*) FROM credits.closed_windows) AS windows_before \gset
CALL credits.run_maintenance('2027-04-02 00:00:00.5+00');
SELECT (SELECT count(*) FROM credits.ledger) - :ledger_before AS new_entries,
       (SELECT count(*) FROM credits.closed_windows) - :windows_before AS new_windows;

-- The status view, as the worker's monitoring sees it.
SET credits.clock_override = '2027-04-02 00:00:00.5+00';
SELECT to_char(done_through AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') AS done_through, running,
       to_char(next_run AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS next_run,
       extract(epoch FROM lag) AS lag_seconds, last_error
  FROM credits.maintenance_status;

-- The accounts carry on in the new windows.
SELECT monthly_used, monthly_remaining, granted_remaining, reserved, available FROM credits.balance('mt_pro');
SELECT daily_used, daily_remaining, monthly_used FROM credits.balance('mt_free');
SELECT credits.debit('mt_free', 'code_generation', 3) IS NOT NULL AS debited;

-- A window closed by the account's own next call is closed the same way,
-- once: here mt_free's April 2 day, closed lazily on April 3 by a debit.
SET credits.clock_override = '2027-04-03 08:00:00+00';
SELECT credits.debit('mt_free', 'code_generation', 1) IS NOT NULL AS debited;
CALL credits.run_maintenance('2027-04-03 08:00:00+00');
SELECT window_kind, to_char(window_start, 'YYYY-MM-DD') AS window_start, used
  FROM credits.closed_windows WHERE account_id = 'mt_free' ORDER BY window_start, window_kind;

-- Bad input: the instant must be a finite timestamp.
CALL credits.run_maintenance('infinity');
\echo :LAST_ERROR_SQLSTATE

SELECT * FROM credits.verify();
