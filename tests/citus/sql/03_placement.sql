-- Where things run and where rows live.
\set VERBOSITY terse
SET client_min_messages = warning;
SELECT credits.subscribe('acct_' || i, 'pro') FROM generate_series(1, 40) i;
RESET client_min_messages;
SELECT count(*) AS debits FROM (SELECT credits.debit('acct_' || i, 'agent', 1, idempotency_key => 'p-' || i)
                                  FROM generate_series(1, 40) i) d;

-- A debit in its own transaction is one command on the account's node:
-- the call itself, nothing else (Citus logs each command it sends).
SELECT n.nodeport AS acct_port
  FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
 WHERE p.shardid = get_shard_id_for_distribution_column('credits.accounts', 'acct_7') \gset
SET citus.log_remote_commands = on;
SELECT credits.debit('acct_7', 'agent', 1) AS e \gset
SELECT * FROM credits.balance('acct_7') \gset
-- Inside a transaction on the coordinator, the debit, the balance and the
-- check each run on the account's node in one command (the commands that
-- name the extension's objects; Citus's own BEGIN and commit aside).
SET citus.grep_remote_commands = '%credits%';
BEGIN;
SELECT credits.debit('acct_7', 'agent', 1) AS e \gset
SELECT * FROM credits.balance('acct_7') \gset
SELECT * FROM credits.check('acct_7', 'agent', 1) \gset
COMMIT;
RESET citus.grep_remote_commands;
RESET citus.log_remote_commands;
EXPLAIN (COSTS OFF) SELECT credits.debit('acct_7', 'agent', 1);
-- The account forms of the calls by entry or hold id are delegated too
-- (the id forms look the id up on every node first).
SELECT credits.reserve('acct_7', 'agent', 2) AS hold7 \gset
SELECT credits.debit('acct_7', 'agent', 2) AS debit7 \gset
EXPLAIN (COSTS OFF) SELECT credits.settle_for('acct_7', :hold7, 1);
EXPLAIN (COSTS OFF) SELECT credits.refund_for('acct_7', :debit7, 1);
SELECT credits.settle_for('acct_7', :hold7, 1) AS e \gset
SELECT credits.refund_for('acct_7', :debit7, 1) AS e \gset
SELECT credits.refund(:debit7, 1) > :debit7 AS refunded_by_id;
SELECT reserved, monthly_used FROM credits.balance('acct_7');
SELECT :acct_port IN (SELECT nodeport FROM pg_dist_node WHERE groupid > 0) AS on_a_worker;

-- Every row is on the shard its account hashes to (the code below SQL
-- finds an account's shard itself: it must agree with Citus), in every
-- per-account table.
SELECT t AS "table", sum(r.result::bigint) AS misplaced
  FROM unnest(credits_internal._distributed_tables()) t,
       LATERAL run_command_on_shards('credits.' || t,
           format($c$SELECT count(*) FROM %%1$s x
                       WHERE get_shard_id_for_distribution_column('credits.%s', x.account_id)
                             <> split_part('%%1$s', '_', -1)::bigint$c$, t)) r
 GROUP BY t ORDER BY t;
SELECT count(*) AS accounts, count(*) FILTER (WHERE l.n >= 2) AS with_entries
  FROM credits.accounts a
  LEFT JOIN LATERAL (SELECT count(*) AS n FROM credits.ledger l WHERE l.account_id = a.account_id) l ON true
 WHERE a.account_id LIKE 'acct_%';
-- Delegated debits run on the workers, none on the coordinator (per-node
-- counters in shared memory).
SELECT bool_and(success) AS reset FROM run_command_on_all_nodes($$SELECT credits.stats_reset()$$);
SELECT credits.debit('acct_1', 'agent', 1) AS e \gset
SELECT credits.debit('acct_2', 'agent', 1) AS e \gset
SELECT credits.debit('acct_3', 'agent', 1) AS e \gset
SELECT credits.try_debit('acct_4', 'agent', 1) AS e \gset
SELECT credits.try_debit('acct_5', 'agent', 1) AS e \gset
SELECT n.groupid > 0 AS worker, sum(r.result::bigint) AS charges
  FROM run_command_on_all_nodes($$SELECT coalesce(sum(charges), 0) FROM credits.stats$$) r
  JOIN pg_dist_node n USING (nodeid)
 GROUP BY 1 ORDER BY 1;
-- Ids are unique across nodes, each carrying the group of the node that
-- made it: the workers, for the debits called inside one statement on the
-- coordinator above too (each ran on its account's node).
SELECT count(*) = count(DISTINCT entry_id) AS unique_ids,
       count(DISTINCT entry_id & 65535) AS node_groups
  FROM credits.ledger WHERE account_id LIKE 'acct_%' AND kind = 'D';
-- A call sent straight to a worker that does not hold the account works
-- too (routed by Citus from there).
SELECT nodeport AS other_port FROM pg_dist_node
 WHERE groupid > 0 AND nodeport <> :acct_port LIMIT 1 \gset
\c - - - :other_port
SELECT credits.debit('acct_7', 'agent', 1) AS e \gset
SELECT monthly_used FROM credits.balance('acct_7');
