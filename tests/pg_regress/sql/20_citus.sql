-- Scale-out on Citus (docs/citus.md; the Citus tests are tests/citus):
-- without Citus, credits.distribute() refuses with UC014 and changes nothing.
\set VERBOSITY default
SELECT credits.distribute();
\echo :LAST_ERROR_SQLSTATE
SELECT credits_internal._distributed() AS distributed;
-- (the ledger keeps its single-node keys)
SELECT count(*) AS single_node_keys FROM pg_indexes
 WHERE schemaname = 'credits' AND indexname IN ('ledger_account_idx', 'holds_hold_id_idx', 'events_account_idx');
-- What does not run on a distributed install yet runs here.
SELECT credits_internal._refuse_distributed('maintenance');
