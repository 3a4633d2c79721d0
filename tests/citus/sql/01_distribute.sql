-- credits.distribute() on a coordinator with two workers (tests/citus/run).
\set VERBOSITY terse
SET client_min_messages = warning;
CREATE EXTENSION credits;
-- CREATE EXTENSION reached every node, at one version.
SELECT count(DISTINCT result) AS versions, bool_and(success) AS everywhere
  FROM run_command_on_all_nodes($$SELECT extversion FROM pg_extension WHERE extname = 'credits'$$);
-- Accounts made before the install is distributed go with it.
SELECT credits.subscribe('early_' || i, CASE WHEN i % 2 = 0 THEN 'pro' ELSE 'free' END) FROM generate_series(1, 6) i;
SELECT credits.debit('early_1', 'agent', 2, idempotency_key => 'early-key') > 0 AS debited;
SELECT credits.grant('early_2', 5, 'promotional') > 0 AS granted;
SELECT credits.reserve('early_4', 'agent', 3) > 0 AS reserved;
RESET client_min_messages;

-- Meanwhile a session holds the events and then wants the ledger (the
-- worker's steps take the tables in other orders than distribute() locks
-- them): whichever of the two the deadlock is reported to, distribute()
-- goes through (it takes its locks again after one).
\! (/usr/lib/postgresql/15/bin/psql -X -q -h 127.0.0.1 -p 28850 -U postgres -d credits_citus -c 'BEGIN' -c 'SELECT count(*) FROM credits.events' -c 'SELECT pg_sleep(0.5)' -c 'SELECT count(*) FROM credits.ledger' -c 'COMMIT' >/dev/null 2>&1 &); sleep 0.2
SELECT * FROM credits.distribute();
-- Again: nothing left to do.
SELECT * FROM credits.distribute();

-- Per-account tables hashed by account_id in one colocation group, the
-- catalogs replicated to every node.
SELECT p.logicalrelid::regclass AS "table", p.partmethod,
       column_to_column_name(p.logicalrelid, p.partkey) AS distributed_by,
       p.colocationid = (SELECT a.colocationid FROM pg_dist_partition a
                          WHERE a.logicalrelid = 'credits.accounts'::regclass) AS colocated
  FROM pg_dist_partition p
 WHERE p.logicalrelid::regclass::text LIKE 'credits.%'
 ORDER BY 1::text;
-- Every public function that takes an account first is delegated by it.
SELECT count(*) AS delegated, bool_and(o.colocationid = p.colocationid) AS colocated,
       bool_and(NOT coalesce(o.force_delegation, false)) AS not_forced
  FROM pg_dist_object o, pg_dist_partition p
 WHERE o.classid = 'pg_proc'::regclass AND o.distribution_argument_index = 0
   AND p.logicalrelid = 'credits.accounts'::regclass;

-- The accounts made before are served from their shards.
SELECT plan, monthly_used, granted_remaining, reserved FROM credits.balance('early_1');
SELECT plan, monthly_used, granted_remaining, reserved FROM credits.balance('early_2');
SELECT plan, monthly_used, granted_remaining, reserved FROM credits.balance('early_4');
SELECT entry_id AS early_entry FROM credits.ledger WHERE account_id = 'early_1' AND kind = 'D' \gset
SELECT credits.debit('early_1', 'agent', 2, idempotency_key => 'early-key') = :early_entry AS replayed;
SELECT credits.debit('early_1', 'agent', 1) > 0 AS debited;
SELECT count(*) AS entries FROM credits.ledger WHERE account_id = 'early_1';
SELECT * FROM credits.verify();

-- Not on a worker: distribute() runs on the coordinator.
SELECT nodeport AS worker_port FROM pg_dist_node WHERE groupid = 1 \gset
\c - - - :worker_port
SELECT credits.distribute();
\echo :LAST_ERROR_SQLSTATE
