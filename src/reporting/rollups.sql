-- Usage rollups: the ledger summed per account, reporting month, kind and
-- feature (credits.usage_rollup), so that reports read a few rows per account
-- and month. The views add the entries after rolled_through from the ledger
-- itself, so a report is exact whatever the rollups' lag.
--
-- The one hard part: entry ids are taken before their transaction commits,
-- so a higher id can be visible while a lower one is still in flight.
-- Rolling up to "the highest visible id" could skip the lower one forever.
-- So each refresh picks a candidate (the highest visible id) and stamps it;
-- only once every transaction that was open at the stamp has ended, which
-- includes every one that took an id at or below the candidate, are the
-- entries up to the candidate final and rolled up.

-- The month an entry is reported in: its UTC month, except a month-end
-- forfeit (stamped at the next month's first instant), which belongs to the
-- month it ends, and the forfeit of a hold that month kept aside (SPEC §4.3).
CREATE FUNCTION credits_internal._report_month(kind "char", at timestamptz, metadata jsonb) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN kind = 'F' AND metadata ->> 'reason' IN ('month_end', 'hold')
            THEN make_date(substr(metadata ->> 'month', 1, 4)::integer,
                           substr(metadata ->> 'month', 6, 2)::integer, 1)
            ELSE credits_internal._utc_month(at) END;

-- The ledger's totals per account, reporting month, kind and feature for
-- the entries after `p_after` up to `p_upto`: what usage_rollup adds up
-- (_refresh_rollups) and what verify() checks it against.
CREATE FUNCTION credits_internal._ledger_totals(p_after bigint, p_upto bigint)
RETURNS TABLE (account_id text, month date, kind "char", feature_id smallint,
               amount numeric, from_grants numeric, entries bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- (PL/pgSQL: Citus plans no SQL function with parameters over its tables)
    RETURN QUERY
    SELECT l.account_id, credits_internal._report_month(l.kind, l.at, l.metadata), l.kind::"char", l.feature_id,
           sum(l.amount), coalesce(sum(l.from_grants), 0), count(*)
      FROM credits.ledger l
     WHERE l.entry_id > p_after AND l.entry_id <= p_upto
     GROUP BY 1, 2, 3, 4;
END
$$;

-- Whether a transaction that began before `since` may still add ledger
-- entries. An entry's id is taken by the statement that inserts it, which
-- also gives its transaction an xid: a transaction idle without an xid has
-- no entry in flight (a psql session left open after a SELECT does not hold
-- the rollups back). (pg_stat_activity is cached per transaction, hence the
-- clear.) Without track_activities there is no telling: assume one is.
CREATE FUNCTION credits_internal._older_transactions_open(since timestamptz) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT current_setting('track_activities')::boolean THEN
        RETURN true;
    END IF;
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    RETURN EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                    WHERE a.datname = current_database() AND a.pid <> pg_catalog.pg_backend_pid()
                      AND a.backend_type <> 'autovacuum worker'  -- never writes the ledger
                      AND a.xact_start < since
                      -- (on Citus an idle transaction may hold ids without an xid here:
                      -- a coordinator's, whose rows went to a worker)
                      AND (a.backend_xid IS NOT NULL OR a.state NOT LIKE 'idle in transaction%'
                           OR credits_internal._distributed()))
           -- a prepared transaction may hold ids of any age
           OR EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_xacts p WHERE p.database = current_database());
END
$$;

-- Whether every id a sequence gave out before `p_since` is final, waiting
-- up to `p_wait` for the transactions that could still hold one to end: the
-- watermark of the usage rollups and of the event feed (read_events).
CREATE FUNCTION credits_internal._settled(p_since timestamptz, p_wait interval) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_until timestamptz := clock_timestamp() + p_wait;
BEGIN
    LOOP
        IF NOT credits_internal._older_transactions_open(p_since) THEN
            RETURN true;
        END IF;
        IF clock_timestamp() >= v_until THEN
            RETURN false;
        END IF;
        PERFORM pg_catalog.pg_sleep(0.002);
    END LOOP;
END
$$;

-- _settled for a watermark's candidate: picked on a single server at p_at;
-- on Citus at p_at on the coordinator and at p_at_nodes on each worker (by
-- its clock). The coordinator is asked first: a transaction that ended
-- there may still be committing on a worker, where it is then prepared,
-- which the worker's check sees.
CREATE FUNCTION credits_internal._candidate_settled(p_at timestamptz, p_at_nodes jsonb, p_wait interval)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT credits_internal._settled(p_at, p_wait) THEN
        RETURN false;
    END IF;
    RETURN p_at_nodes IS NULL OR credits_internal._workers_settled(p_at_nodes, p_wait);
END
$$;

-- One refresh, in the caller's transaction (READ COMMITTED: the rollup
-- statement must see what committed after the check before it). Rolls up to
-- the stored candidate once it is final, then picks a new candidate and, if
-- the transactions older than it end within p_wait (typically milliseconds),
-- rolls up to it at once. At most p_max entry ids per call. Returns the
-- entry ids rolled up (0: nothing was final).
CREATE FUNCTION credits_internal._refresh_rollups(p_max bigint, p_wait interval DEFAULT '0') RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    st       credits.rollup_state;
    v_upto   bigint;
    v_n      bigint := 0;
    v_picked boolean := false;
