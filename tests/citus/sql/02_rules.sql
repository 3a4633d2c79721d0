-- The core rules through the coordinator: each call in its own transaction
-- (delegated to the account's node: the statement is the call alone, its
-- result kept with \gset), and inside a transaction (run on the
-- coordinator, statement by statement on the node). Errors keep their
-- SQLSTATE and message.
\set VERBOSITY terse
SET client_min_messages = warning;
SELECT credits.subscribe('free_1', 'free');
SELECT credits.subscribe('pro_1', 'pro');
SELECT credits.subscribe('pro_2', 'pro');
SELECT credits.subscribe('grantee', 'enterprise');
RESET client_min_messages;

-- Daily limit (free: 10 a day, 25 a month), exact.
SELECT credits.debit('free_1', 'code_generation', 4) AS e \gset
SELECT credits.debit('free_1', 'agent', 6) AS e \gset
SELECT credits.try_debit('free_1', 'agent', 1) AS refused;
SELECT credits.debit('free_1', 'agent', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT allowed, available, limiting_window FROM credits.check('free_1', 'agent', 1);
SELECT plan, daily_used, daily_remaining, monthly_used, available FROM credits.balance('free_1');

-- Unknown account, unknown feature, bad quantity: their SQLSTATEs.
SELECT credits.debit('nobody', 'agent', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('pro_1', 'no_such_feature', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('pro_1', 'agent', -1);
\echo :LAST_ERROR_SQLSTATE

-- Idempotency: a replay returns the same entry; the same key for another
-- request is refused.
SELECT credits.debit('pro_1', 'agent', 5, idempotency_key => 'k-1') AS first \gset
SELECT credits.debit('pro_1', 'agent', 5, idempotency_key => 'k-1') = :first AS replayed;
SELECT credits.debit('pro_1', 'agent', 6, idempotency_key => 'k-1');
\echo :LAST_ERROR_SQLSTATE

-- Grants (an enterprise account has no allowance of its own): a debit
-- draws from them, its refund (by entry id: found on its node) gives back.
SELECT credits.grant('grantee', 10, 'promotional') AS g \gset
SELECT credits.debit('grantee', 'agent', 4) AS drawn \gset
SELECT amount, from_grants FROM credits.ledger WHERE account_id = 'grantee' AND entry_id = :drawn;
SELECT granted_remaining FROM credits.balance('grantee');
SELECT credits.refund(:drawn, 3) > :drawn AS refunded;
SELECT granted_remaining FROM credits.balance('grantee');
SELECT status, remaining FROM credits.grants('grantee');
\set VERBOSITY sqlstate
SELECT credits.refund(:drawn, 2);
\set VERBOSITY terse

-- Holds: reserved credits count as spent until settled or released.
SELECT credits.reserve('pro_1', 'agent', 20) AS hold \gset
SELECT reserved, available FROM credits.balance('pro_1');
SELECT credits.settle(:hold, 12) > :hold AS settled;
SELECT credits.reserve('pro_1', 'agent', 7) AS hold2 \gset
SELECT credits.release(:hold2);
SELECT reserved, monthly_used, available FROM credits.balance('pro_1');

-- Purchases raise the monthly limit; the ledger and balance() agree.
SELECT credits.purchase('pro_1', 50) AS p \gset
SELECT monthly_limit, monthly_used FROM credits.balance('pro_1');
SELECT purchased, monthly_used, reserved FROM credits.ledger_balance('pro_1');

-- Inside a transaction: the same rules, each debit run on its account's
-- node in the transaction (one round trip), other calls statement by
-- statement.
BEGIN;
SELECT credits.debit('pro_1', 'agent', 1) > 0 AS charged;
SELECT credits.debit('pro_2', 'agent', 1) > 0 AS charged_on_another_account;
ROLLBACK;
SELECT monthly_used FROM credits.balance('pro_2');
BEGIN;
SELECT credits.debit('pro_1', 'agent', 2) > 0 AS charged;
SELECT credits.try_debit('pro_1', 'agent', 10000) AS refused;
SELECT monthly_used FROM credits.balance('pro_1');
COMMIT;
SELECT monthly_used FROM credits.balance('pro_1');

-- Striped accounts.
SELECT credits.set_stripes('pro_1', 4);
SELECT count(*) AS debits FROM (SELECT credits.debit('pro_1', 'agent', 1) FROM generate_series(1, 10)) d;
SELECT monthly_used FROM credits.balance('pro_1');

-- A batch: on the coordinator, each row decided on its account's node.
SELECT ordinality, outcome, sqlstate
  FROM credits.debit_many(ARRAY['pro_2', 'pro_2', 'free_1', 'nobody'], ARRAY['agent', 'agent', 'agent', 'agent'],
                          ARRAY[1, 2, 1, 1])
 ORDER BY ordinality;
SELECT monthly_used FROM credits.balance('pro_2');

-- The event feed: every node's events through the coordinator, in one
-- order, each once (tests/citus/run reads it while nodes write).
SELECT count(*) > 0 AS events_stored FROM credits.events WHERE account_id = 'free_1';
-- (read_events in a statement of its own: beside another query of the
-- shards, that query's transactions on the workers would hold it back)
SELECT count(*) AS events FROM credits.events \gset
SELECT count(*) > 0 AS some_read, count(*) = :events AS all_read,
       bool_and(f.cursor = f.event_id) AS cursor_is_id
  FROM credits.read_events(0, 1000) f;
SELECT max("cursor") AS last FROM credits.read_events(0, 1000) \gset
SELECT count(*) AS after_the_last FROM credits.read_events(:last, 1000);
SELECT credits.subscribe('feed_1', 'pro');
SELECT credits.try_debit('feed_1', 'agent', 1000) AS refused;  -- (a denied event, on its node)
SELECT count(*) AS new_events, min(kind) AS kind, min(account_id) AS account
  FROM credits.read_events(:last, 1000);
SELECT count(*) FROM credits.read_events(-1, 10);
\echo :LAST_ERROR_SQLSTATE
-- A transaction idle on the coordinator counts as one that may still hold
-- ids, written or not (its rows are written on the workers): a single
-- server would not count one without an xid.
\! ( (echo 'BEGIN; SELECT 1;'; sleep 1; echo 'COMMIT;') | /usr/lib/postgresql/15/bin/psql -X -q -h 127.0.0.1 -p 28850 -U postgres -d credits_citus >/dev/null 2>&1 &); sleep 0.3
SELECT credits_internal._older_transactions_open(clock_timestamp()) AS idle_one_counts,
       EXISTS (SELECT 1 FROM pg_stat_activity WHERE state = 'idle in transaction' AND backend_xid IS NULL
                                                AND datname = current_database()) AS it_is_idle_without_xid;

-- The monthly reports, over the accounts of both workers.
SELECT account_id, feature, debited, refunded, plan FROM credits.usage_monthly
 WHERE account_id IN ('free_1', 'pro_1', 'grantee') ORDER BY 1, 2;
SELECT account_id, net_usage, net_from_grants, granted, purchased, plan FROM credits.account_months
 WHERE account_id IN ('free_1', 'pro_1', 'grantee') ORDER BY 1;

SELECT account_id, plan, monthly_used, granted_remaining, available FROM credits.usage_display
 WHERE account_id IN ('free_1', 'pro_1', 'grantee') ORDER BY 1;

-- The history and the audit.
SELECT kind, amount, from_grants FROM credits.history('pro_1', max_rows => 5);
-- Each account's entries in order of id and time, ids unique across nodes.
SELECT count(*) = count(DISTINCT entry_id) AS unique_ids FROM credits.ledger;
SELECT count(*) AS out_of_order
  FROM (SELECT account_id, entry_id, at, lag(at) OVER (PARTITION BY account_id ORDER BY entry_id) AS before
          FROM credits.ledger) l
 WHERE l.at < l.before;
SELECT * FROM credits.verify();
