-- The application API, 1.0: structured answers, webhook-safe writes, what
-- the application shows its customers. Every block ends with verify().
\set SHOW_CONTEXT never
SET credits.clock_override = '2030-06-10 09:00:00+00';
-- An error as a client sees it: SQLSTATE, DETAIL (JSON for the errors a
-- client acts on, docs/sqlstates.md), HINT.
CREATE FUNCTION pg_temp.error_of(statement text)
RETURNS TABLE (sqlstate text, detail text, hint text) LANGUAGE plpgsql AS $$
DECLARE
    v_state text; v_detail text; v_hint text;
BEGIN
    EXECUTE statement;
    RETURN QUERY SELECT 'no error'::text, NULL::text, NULL::text;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;
    RETURN QUERY SELECT v_state, nullif(v_detail, ''), nullif(v_hint, '');
END
$$;

-- check(): what a debit would do, writing nothing.
SELECT credits.subscribe('api_free', 'free');
SELECT * FROM credits.check('api_free', 'agent');
SELECT credits.debit('api_free', 'agent', 8) IS NOT NULL AS debited;
-- the daily limit caps it now (2 left today, 17 this month)
SELECT * FROM credits.check('api_free', 'agent', 3);
SELECT count(*) AS entries_before FROM credits.ledger WHERE account_id = 'api_free';
SELECT allowed, cost FROM credits.check('api_free', 'agent', 2);
SELECT count(*) AS entries_after FROM credits.ledger WHERE account_id = 'api_free';
-- UC001: the same facts as JSON in DETAIL, the reset in HINT.
SELECT * FROM pg_temp.error_of($$SELECT credits.debit('api_free', 'agent', 3)$$);
SELECT credits.debit('api_free', 'agent', 2) IS NOT NULL AS debited;
SET credits.clock_override = '2030-06-11 09:00:00+00';
SELECT credits.debit('api_free', 'agent', 10) IS NOT NULL AS debited;
-- the monthly window refuses it (5 left this month, 0 today): waiting for
-- tomorrow would not help, so the monthly window is the one named
SELECT * FROM credits.check('api_free', 'agent', 6);
SELECT * FROM pg_temp.error_of($$SELECT credits.debit('api_free', 'agent', 6)$$);
-- a hold counts as reserved in the facts
SELECT credits.subscribe('api_hold', 'free');
SELECT credits.reserve('api_hold', 'agent', 4) IS NOT NULL AS held;
SELECT * FROM pg_temp.error_of($$SELECT credits.reserve('api_hold', 'agent', 7)$$);
-- errors a client acts on carry JSON too
SELECT * FROM pg_temp.error_of($$SELECT credits.purchase('api_free', 5)$$);
SELECT * FROM pg_temp.error_of($$SELECT credits.refund(-5)$$);
SELECT * FROM credits.verify();

-- Quantities as double precision (a Python float) resolve, and are checked
-- like any other amount.
SELECT credits.subscribe('api_float', 'pro');
SELECT credits.debit('api_float', 'agent', 1.5::float8) IS NOT NULL AS debited;
SELECT credits.try_debit('api_float', 'agent', 0.25::float8) IS NOT NULL AS debited;
SELECT * FROM credits.check('api_float', 'agent', 2.5::float8);
SELECT sqlstate FROM pg_temp.error_of($$SELECT credits.debit('api_float', 'agent', 0.12345::float8)$$);
SELECT sqlstate FROM pg_temp.error_of($$SELECT credits.debit('api_float', 'agent', 'NaN'::float8)$$);
SELECT sqlstate FROM pg_temp.error_of($$SELECT credits.debit('api_float', 'agent', 'Infinity'::float8)$$);
-- an untyped string resolves to the double precision form too: a fraction
-- on 10^11 or more is refused there rather than rounded; as numeric it is exact
SELECT * FROM pg_temp.error_of($$SELECT credits.grant('api_float', '123456789012.3456')$$);
SELECT credits.grant('api_float', '123456789012.3456'::numeric) AS big \gset
SELECT amount FROM credits.ledger WHERE entry_id = :big;
SELECT credits.void_grant(:big) IS NOT NULL AS voided;
SELECT credits.grant('api_float', 2.5::float8) IS NOT NULL AS granted,
       credits.purchase('api_float', 10.0::float8) IS NOT NULL AS bought;
