-- Events (rule 9): thresholds and exhaustion, once per account and window,
-- in a durable table and as NOTIFY credits (delivered on commit only).
\set SHOW_CONTEXT never
SET credits.clock_override = '2027-01-05 10:00:00+00';
SHOW credits.thresholds;
SELECT credits.subscribe('ev_pro', 'pro');
SELECT credits.debit('ev_pro', 'agent', 79) IS NOT NULL AS debited;
SELECT count(*) AS events FROM credits.events WHERE account_id = 'ev_pro';
-- 80 % of the monthly limit.
SELECT credits.debit('ev_pro', 'agent', 1) IS NOT NULL AS debited;
-- 100 %: a threshold event and, nothing being left, an exhausted one.
SELECT credits.debit('ev_pro', 'agent', 20) IS NOT NULL AS debited;
SELECT kind, window_kind, window_key, threshold, payload->>'available' AS available
  FROM credits.events WHERE account_id = 'ev_pro' ORDER BY event_id;
-- Denied again and again: still one exhausted event for the window.
SELECT credits.try_debit('ev_pro', 'agent') AS denied;
SELECT credits.try_debit('ev_pro', 'agent') AS denied;
SELECT count(*) AS exhausted FROM credits.events WHERE account_id = 'ev_pro' AND kind = 'exhausted';
-- Free: the daily window runs out first; each day has its own exhausted event.
SELECT credits.subscribe('ev_free', 'free');
SELECT credits.debit('ev_free', 'code_generation', 10) IS NOT NULL AS debited;
SET credits.clock_override = '2027-01-06 10:00:00+00';
SELECT credits.debit('ev_free', 'code_generation', 10) IS NOT NULL AS debited;
SELECT kind, window_kind, window_key, threshold FROM credits.events WHERE account_id = 'ev_free' ORDER BY event_id;
-- A try_debit that asks for more than is left is denied and reported, naming
-- the window: a denied event, since the window still has credits (SPEC §4.7).
SELECT credits.subscribe('ev_ask', 'pro');
SELECT credits.try_debit('ev_ask', 'agent', 101) AS denied;
SELECT kind, window_kind, payload->>'available' AS available FROM credits.events WHERE account_id = 'ev_ask';
-- Nothing is emitted by a transaction that rolls back.
SELECT credits.subscribe('ev_rollback', 'pro');
BEGIN;
SELECT credits.debit('ev_rollback', 'agent', 100) IS NOT NULL AS debited;
SELECT count(*) AS events_inside FROM credits.events WHERE account_id = 'ev_rollback';
ROLLBACK;
SELECT count(*) AS events_after FROM credits.events WHERE account_id = 'ev_rollback';
-- An upgrade starts a new monthly window: its thresholds fire again.
SELECT credits.subscribe('ev_up', 'free');
SELECT credits.debit('ev_up', 'agent', 10) IS NOT NULL AS debited;
SELECT credits.subscribe('ev_up', 'pro');
SELECT credits.debit('ev_up', 'agent', 85) IS NOT NULL AS debited;
SELECT kind, window_kind, window_key LIKE '2027-01#%' AS restarted_window, threshold
  FROM credits.events WHERE account_id = 'ev_up' ORDER BY event_id;
-- Reservations count: a hold that takes the rest exhausts the window.
SELECT credits.subscribe('ev_hold', 'pro');
SELECT credits.reserve('ev_hold', 'agent', 100) IS NOT NULL AS held;
SELECT kind, window_kind FROM credits.events WHERE account_id = 'ev_hold';
-- A denied try_reserve is a denied event too (here of a daily window);
-- a denied reserve raises UC001 and its event goes with the error.
SELECT credits.subscribe('ev_deny', 'free');
SELECT credits.reserve('ev_deny', 'agent', 11);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS events_after_error FROM credits.events WHERE account_id = 'ev_deny';
SELECT credits.try_reserve('ev_deny', 'agent', 11) IS NULL AS denied;
SELECT kind, window_kind FROM credits.events WHERE account_id = 'ev_deny';
-- The thresholds are a setting.
SET credits.thresholds = '25,50';
SELECT credits.subscribe('ev_cfg', 'pro');
SELECT credits.debit('ev_cfg', 'agent', 60) IS NOT NULL AS debited;
SELECT kind, threshold FROM credits.events WHERE account_id = 'ev_cfg' ORDER BY event_id;
-- Whatever the thresholds (here none below 150%), spending the whole
-- monthly allowance on the fast path still exhausts the window.
SET credits.thresholds = '150';
SELECT credits.subscribe('ev_high', 'pro');
SELECT credits.debit('ev_high', 'agent', 100) IS NOT NULL AS debited;
SELECT kind, window_kind, threshold FROM credits.events WHERE account_id = 'ev_high' ORDER BY event_id;
RESET credits.thresholds;
SELECT * FROM credits.verify();
