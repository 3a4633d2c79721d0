-- UTC boundaries on a distributed install: the clock (credits.clock_override)
-- is set for the database (Citus passes ALTER DATABASE ... SET on to every
-- node), as a delegated call reads it on the account's node. Windows close
-- at each account's next call.
\set VERBOSITY terse
ALTER DATABASE credits_citus SET credits.clock_override = '2031-01-31 23:00:00+00';
\c
SELECT DISTINCT result AS clock_on_every_node
  FROM run_command_on_all_nodes($$SELECT current_setting('credits.clock_override')$$);
SET client_min_messages = warning;
SELECT credits.subscribe('edge_1', 'free'), credits.subscribe('edge_2', 'free');
RESET client_min_messages;
SELECT credits.debit('edge_1', 'agent', 10) AS e \gset
SELECT credits.debit('edge_2', 'agent', 3) AS e \gset
SELECT credits.try_debit('edge_1', 'agent', 1) AS refused;
-- Accounts that make no call after midnight: maintenance is theirs.
SELECT count(credits.subscribe('idle_' || i, 'free')) AS idle FROM generate_series(1, 8) i;
SELECT count(credits.debit('idle_' || i, 'agent', 2)) AS debited FROM generate_series(1, 8) i;
SELECT credits.reserve('idle_1', 'agent', 3, '30 minutes') AS h \gset
SELECT credits.grant('idle_2', 4, 'promotional', '2031-01-31 23:45:00+00') AS g \gset
-- Entries made on the coordinator (calls inside a transaction run their
-- statements there) with its ids ahead of the workers' (as they get when
-- the coordinator follows a busy account's history): what maintenance
-- writes later on the accounts' nodes must come after them.
SELECT setval('credits.ledger_entry_id_seq', 100000000) > 0 AS coordinator_ahead;
BEGIN;
SELECT credits.grant('idle_1', 1, 'adjustment') AS g1 \gset
SELECT credits.grant('idle_2', 1, 'adjustment') AS g2 \gset
COMMIT;
SELECT count(DISTINCT p.groupid) AS on_both_workers
  FROM generate_series(1, 8) i
  JOIN pg_dist_placement p ON p.shardid = get_shard_id_for_distribution_column('credits.accounts', 'idle_' || i);

ALTER DATABASE credits_citus SET credits.clock_override = '2031-02-01 00:00:05+00';
\c
SELECT DISTINCT result AS clock_on_every_node
  FROM run_command_on_all_nodes($$SELECT current_setting('credits.clock_override')$$);
SELECT daily_used, monthly_used, available FROM credits.balance('edge_1');
-- The first call of the month closes the windows (below SQL, on the node).
SELECT credits.debit('edge_1', 'agent', 1) AS e \gset
-- ... and in a transaction through the coordinator (the closing routed to the node).
BEGIN;
SELECT credits.debit('edge_2', 'agent', 2) > 0 AS charged;
COMMIT;
SELECT account_id, window_kind, window_start, used, forfeited
  FROM credits.closed_windows WHERE account_id LIKE 'edge_%' ORDER BY 1, 2, 3;
SELECT account_id, kind, window_kind, window_key FROM credits.events
 WHERE account_id LIKE 'edge_%' ORDER BY account_id, event_id;
SELECT daily_used, monthly_used, available FROM credits.balance('edge_1');
SELECT daily_used, monthly_used, available FROM credits.balance('edge_2');
SELECT * FROM credits.verify();

-- Maintenance: every node closes the windows and expires the holds and
-- grants of its own shards (each node's background worker does; here run
-- by hand on every node).
SELECT bool_and(success) AS ran_everywhere
  FROM run_command_on_all_nodes($$CALL credits.run_maintenance()$$);
SELECT count(*) AS idle_windows_closed FROM credits.closed_windows WHERE account_id LIKE 'idle\_%';
SELECT account_id, kind, amount FROM credits.ledger
 WHERE account_id IN ('idle_1', 'idle_2') AND kind IN ('X', 'E', 'F') ORDER BY account_id, entry_id;
SELECT account_id, count(*) AS written_later,
       bool_and(entry_id > CASE account_id WHEN 'idle_1' THEN :g1 ELSE :g2 END) AS after_the_coordinators
  FROM credits.ledger WHERE account_id IN ('idle_1', 'idle_2') AND kind IN ('X', 'E', 'F')
 GROUP BY account_id ORDER BY account_id;
SELECT reserved, granted_remaining FROM credits.balance('idle_1');
SELECT n.groupid > 0 AS worker, r.result::int > 0 AS ran_a_run
  FROM run_command_on_all_nodes($$SELECT count(*) FROM credits.maintenance_runs WHERE phase = 'done'$$) r
  JOIN pg_dist_node n USING (nodeid)
 WHERE n.groupid > 0 ORDER BY n.groupid;
SELECT * FROM credits.verify();

ALTER DATABASE credits_citus RESET credits.clock_override;