SELECT monthly_used, monthly_limit, granted_remaining FROM credits.balance('api_float');
SELECT * FROM credits.verify();

-- Webhook-safe writes: a retry with the same key takes effect once and
-- returns the first result; the same key for a different request is UC005.
SELECT credits.subscribe('api_hook', 'free', idempotency_key => 'evt_1');
SELECT credits.subscribe('api_hook', 'pro', fresh_allowance => true, idempotency_key => 'evt_2');
SELECT credits.debit('api_hook', 'agent', 30) IS NOT NULL AS debited;
-- the upgrade webhook delivered again: no second fresh allowance
SELECT credits.subscribe('api_hook', 'pro', fresh_allowance => true, idempotency_key => 'evt_2');
SELECT monthly_used, available FROM credits.balance('api_hook');
-- an old webhook retried after a newer change changes nothing
SELECT credits.subscribe('api_hook', 'free', idempotency_key => 'evt_1');
SELECT plan FROM credits.balance('api_hook');
SELECT * FROM pg_temp.error_of($$SELECT credits.subscribe('api_hook', 'free', idempotency_key => 'evt_2')$$);
SELECT credits.purchase('api_hook', 50, 'inv_1') = credits.purchase('api_hook', 50, 'inv_1') AS same_entry;
SELECT monthly_limit FROM credits.balance('api_hook');
SELECT sqlstate FROM pg_temp.error_of($$SELECT credits.purchase('api_hook', 60, 'inv_1')$$);
SELECT credits.debit('api_hook', 'agent', 10) AS d \gset
SELECT credits.refund(:d, 4, 'partial', 'rf_1') = credits.refund(:d, 4, 'partial', 'rf_1') AS same_entry;
SELECT sum(amount) AS refunded FROM credits.ledger WHERE ref = :d AND kind = 'R';
SELECT sqlstate FROM pg_temp.error_of(format($$SELECT credits.refund(%s, 5, 'partial', 'rf_1')$$, :d));
SELECT * FROM credits.verify();

-- settle and release: again the same way returns the first result; any
-- other way is UC008 with the state as JSON; settle(hold, 0) is a release.
SELECT credits.reserve('api_hook', 'agent', 5) AS h1 \gset
SELECT credits.settle(:h1, 3) = credits.settle(:h1, 3) AS same_entry;
SELECT * FROM pg_temp.error_of(format('SELECT credits.settle(%s, 4)', :h1));
SELECT * FROM pg_temp.error_of(format('SELECT credits.release(%s)', :h1));
SELECT credits.reserve('api_hook', 'agent', 5) AS h2 \gset
SELECT credits.settle(:h2, 0) AS released \gset
SELECT kind, amount FROM credits.ledger WHERE entry_id = :released;
SELECT credits.release(:h2);
SELECT credits.settle(:h2, 0) = :released AS same_entry;
SELECT * FROM pg_temp.error_of(format('SELECT credits.settle(%s, 1)', :h2));
SELECT reserved FROM credits.balance('api_hook');
SELECT * FROM credits.verify();

-- Corrections, each a ledger entry. void_grant removes what is left of a
-- grant; again returns the same entry; a refund of a draw from it is expired.
SELECT credits.grant('api_hook', 20, 'promotional') AS g \gset
SELECT credits.debit('api_hook', 'agent', 100) AS d2 \gset
SELECT granted_remaining FROM credits.balance('api_hook');
SELECT credits.void_grant(:g, 'campaign withdrawn') AS v \gset
SELECT credits.void_grant(:g) = :v AS same_entry;
SELECT kind, amount, ref, metadata FROM credits.ledger WHERE entry_id = :v;
SELECT granted_remaining FROM credits.balance('api_hook');
SELECT credits.refund(:d2) IS NOT NULL AS refunded;
SELECT granted_remaining FROM credits.balance('api_hook');
SELECT * FROM pg_temp.error_of(format('SELECT credits.void_grant(%s)', :d2));
SELECT credits.grant('api_hook', 5, 'promotional', '2030-06-12 00:00:00+00') AS g2 \gset
SET credits.clock_override = '2030-06-13 09:00:00+00';
SELECT sqlstate, detail::jsonb ->> 'state' AS state FROM pg_temp.error_of(format('SELECT credits.void_grant(%s)', :g2));
-- reduce_purchase: lower from the next month on; this month keeps what it had.
SELECT available, monthly_limit FROM credits.balance('api_hook');
SELECT credits.reduce_purchase('api_hook', 50, 'down_1') = credits.reduce_purchase('api_hook', 50, 'down_1') AS same_entry;
SELECT available, monthly_limit FROM credits.balance('api_hook');
SELECT * FROM pg_temp.error_of($$SELECT credits.reduce_purchase('api_hook', 1)$$);
SET credits.clock_override = '2030-07-01 00:00:01+00';
SET client_min_messages = warning;  -- (its progress counts every account of these tests)
CALL credits.run_maintenance();
RESET client_min_messages;
SELECT monthly_limit, available FROM credits.balance('api_hook');
SELECT * FROM credits.verify();