BEGIN
    IF p_max IS NULL OR p_max < 1 THEN
        RAISE EXCEPTION 'invalid rollup batch size: %', coalesce(p_max::text, 'NULL') USING ERRCODE = 'UC009';
    END IF;
    IF p_wait IS NULL OR p_wait < interval '0' THEN
        RAISE EXCEPTION 'invalid wait: %', coalesce(p_wait::text, 'NULL') USING ERRCODE = 'UC009';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'rollups are refreshed only at READ COMMITTED, not %',
                        upper(current_setting('transaction_isolation'))
            USING ERRCODE = '25000',
                  HINT = 'A snapshot older than the refresh could miss entries committed meanwhile.';
    END IF;
    -- one refresh at a time
    SELECT * INTO st FROM credits.rollup_state FOR UPDATE;

    LOOP
        IF st.candidate > st.rolled_through THEN
            EXIT WHEN NOT credits_internal._settled(st.candidate_at,
                                                    CASE WHEN v_picked THEN p_wait ELSE interval '0' END);
            v_upto := least(st.candidate, st.rolled_through + p_max - v_n);
            INSERT INTO credits.usage_rollup AS r (account_id, month, kind, feature_id, amount, from_grants, entries)
            SELECT * FROM credits_internal._ledger_totals(st.rolled_through, v_upto)
            ON CONFLICT (account_id, month, kind, feature_id) DO UPDATE
               SET amount = r.amount + excluded.amount,
                   from_grants = r.from_grants + excluded.from_grants,
                   entries = r.entries + excluded.entries;
            v_n := v_n + v_upto - st.rolled_through;
            st.rolled_through := v_upto;
            st.refreshed_at := clock_timestamp();
            EXIT WHEN st.rolled_through < st.candidate;  -- p_max reached
        END IF;
        -- Everything up to the candidate is in: the highest visible entry is the next one.
        st.candidate := coalesce((SELECT max(l.entry_id) FROM credits.ledger l), 0);
        st.candidate_at := clock_timestamp();
        EXIT WHEN v_picked OR p_wait = interval '0' OR v_n >= p_max;
        v_picked := true;
    END LOOP;

    UPDATE credits.rollup_state
       SET rolled_through = st.rolled_through, candidate = st.candidate, candidate_at = st.candidate_at,
           refreshed_at = st.refreshed_at;
    RETURN v_n;
END
$$;

-- The watermark, for the views: a stable function, so the planner reads its
-- value when it estimates how many ledger entries a report must add.
CREATE FUNCTION credits_internal._rolled_through() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
RETURN (SELECT s.rolled_through FROM credits.rollup_state s);

-- The worker's rollup step: like _refresh_rollups, but an error is recorded
-- in rollup_state (and the server log) instead of ending the worker.
-- (pinned search_path: see _worker_step)
CREATE FUNCTION credits_internal._worker_rollups(p_max bigint, p_wait interval) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF credits_internal._distributed() THEN
        RETURN 0;  -- (not on Citus yet: docs/citus.md)
    END IF;
    -- (and the event feed's watermark, which read_events moves too: so it
    -- moves on a primary nobody reads, for readers on a standby)
    PERFORM credits_internal._events_safe_through(interval '0');
    RETURN credits_internal._refresh_rollups(p_max, p_wait);
EXCEPTION WHEN OTHERS THEN
    IF credits_internal._distributed() THEN
        RETURN 0;  -- (distributed meanwhile: not an error)
    END IF;
    UPDATE credits.rollup_state
       SET last_error = format('%s (SQLSTATE %s)', SQLERRM, SQLSTATE), last_error_at = clock_timestamp();
    RAISE WARNING 'credits rollups: % (SQLSTATE %)', SQLERRM, SQLSTATE;
    RETURN 0;
END
$$;

-- refresh_rollups: bring the rollups up to every entry committed before the
-- call, committing after each batch, with a NOTICE on progress. The worker
-- does this every credits.rollup_interval; call it by hand after a restore
-- or a bulk load. It waits (up to `wait`) for transactions that were open
-- when it started, since their entries may still be coming.
CREATE PROCEDURE refresh_rollups(batch bigint DEFAULT 1000000, wait interval DEFAULT '1 minute')
-- (No SET search_path: a procedure with one cannot COMMIT. Every name is qualified.)
LANGUAGE plpgsql AS $$
DECLARE
    v_target  bigint := coalesce((SELECT max(l.entry_id) FROM credits.ledger l), 0);
    v_start   timestamptz := pg_catalog.clock_timestamp();
    v_done    bigint;
    v_batches integer := 0;
    v_n       bigint;
BEGIN
    PERFORM credits_internal._refuse_distributed('refresh_rollups');
    IF refresh_rollups.wait IS NULL OR refresh_rollups.wait < interval '0' THEN
        RAISE EXCEPTION 'invalid wait: %', coalesce(refresh_rollups.wait::text, 'NULL') USING ERRCODE = 'UC009';
    END IF;
    LOOP
        v_n := credits_internal._refresh_rollups(refresh_rollups.batch, interval '10 ms');
        SELECT s.rolled_through INTO v_done FROM credits.rollup_state s;
        COMMIT;
        v_batches := v_batches + CASE WHEN v_n > 0 THEN 1 ELSE 0 END;
        EXIT WHEN v_done >= v_target;
        IF v_n > 0 THEN
            IF v_batches % 5 = 0 THEN
                RAISE NOTICE 'credits rollups: through entry % of %', v_done, v_target;
            END IF;
        ELSIF pg_catalog.clock_timestamp() - v_start > refresh_rollups.wait THEN
            RAISE WARNING 'credits rollups: still waiting for transactions open since before %; the views stay exact meanwhile',
                          credits_internal._utc_text(v_start)
                USING HINT = 'See pg_stat_activity for old transactions, pg_prepared_xacts for prepared ones.';
            RETURN;
        ELSE
            PERFORM pg_catalog.pg_sleep(0.05);
        END IF;
    END LOOP;
    RAISE NOTICE 'credits rollups: through entry % (% batches)', v_done, v_batches;
END
$$;
