-- Stripes of a hot account (set_stripes): debits spend budgets handed to
-- stripes instead of locking the account row; every other write folds what
-- they did not spend back first; what a customer sees stays exact.
\set SHOW_CONTEXT never
SET credits.clock_override = '2031-03-10 09:00:00+00';
SELECT credits.subscribe('hot', 'pro');                  -- 100 a month
SELECT credits.purchase('hot', 900) IS NOT NULL AS bought; -- 1,000 a month
SELECT credits.set_stripes('hot', 4);
SELECT stripes, stripe_budget FROM credits.accounts WHERE account_id = 'hot';
SELECT stripe, budget, spent FROM credits.stripes WHERE account_id = 'hot' ORDER BY stripe;

-- The first debit finds the stripes empty: the SQL path charges it, then
-- hands each stripe an equal part of half of what the account can spend
-- before its first event (the 80 % threshold of 1,000: 790 after this
-- debit, less than that to stay short of it; a quarter of half: 98 each).
SELECT credits.debit('hot', 'agent', 10) IS NOT NULL AS debited;
SELECT stripes, stripe_budget, daily_used, monthly_used FROM credits.accounts WHERE account_id = 'hot';
SELECT stripe, budget, spent FROM credits.stripes WHERE account_id = 'hot' ORDER BY stripe;
-- what the customer sees counts only what was debited
SELECT monthly_used, monthly_remaining, available FROM credits.balance('hot');

-- Debits now spend from a stripe: the account row is not written.
SELECT pg_stat_force_next_flush();
BEGIN;
SELECT count(credits.debit('hot', 'agent', 1)) AS debited FROM generate_series(1, 20);
SELECT relname, n_tup_upd AS updates FROM pg_stat_xact_user_tables
 WHERE schemaname = 'credits' AND relname IN ('accounts', 'stripes') ORDER BY relname;
COMMIT;
SELECT sum(spent) AS spent_from_stripes FROM credits.stripes WHERE account_id = 'hot';
SELECT monthly_used, available FROM credits.balance('hot');
-- keys work as anywhere: a replay returns the first entry, charges nothing
SELECT credits.debit('hot', 'agent', 2, 'hot-k1') = credits.debit('hot', 'agent', 2, 'hot-k1') AS replayed;
SELECT monthly_used FROM credits.balance('hot');

-- Any other write folds the unspent budgets back first, then decides on
-- exact counters: a refund, here.
SELECT credits.refund(credits.debit('hot', 'agent', 5)) IS NOT NULL AS refunded;
SELECT stripe_budget, monthly_used FROM credits.accounts WHERE account_id = 'hot';
SELECT sum(budget) AS budgets, sum(spent) AS spent FROM credits.stripes WHERE account_id = 'hot';
SELECT monthly_used, available FROM credits.balance('hot');

-- Near an event the stripes hand out less and less, and the SQL path takes
-- the debits that would cross it: the 80 % threshold event comes once, at
-- the debit that crosses it.
SELECT count(credits.debit('hot', 'agent', 25)) AS debited FROM generate_series(1, 31);
SELECT kind, threshold, payload ->> 'monthly_used' AS used_at_event
  FROM credits.events WHERE account_id = 'hot' ORDER BY event_id;
SELECT monthly_used FROM credits.balance('hot');
-- and the last credits: exhausted exactly at the limit, nothing beyond it
SELECT count(credits.try_debit('hot', 'agent', 7)) AS debited FROM generate_series(1, 40);
SELECT monthly_used, available FROM credits.balance('hot');
SELECT credits.debit('hot', 'agent', 4) IS NOT NULL AS debited;
SELECT credits.try_debit('hot', 'agent', 0.0001) AS refused;
SELECT monthly_used, available FROM credits.balance('hot');
SELECT kind, threshold FROM credits.events WHERE account_id = 'hot' ORDER BY event_id;

-- A new day and month: the stripes' budgets were counted in the old
-- windows; they are folded back before the windows close.
SELECT credits.subscribe('warm', 'pro');
SELECT credits.set_stripes('warm', 2);
SELECT credits.debit('warm', 'agent', 1) IS NOT NULL AS debited;    -- refills
SELECT credits.debit('warm', 'agent', 1) IS NOT NULL AS debited;    -- from a stripe
SET credits.clock_override = '2031-04-01 08:00:00+00';
SET client_min_messages = warning;  -- (its progress NOTICE counts every file's accounts)
CALL credits.run_maintenance();
RESET client_min_messages;
SELECT window_kind, window_start, used, forfeited FROM credits.closed_windows
 WHERE account_id = 'warm' ORDER BY window_kind, window_start;
SELECT kind, amount FROM credits.ledger WHERE account_id = 'warm' ORDER BY entry_id;
SELECT stripe_budget, monthly_used FROM credits.accounts WHERE account_id = 'warm';

-- Turning stripes off folds them back and removes them.
SELECT credits.debit('warm', 'agent', 3) IS NOT NULL AS debited;
SELECT credits.set_stripes('warm', 0);
SELECT stripes, stripe_budget, monthly_used FROM credits.accounts WHERE account_id = 'warm';
SELECT count(*) AS stripes_left FROM credits.stripes WHERE account_id = 'warm';

-- A plan made smaller after budgets were handed out: a debit finds the
-- counters (budgets included) past the new limits and takes the SQL path,
-- which folds the budgets back; nothing is spent beyond the new limit.
INSERT INTO credits.plans (plan, daily_limit, monthly_allowance, description) VALUES ('shrinking', NULL, 1000, 'test');
SELECT credits.subscribe('shrink', 'shrinking');
SELECT credits.set_stripes('shrink', 2);
SELECT credits.debit('shrink', 'agent', 10) IS NOT NULL AS debited;   -- refills: 394 handed out
SELECT stripe_budget FROM credits.accounts WHERE account_id = 'shrink';
UPDATE credits.plans SET monthly_allowance = 100 WHERE plan = 'shrinking';
SELECT count(credits.try_debit('shrink', 'agent', 10)) AS debited FROM generate_series(1, 20);
SELECT monthly_used, monthly_limit, available FROM credits.balance('shrink');

-- A striped debit moves the account's time on its stripe: a reader whose
-- clock is behind sees the account at that time (a hold that expired by
-- then no longer counts), as the next write decides there.
SET credits.clock_override = '2031-04-02 10:00:00+00';
SELECT credits.subscribe('clocked', 'pro');
SELECT credits.set_stripes('clocked', 2);
SELECT credits.reserve('clocked', 'agent', 5, ttl => interval '1 hour') IS NOT NULL AS held;  -- until 11:00
SELECT credits.debit('clocked', 'agent', 1) IS NOT NULL AS debited;   -- refills
SET credits.clock_override = '2031-04-02 12:00:00+00';
SELECT credits.debit('clocked', 'agent', 1) IS NOT NULL AS debited;   -- from a stripe, at 12:00
SELECT sum(spent) AS spent_from_stripes FROM credits.stripes WHERE account_id = 'clocked';
SET credits.clock_override = '2031-04-02 10:30:00+00';               -- a clock behind
SELECT reserved, monthly_used FROM credits.balance('clocked');

-- Bad input.
SELECT credits.set_stripes('warm', 1);
SELECT credits.set_stripes('warm', 65);
SELECT credits.set_stripes('warm', NULL);
SELECT credits.set_stripes('nobody', 4);

SELECT * FROM credits.verify();
RESET credits.clock_override;