-- history(): the customer's transactions, newest first, keyset-paginated.
SELECT entry_id AS last_entry, kind, feature, amount, from_grants, plan, day, month, reason
  FROM credits.history('api_hook', max_rows => 6);
SELECT min(entry_id) AS page_end FROM (SELECT entry_id FROM credits.history('api_hook', max_rows => 6)) p \gset
SELECT kind, feature, amount, plan, day, month, ref IS NOT NULL AS has_ref, reason
  FROM credits.history('api_hook', before_entry => :page_end, max_rows => 100);
SELECT sqlstate FROM pg_temp.error_of($$SELECT * FROM credits.history('api_hook', max_rows => 0)$$);
SELECT sqlstate FROM pg_temp.error_of($$SELECT * FROM credits.history('nobody')$$);
-- grants(): kind, amount, remaining, expiry, status.
SELECT kind, amount, remaining, expires_at, status FROM credits.grants('api_hook');

-- Roles: the billing system runs the account lifecycle, the application
-- reads any account and the catalogs; neither edits catalogs or runs maintenance.
SET ROLE credits_billing;
SELECT credits.subscribe('api_billing', 'pro', idempotency_key => 'b1');
SELECT credits.purchase('api_billing', 10, 'b2') IS NOT NULL AS bought;
SELECT credits.grant('api_billing', 5) AS bg \gset
SELECT credits.void_grant(:bg) IS NOT NULL AS voided;
SELECT credits.reduce_purchase('api_billing', 10) IS NOT NULL AS reduced;
SELECT available FROM credits.balance('api_billing');
SELECT sqlstate FROM pg_temp.error_of($$SELECT credits.debit('api_billing', 'agent', 1)$$);
SELECT sqlstate FROM pg_temp.error_of($$UPDATE credits.plans SET daily_limit = 1 WHERE plan = 'free'$$);
SELECT sqlstate FROM pg_temp.error_of($$CALL credits.run_maintenance()$$);
RESET ROLE;
SET ROLE credits_app;
SELECT allowed FROM credits.check('api_billing', 'agent');
SELECT count(*) > 0 AS reads_history FROM credits.history('api_billing');
SELECT count(*) AS grants FROM credits.grants('api_billing');
SELECT cost FROM credits.features WHERE feature = 'agent';
SELECT monthly_allowance FROM credits.plans WHERE plan = 'pro';
SELECT sqlstate FROM pg_temp.error_of($$SELECT credits.subscribe('api_app', 'pro')$$);
SELECT sqlstate FROM pg_temp.error_of($$SELECT credits.void_grant(1)$$);
RESET ROLE;
SELECT * FROM credits.verify();

-- Analysts: the plan per account and per month, forfeits by plan and cause.
SET ROLE credits_reader;
SELECT account_id, plan, daily_limit, monthly_allowance, purchased, monthly_limit
  FROM credits.account_plans WHERE account_id LIKE 'api\_%' ORDER BY account_id;
SELECT account_id, month, plan, net_usage, forfeited
  FROM credits.account_months WHERE account_id = 'api_hook' ORDER BY month;
SELECT DISTINCT account_id, month, plan FROM credits.usage_monthly WHERE account_id = 'api_hook' ORDER BY month;
SELECT month, plan, cause, accounts, forfeited FROM credits.forfeits_monthly
 WHERE month = '2030-06-01' ORDER BY plan, cause;
SELECT account_id, plan, available FROM credits.usage_display WHERE account_id = 'api_hook';
SELECT sqlstate FROM pg_temp.error_of($$SELECT * FROM credits.accounts$$);
RESET ROLE;
