-- Scale-out on Citus (docs/citus.md): credits.distribute() and what the
-- distributed install needs besides it.

-- A new id on a Citus cluster (the default distribute() gives ledger and
-- events ids): the sequence's next value with the node's group in the low
-- 16 bits, so that nodes never make the same id (each node has its own
-- sequence; Citus gives extension sequences no ranges of their own). The
-- code below SQL makes ledger ids the same way (Schema::next_entry_id).
CREATE FUNCTION credits_internal._next_id(p_sequence regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (nextval(p_sequence) << 16) | (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g);
END
$$;

-- Is this install distributed (credits.accounts a Citus table)? From the
-- session's cache of the schema (src/distributed/shards.rs): cheap enough
-- for every write to ask.
CREATE FUNCTION credits_internal._distributed() RETURNS boolean
LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'credits_distributed';

-- Is the install distributed and the account's shards on another node?
CREATE FUNCTION credits_internal._elsewhere(p_account text) RETURNS boolean
LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'credits_elsewhere';

-- A debit on the account's node, called there through a query on the
-- account's row (credits_internal._debit, away from the node): the query
-- runs on the node in the caller's distributed transaction, where this
-- makes the debit as a call there would (fast path first). Citus refuses
-- queries on distributed tables from inside a query on a shard unless told
-- it may: they are the account's own, on this shard, which the query holds.
CREATE FUNCTION credits_internal._debit_there(p_account text, p_feature text, p_quantity numeric, p_key text,
                                              p_metadata jsonb, p_raise boolean)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET citus.allow_nested_distributed_execution = on AS $$
BEGIN
    IF p_raise THEN
        RETURN credits.debit(p_account, p_feature, p_quantity, p_key, p_metadata);
    END IF;
    RETURN credits.try_debit(p_account, p_feature, p_quantity, p_key, p_metadata);
END
$$;

-- Moves this node's sequence so that every value it gives from now on is
-- above p_past; never back, which would give values again. (setval is not
-- atomic with the read that decides it: values other sessions take between
-- the two would be given again if setval moved the sequence to below them.
-- So the sequence moves by nextval, which is atomic, across a gap of up to
-- 100,000; only a wider gap is jumped with setval, which to go back would
-- need 100,000 values taken on this node between two statements of this
-- function. Jumps on a node are serialized.)
CREATE FUNCTION credits_internal._advance_sequence(p_sequence regclass, p_past bigint) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_at   bigint;
    v_step constant bigint := 100000;
BEGIN
    IF coalesce(pg_sequence_last_value(p_sequence), 0) >= p_past THEN
        RETURN;  -- (past it already: a sequence only moves forward)
    END IF;
    v_at := nextval(p_sequence);
    IF v_at < p_past - v_step THEN
        PERFORM pg_advisory_xact_lock(p_sequence::oid::bigint);
        v_at := nextval(p_sequence);
        IF v_at < p_past - v_step THEN
            PERFORM setval(p_sequence, p_past);
            RETURN;
        END IF;
    END IF;
    IF v_at < p_past THEN
        PERFORM count(nextval(p_sequence)) FROM generate_series(1, p_past - v_at);
    END IF;
END
$$;

-- check() on the account's node, called there through a query on the
-- account's row (credits.check away from the node), as _debit_there.
CREATE FUNCTION credits_internal._check_there(p_account text, p_feature text, p_quantity numeric)
RETURNS TABLE (allowed boolean, cost numeric, available numeric, limiting_window text, resets_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET citus.allow_nested_distributed_execution = on AS $$
BEGIN
    RETURN QUERY SELECT c.* FROM credits."check"(p_account, p_feature, p_quantity) c;
END
$$;

-- On Citus, before a write makes ids for an account: each node makes ids
-- from its own sequence (_next_id), so this node's may be behind the
-- account's last entry or event, made on another node (the coordinator, a
-- node the account's shard moved from). The sequence is moved past them,
-- so that an account's ids increase with its entries.
CREATE FUNCTION credits_internal._follow_history(p_account text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_entry bigint := (SELECT max(l.entry_id) FROM credits.ledger l WHERE l.account_id = p_account) >> 16;
    v_event bigint := (SELECT max(e.event_id) FROM credits.events e WHERE e.account_id = p_account) >> 16;
BEGIN
    IF to_regclass('credits.ledger_entry_idx') IS NULL THEN
        -- (a worker added after distribute(): its ids would have no node bits)
        RAISE EXCEPTION 'credits on this node (Citus group %) is not prepared for the distributed install',
                        (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g)
            USING ERRCODE = 'UC014', HINT = 'Run SELECT * FROM credits.distribute() on the coordinator.';
    END IF;
    IF v_entry >= coalesce(pg_sequence_last_value('credits.ledger_entry_id_seq'), 0) THEN
        PERFORM credits_internal._advance_sequence('credits.ledger_entry_id_seq', v_entry);
    END IF;
    IF v_event >= coalesce(pg_sequence_last_value('credits.events_event_id_seq'), 0) THEN
        PERFORM credits_internal._advance_sequence('credits.events_event_id_seq', v_event);
    END IF;
END
$$;

-- A candidate for a watermark over ids of `p_sequence` on Citus (the event
-- feed's: _events_safe_through): the highest value any node's sequence has
-- given, once every node's gives only higher ones. Then every id at or
-- below the candidate was taken already, by a transaction that began
-- before the node's instant after the move: `at` on the coordinator,
-- `at_nodes` on each worker (by its clock). `settled` when, within p_wait
-- on each node, none of those is open or prepared any more (the
-- coordinator first: _candidate_settled). No candidate above `p_above`
-- (nothing new): p_above, not settled, and no move.
CREATE FUNCTION credits_internal._cluster_candidate(p_sequence regclass, p_above bigint, p_wait interval,
                                                    OUT candidate bigint, OUT at timestamptz, OUT at_nodes jsonb,
                                                    OUT settled boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_max  bigint := credits_internal._cluster_sequence_max(p_sequence);
    v_here jsonb;
BEGIN
    candidate := (v_max << 16) | 65535;  -- (the node group in the low bits: any)
    settled := false;
    IF candidate <= p_above THEN
        candidate := p_above;
        RETURN;
    END IF;
    v_here := credits_internal._sequence_past(p_sequence, v_max, p_wait);
    at := (v_here->>'at')::timestamptz;
    settled := (v_here->>'settled')::boolean;
    -- (each worker moves its sequence and waits in one question; no wait
    -- where it would not decide)
    SELECT coalesce(jsonb_object_agg(w.node, w.result::jsonb->>'at'), '{}'),
           settled AND coalesce(bool_and((w.result::jsonb->>'settled')::boolean), true)
      INTO at_nodes, settled
      FROM credits_internal._on_workers(format('moving %s', p_sequence),
               format('SELECT credits_internal._sequence_past(%L, %s, %L)', p_sequence, v_max,
                      CASE WHEN settled THEN p_wait ELSE interval '0' END)) w;
END
$$;

-- The highest value any node's `p_sequence` has given (on the coordinator).
CREATE FUNCTION credits_internal._cluster_sequence_max(p_sequence regclass) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT greatest(coalesce(pg_sequence_last_value(p_sequence), 0), max(w.result::bigint))
              FROM credits_internal._on_workers(format('reading %s', p_sequence),
                       format('SELECT coalesce(pg_sequence_last_value(%L), 0)', p_sequence)) w);
END
$$;

-- `p_command` run on each active worker (Citus opens a connection to each,
-- outside this transaction), or with `p_only` ('host:port') on that one:
-- its result per worker; UC014 naming the worker where it failed (`p_what`
-- failed).
CREATE FUNCTION credits_internal._on_workers(p_what text, p_command text, p_only text DEFAULT NULL)
RETURNS TABLE (node text, result text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_names text[];
    v_ports integer[];
    r record;
BEGIN
    SELECT array_agg(w.node_name), array_agg(w.node_port) INTO v_names, v_ports
      FROM master_get_active_worker_nodes() w
     WHERE p_only IS NULL OR w.node_name || ':' || w.node_port = p_only;
    IF v_names IS NULL THEN
        RETURN;
    END IF;
    FOR r IN SELECT * FROM master_run_on_worker(v_names, v_ports, array_fill(p_command, ARRAY[cardinality(v_names)]),
                                                true) LOOP
        IF NOT r.success THEN
            RAISE EXCEPTION '% failed on node %:%: %', p_what, r.node_name, r.node_port, r.result
                USING ERRCODE = 'UC014';
        END IF;
        node := r.node_name || ':' || r.node_port;
        result := r.result;
        RETURN NEXT;
    END LOOP;
END
$$;

-- This node's part of _cluster_candidate: its sequence moved past p_past,
-- its clock then (`at`), and whether every transaction that began before
-- that has ended within p_wait (`settled`).
CREATE FUNCTION credits_internal._sequence_past(p_sequence regclass, p_past bigint, p_wait interval) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_at timestamptz;
BEGIN
    PERFORM credits_internal._advance_sequence(p_sequence, p_past);
    v_at := clock_timestamp();
    RETURN jsonb_build_object('at', v_at, 'settled', credits_internal._settled(v_at, p_wait));
END
$$;

-- Whether on each worker of `p_at_nodes` ('host:port' to the worker's
-- instant: _cluster_candidate) no transaction that began before its
-- instant is open or prepared, waiting up to p_wait on each (a worker that
-- has left the cluster has nothing open).
CREATE FUNCTION credits_internal._workers_settled(p_at_nodes jsonb, p_wait interval) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_names text[];
    v_ports integer[];
    v_commands text[];
BEGIN
    SELECT array_agg(n.nodename), array_agg(n.nodeport),
           array_agg(format('SELECT credits_internal._settled(%L, %L)', t.value, p_wait))
      INTO v_names, v_ports, v_commands
      FROM jsonb_each_text(p_at_nodes) t
      JOIN pg_catalog.pg_dist_node n ON n.nodename || ':' || n.nodeport = t.key
     WHERE n.isactive AND n.groupid > 0;
    RETURN v_names IS NULL
        OR (SELECT bool_and(r.success AND r.result = 't')
              FROM master_run_on_worker(v_names, v_ports, v_commands, true) r);
END
$$;

-- UC014 for what does not run on a distributed install yet (docs/citus.md).
CREATE FUNCTION credits_internal._refuse_distributed(p_what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF credits_internal._distributed() THEN
        RAISE EXCEPTION 'credits: % does not run on a distributed install yet', p_what
            USING ERRCODE = 'UC014',
                  HINT = 'See docs/citus.md, "Not yet on a distributed install".';
    END IF;
END
$$;

-- The tables of per-account rows, distributed by account_id and colocated
-- (the first is the one the others are colocated with).
CREATE FUNCTION credits_internal._distributed_tables() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['accounts', 'ledger', 'grants', 'grant_draws', 'month_allowances', 'holds', 'events',
                 'closed_windows', 'idempotency', 'stripes', 'usage_rollup']
$$;

-- The public functions that act on one account, delegated by Citus to the
-- node holding it (their first argument is the account). Not the SQL
-- wrappers the planner inlines (most double precision forms): they become
-- calls of the numeric forms, which are delegated.
CREATE FUNCTION credits_internal._delegated_functions() RETURNS regprocedure[]
LANGUAGE sql STABLE AS $$
    SELECT array_agg(p.oid::regprocedure ORDER BY p.oid::regprocedure::text)
      FROM pg_catalog.pg_proc p
     WHERE p.pronamespace = 'credits'::regnamespace
       AND p.proargnames[1] = 'account_id'
       AND p.proargtypes[0] = 'text'::regtype
       AND NOT (p.prolang = (SELECT l.oid FROM pg_catalog.pg_language l WHERE l.lanname = 'sql')
                AND NOT p.prosecdef AND p.proconfig IS NULL)
$$;

-- Run on every node before the tables are distributed, and on a worker
-- added later (distribute() again): what Citus needs of them. Unique keys
-- hold the distribution column; foreign keys and the catalogs'
-- seed-replacing triggers (which write the table they fire on) go; ids get
-- node bits, starting above `p_first_id`; a worker's shells are emptied
-- (CREATE EXTENSION put the seed catalogs in them: Citus reads the shards,
-- never the shells; with DDL propagation off, TRUNCATE of a distributed
-- table's shell stays on this node). Idempotent.
CREATE FUNCTION credits_internal._prepare_distribution(p_first_id bigint, p_rolled_through bigint, p_worker boolean)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    SET LOCAL citus.enable_ddl_propagation = off;
    -- (all at once, before any change: the maintenance worker and calls
    -- that are running finish first, and none starts. The worker's steps
    -- take these tables in other orders: a deadlock with one costs that
    -- try, and the locks are taken again.)
    FOR v_try IN 1 .. 10 LOOP
        BEGIN
            LOCK TABLE credits.maintenance_state, credits.plans, credits.features, credits.accounts,
                       credits.ledger, credits.grants, credits.grant_draws, credits.month_allowances,
                       credits.holds, credits.events, credits.closed_windows, credits.idempotency,
                       credits.stripes, credits.usage_rollup
                IN ACCESS EXCLUSIVE MODE;
            EXIT;
        EXCEPTION WHEN deadlock_detected THEN
            IF v_try = 10 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
    ALTER TABLE credits.accounts DROP CONSTRAINT IF EXISTS accounts_plan_fkey;
    ALTER TABLE credits.stripes DROP CONSTRAINT IF EXISTS stripes_account_id_fkey;
    DROP TRIGGER IF EXISTS plans_replace_seed ON credits.plans;
    DROP TRIGGER IF EXISTS features_replace_seed ON credits.features;
    IF to_regclass('credits.ledger_account_idx') IS NOT NULL THEN
        ALTER TABLE credits.ledger DROP CONSTRAINT ledger_pkey;
        ALTER TABLE credits.ledger ADD CONSTRAINT ledger_pkey PRIMARY KEY (account_id, entry_id);
        DROP INDEX credits.ledger_account_idx;
        -- (refund, void_grant by entry id: found on every shard)
        CREATE INDEX ledger_entry_idx ON credits.ledger (entry_id);
        -- (read_events: each shard's events in id order)
        CREATE INDEX events_event_idx ON credits.events (event_id);
        DROP INDEX credits.holds_hold_id_idx;
        CREATE INDEX holds_hold_idx ON credits.holds (hold_id);
        ALTER TABLE credits.events DROP CONSTRAINT events_pkey;
        ALTER TABLE credits.events ADD CONSTRAINT events_pkey PRIMARY KEY (account_id, event_id);
        DROP INDEX credits.events_account_idx;
        -- (a shard move copies rows by logical replication: every table
        -- needs a replica identity, and this one has no key without NULLs)
        ALTER TABLE credits.usage_rollup REPLICA IDENTITY FULL;
    END IF;
    -- (no whole row of a distributed table in a query: _display_of)
    CREATE OR REPLACE VIEW credits.usage_display AS
    SELECT a.account_id, d.*
      FROM credits.accounts a
     CROSS JOIN LATERAL credits_internal._display_of(a.account_id) d;
    ALTER TABLE credits.ledger ALTER COLUMN entry_id
        SET DEFAULT credits_internal._next_id('credits.ledger_entry_id_seq');
    ALTER TABLE credits.events ALTER COLUMN event_id
        SET DEFAULT credits_internal._next_id('credits.events_event_id_seq');
    IF (SELECT s.last_value FROM credits.ledger_entry_id_seq s) < p_first_id THEN
        PERFORM setval('credits.ledger_entry_id_seq', p_first_id);
    END IF;
    IF (SELECT s.last_value FROM credits.events_event_id_seq s) < p_first_id THEN
        PERFORM setval('credits.events_event_id_seq', p_first_id);
    END IF;
    IF p_worker THEN
        ALTER TABLE credits.ledger DISABLE TRIGGER ledger_no_truncate;
        TRUNCATE credits.plans, credits.features, credits.accounts, credits.ledger, credits.grants,
                 credits.grant_draws, credits.month_allowances, credits.holds, credits.events,
                 credits.closed_windows, credits.idempotency, credits.stripes, credits.usage_rollup;
        ALTER TABLE credits.ledger ENABLE ALWAYS TRIGGER ledger_no_truncate;
        -- (the usage rollups go to the shards with the ledger: up to here)
        UPDATE credits.rollup_state SET rolled_through = p_rolled_through;
    END IF;
END
$$;

-- One account's usage display (credits_internal._display) by its id, for
-- the usage_display view of a distributed install (distribute() points the
-- view here on every node): Citus runs the view on each shard, a call per
-- account there, and refuses the call's own queries unless told it may
-- (they read that account's rows, on that shard). A single server keeps the
-- view on _display, which reads the row it is given (faster).
CREATE FUNCTION credits_internal._display_of(p_account text)
RETURNS TABLE (plan text, daily_limit numeric, daily_used numeric, daily_remaining numeric,
               monthly_limit numeric, monthly_used numeric, monthly_remaining numeric,
               granted_remaining numeric, reserved numeric, available numeric,
               next_daily_reset timestamptz, next_monthly_reset timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET citus.allow_nested_distributed_execution = on AS $$
BEGIN
    RETURN QUERY SELECT d.* FROM credits_internal._display(credits_internal._account(p_account)) d;
END
$$;

-- UC014 unless this is a Citus coordinator every node of which has credits
-- at this version.
CREATE FUNCTION credits_internal._check_citus() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_version text := (SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname = 'credits');
    v_node text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname = 'citus') THEN
        RAISE EXCEPTION 'credits.distribute() needs Citus: the citus extension is not installed in database %',
                        current_database()
            USING ERRCODE = 'UC014',
                  HINT = 'On a single server there is nothing to distribute. For Citus, see docs/citus.md.';
    END IF;
    IF NOT citus_is_coordinator() THEN
        RAISE EXCEPTION 'credits.distribute() runs on the Citus coordinator, and this node is not it'
            USING ERRCODE = 'UC014', HINT = 'Connect to the coordinator and call it there.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node n WHERE n.isactive AND n.noderole = 'primary'
                                                              AND n.shouldhaveshards) THEN
        RAISE EXCEPTION 'credits.distribute() found no Citus worker node to place shards on'
            USING ERRCODE = 'UC014', HINT = 'Add workers with citus_add_node() first.';
    END IF;
    SELECT format('%s:%s (%s)', n.nodename, n.nodeport, coalesce(r.result, 'no answer'))
      INTO v_node
      FROM run_command_on_all_nodes(
               $c$SELECT coalesce((SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'credits'), 'not installed')
                         || CASE WHEN current_setting('shared_preload_libraries') ~ '\mcredits\M' THEN '' ELSE ', not preloaded' END$c$) r
      JOIN pg_catalog.pg_dist_node n USING (nodeid)
     WHERE NOT r.success OR r.result IS DISTINCT FROM v_version
     LIMIT 1;
    IF v_node IS NOT NULL THEN
        RAISE EXCEPTION 'credits.distribute() needs credits % on every node, preloaded: node % differs', v_version, v_node
            USING ERRCODE = 'UC014',
                  HINT = 'Install the same credits build on every node, preload it, and run ALTER EXTENSION credits UPDATE.';
    END IF;
END
$$;

-- A NOTICE of distribute()'s progress, shown at the caller's
-- client_min_messages (`p_level`; distribute() hides Citus's own notices).
CREATE FUNCTION credits_internal._progress(p_level text, p_message text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('client_min_messages', p_level, true);
    RAISE NOTICE 'credits.distribute(): %', p_message;
    PERFORM set_config('client_min_messages', 'warning', true);
END
$$;

-- Distributes the install over the Citus cluster (docs/citus.md): the
-- per-account tables sharded by account_id and colocated, plans and
-- features replicated to every node, and every public per-account function
-- delegated to the node holding its account. Returns a line per step it
-- took; a second call finds everything done and takes none.
CREATE FUNCTION distribute() RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_table text;
    v_first bigint;
    v_function regprocedure;
    v_tables text[] := credits_internal._distributed_tables();
    v_steps integer := 0;
    v_node record;
    v_notices text := current_setting('client_min_messages');  -- (the caller's, for the progress)
BEGIN
    PERFORM credits_internal._check_citus();
    SET LOCAL citus.enable_unsafe_triggers = on;
    SET LOCAL citus.multi_shard_modify_mode = 'sequential';
    SET LOCAL client_min_messages = warning;  -- (Citus's notices of each table copied)
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p
                    WHERE p.logicalrelid = 'credits.accounts'::regclass) THEN
        -- (ids already made stay below every new one)
        v_first := (greatest((SELECT max(l.entry_id) FROM credits.ledger l),
                             (SELECT max(e.event_id) FROM credits.events e), 0) >> 16) + 1;
        PERFORM credits_internal._prepare_distribution(v_first, 0, false);
        PERFORM FROM credits_internal._on_workers('credits.distribute()',
                         format('SELECT credits_internal._prepare_distribution(%s, %s, true)', v_first,
                                (SELECT st.rolled_through FROM credits.rollup_state st)));
        PERFORM create_reference_table('credits.plans');
        PERFORM create_reference_table('credits.features');
        RETURN NEXT 'plans and features: reference tables';
        FOR v_i IN 1 .. cardinality(v_tables) LOOP
            v_table := v_tables[v_i];
            PERFORM credits_internal._progress(v_notices, format('distributing credits.%s (table %s of %s)',
                        v_table, v_i, cardinality(v_tables)));
            PERFORM create_distributed_table('credits.' || v_table, 'account_id',
                        colocate_with => CASE WHEN v_table = v_tables[1] THEN 'none' ELSE 'credits.accounts' END);
        END LOOP;
        RETURN NEXT format('%s: distributed by account_id, %s shards each', array_to_string(v_tables, ', '),
                           (SELECT count(*) FROM pg_catalog.pg_dist_shard s
                             WHERE s.logicalrelid = 'credits.accounts'::regclass));
        -- The coordinator's own rows were copied to the shards.
        ALTER TABLE credits.ledger DISABLE TRIGGER ledger_no_truncate;
        FOREACH v_table IN ARRAY v_tables || ARRAY['plans', 'features'] LOOP
            PERFORM truncate_local_data_after_distributing_table('credits.' || v_table);
        END LOOP;
        ALTER TABLE credits.ledger ENABLE ALWAYS TRIGGER ledger_no_truncate;
        v_steps := v_steps + 1;
    ELSE
        -- A worker added since: prepared as the others were, its ids above
        -- every id any node has given.
        FOR v_node IN SELECT w.node
                        FROM credits_internal._on_workers('credits.distribute()',
                                 $c$SELECT to_regclass('credits.ledger_entry_idx') IS NOT NULL$c$) w
                       WHERE w.result = 'f' LOOP
            v_first := greatest(credits_internal._cluster_sequence_max('credits.ledger_entry_id_seq'),
                                credits_internal._cluster_sequence_max('credits.events_event_id_seq')) + 1;
            PERFORM FROM credits_internal._on_workers('credits.distribute()',
                             format('SELECT credits_internal._prepare_distribution(%s, %s, true)', v_first,
                                    (SELECT st.rolled_through FROM credits.rollup_state st)),
                             v_node.node);
            RETURN NEXT format('node %s: prepared (added after distribute())', v_node.node);
            v_steps := v_steps + 1;
        END LOOP;
    END IF;
    FOREACH v_function IN ARRAY credits_internal._delegated_functions() LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_object o
                        WHERE o.classid = 'pg_proc'::regclass AND o.objid = v_function
                          AND o.distribution_argument_index = 0) THEN
            PERFORM create_distributed_function(v_function, 'account_id', colocate_with => 'credits.accounts');
            RETURN NEXT format('%s: delegated to the node holding the account', v_function);
            v_steps := v_steps + 1;
        END IF;
    END LOOP;
    IF v_steps = 0 THEN
        RESET client_min_messages;
        RAISE NOTICE 'credits is already distributed: nothing to do';
    END IF;
END
$$;

-- verify()'s problems of the accounts on Citus: every node checks the
-- shards it holds (_verify_local), in its own transaction.
CREATE FUNCTION credits_internal._verify_nodes() RETURNS TABLE (account_id text, problem text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM run_command_on_all_nodes(
                 $c$SELECT coalesce(json_agg(v), '[]') FROM credits_internal._verify_local() v$c$) LOOP
        IF NOT r.success THEN
            RAISE EXCEPTION 'credits.verify() failed on Citus node %: %', r.nodeid, r.result USING ERRCODE = 'UC014';
        END IF;
        RETURN QUERY SELECT x.account_id, x.problem FROM json_to_recordset(r.result::json) x(account_id text, problem text);
    END LOOP;
END
$$;

-- `p_query` (naming the extension's tables) once for each group of
-- colocated shards this node holds, the tables' names replaced by the
-- group's shards': a plain query of this node's rows there (every
-- account's rows are in one group; plans and features have one shard).
-- On a single server, `p_query` itself.
CREATE FUNCTION credits_internal._on_local_shards(p_query text) RETURNS SETOF text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sql   text;
    v_group record;
    v_shard record;
BEGIN
    IF NOT credits_internal._distributed() THEN
        RETURN NEXT p_query;
        RETURN;
    END IF;
    FOR v_group IN SELECT s.shardminvalue
                     FROM pg_catalog.pg_dist_shard s
                     JOIN pg_catalog.pg_dist_placement p USING (shardid)
                    WHERE s.logicalrelid = 'credits.accounts'::regclass
                      AND p.groupid = (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g) LOOP
        v_sql := p_query;
        FOR v_shard IN SELECT c.relname, s.shardid
                         FROM pg_catalog.pg_dist_shard s
                         JOIN pg_catalog.pg_class c ON c.oid = s.logicalrelid
                        WHERE c.relnamespace = 'credits'::regnamespace
                          AND (s.shardminvalue = v_group.shardminvalue OR s.shardminvalue IS NULL) LOOP
            v_sql := regexp_replace(v_sql, '\mcredits\.' || v_shard.relname || '\M',
                                    'credits.' || v_shard.relname || '_' || v_shard.shardid, 'g');
        END LOOP;
        RETURN NEXT v_sql;
    END LOOP;
END
$$;

-- The problems of the accounts on this node's shards: the query of
-- credits_internal._verify_problems on each of its shard groups.
CREATE FUNCTION credits_internal._verify_local() RETURNS TABLE (account_id text, problem text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sql text;
BEGIN
    FOR v_sql IN SELECT credits_internal._on_local_shards(pg_get_viewdef('credits_internal._verify_problems'::regclass))
    LOOP
        RETURN QUERY EXECUTE v_sql;
    END LOOP;
END
$$;
