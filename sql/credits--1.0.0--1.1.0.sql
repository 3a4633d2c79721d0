-- credits 1.0.0 -> 1.1.0
--
-- Every schema change made after 1.0.0 goes here as well as into the code
-- that creates a fresh install, so that an upgraded database and a fresh
-- one are identical (tests/client/tests/upgrade.rs compares them).

-------------------------------------------------------------------------------
-- A reliable event feed (issue 18): read_events, commit-ordered by the
-- usage rollups' watermark technique (src/metering/events.sql,
-- src/reporting/rollups.sql, src/schema/schema.sql).
-------------------------------------------------------------------------------

CREATE TABLE credits_internal.event_watermark (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    safe_through bigint NOT NULL DEFAULT 0,
    candidate    bigint NOT NULL DEFAULT 0,  -- the next safe_through, once no older transaction is open ...
    candidate_at timestamptz                 -- ... than this instant
);
INSERT INTO credits_internal.event_watermark DEFAULT VALUES;

-- Whether every id a sequence gave out before `p_since` is final, waiting
-- up to `p_wait` for the transactions that could still hold one to end: the
-- watermark of the usage rollups and of the event feed (read_events).
CREATE OR REPLACE FUNCTION credits_internal._settled(p_since timestamptz, p_wait interval) RETURNS boolean
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

-- One refresh, in the caller's transaction (READ COMMITTED: the rollup
-- statement must see what committed after the check before it). Rolls up to
-- the stored candidate once it is final, then picks a new candidate and, if
-- the transactions older than it end within p_wait (typically milliseconds),
-- rolls up to it at once. At most p_max entry ids per call. Returns the
-- entry ids rolled up (0: nothing was final).
CREATE OR REPLACE FUNCTION credits_internal._refresh_rollups(p_max bigint, p_wait interval DEFAULT '0') RETURNS bigint
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

-- Emit one event (once: the events' unique key). `p_cause` is the ledger
-- entry that ran an exhausted window out (0 for the other kinds). A reset
-- is sent only when the new window has credits (SPEC §4.7). The NOTIFY has
-- the shape of a read_events row, or with credits.notify_payload = minimal
-- only its cursor, id and kind: LISTEN has no access control, so a
-- listener should read an event back (read_events) rather than trust a
-- payload anyone could have sent.
CREATE OR REPLACE FUNCTION credits_internal._emit(a credits.accounts, p_kind text, p_window text, p_threshold numeric,
                      p_now timestamptz, s credits_internal._account_state, p_cause bigint DEFAULT 0)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_key       text := credits_internal._window_key(a, p_window, p_now);
    v_available numeric := least(coalesce(s.daily_available, s.allowance_available + s.grants_available),
                                 s.allowance_available + s.grants_available);
    v_id        bigint;
    v_event     jsonb;
BEGIN
    IF p_kind = 'reset' AND v_available = 0 THEN
        RETURN;
    END IF;
    v_event := jsonb_strip_nulls(jsonb_build_object(
        'account_id', a.account_id, 'kind', p_kind, 'window', p_window, 'window_key', v_key,
        'threshold', p_threshold, 'at', credits_internal._iso(p_now),
        'resets_at', credits_internal._iso(credits_internal._resets_at(p_window, p_now)), 'plan', s.plan,
        'monthly_limit', s.monthly_limit, 'monthly_used', s.monthly_used,
        'daily_limit', s.daily_limit, 'daily_used', CASE WHEN s.daily_limit IS NOT NULL THEN s.daily_used END,
        'available', v_available));
    INSERT INTO credits.events (account_id, at, kind, window_kind, window_key, threshold, payload, cause_entry)
    VALUES (a.account_id, p_now, p_kind, p_window, v_key, p_threshold, v_event, p_cause)
    ON CONFLICT DO NOTHING
    RETURNING event_id INTO v_id;
    IF v_id IS NOT NULL THEN
        PERFORM pg_notify('credits', CASE coalesce(current_setting('credits.notify_payload', true), 'full')
            WHEN 'minimal' THEN jsonb_build_object('cursor', v_id, 'event_id', v_id, 'kind', p_kind)
            ELSE jsonb_build_object('cursor', v_id, 'event_id', v_id, 'kind', p_kind, 'account_id', a.account_id,
                                    'window', p_window, 'at', credits_internal._iso(p_now), 'payload', v_event)
        END::text);
    END IF;
END
$$;

-- The event feed's watermark: every event id at or below it is final
-- (committed or rolled back), as events take their ids when inserted, in
-- transactions that may commit in any order. The stored candidate becomes
-- safe once no transaction older than it is open; then the newest visible
-- id is the next candidate, given up to p_wait (milliseconds: a writer's
-- commit) to become safe too. The technique of the usage rollups
-- (_settled, src/reporting/rollups.sql). Advanced by read_events; a
-- session that finds another advancing it, or cannot write (a standby, a
-- read-only transaction, REPEATABLE READ: its snapshot could miss events
-- committed meanwhile), uses the stored value.
CREATE OR REPLACE FUNCTION credits_internal._events_safe_through(p_wait interval) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    st credits_internal.event_watermark;
BEGIN
    IF current_setting('transaction_read_only')::boolean
       OR current_setting('transaction_isolation') <> 'read committed' THEN
        RETURN (SELECT w.safe_through FROM credits_internal.event_watermark w);
    END IF;
    SELECT * INTO st FROM credits_internal.event_watermark FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN (SELECT w.safe_through FROM credits_internal.event_watermark w);
    END IF;
    IF st.candidate > st.safe_through AND credits_internal._settled(st.candidate_at, interval '0') THEN
        st.safe_through := st.candidate;
    END IF;
    IF st.candidate <= st.safe_through THEN
        st.candidate := coalesce((SELECT max(e.event_id) FROM credits.events e), 0);
        st.candidate_at := clock_timestamp();
        IF st.candidate > st.safe_through AND credits_internal._settled(st.candidate_at, p_wait) THEN
            st.safe_through := st.candidate;
        END IF;
    END IF;
    UPDATE credits_internal.event_watermark
       SET safe_through = st.safe_through, candidate = st.candidate, candidate_at = st.candidate_at;
    RETURN st.safe_through;
END
$$;

-- read_events: the events committed after the cursor `after`, oldest first,
-- at most max_rows (1 to 1000). A consumer that calls it again with the
-- last cursor it got sees every committed event exactly once, whatever
-- order their transactions commit in (an event still in flight holds back
-- the ones after it, for as long as its transaction is open). Call it
-- outside a long transaction: it waits up to 50 ms for a commit in flight.
CREATE OR REPLACE FUNCTION read_events(after bigint DEFAULT 0, max_rows integer DEFAULT 100)
RETURNS TABLE ("cursor" bigint, event_id bigint, kind text, account_id text, "window" text, at text,
               payload jsonb)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_safe bigint;
BEGIN
    IF after IS NULL OR after < 0 THEN
        RAISE EXCEPTION 'invalid cursor: %', coalesce(after::text, 'NULL')
            USING ERRCODE = 'UC009', DETAIL = 'after is 0 or a cursor read_events returned';
    END IF;
    IF max_rows IS NULL OR max_rows < 1 OR max_rows > 1000 THEN
        RAISE EXCEPTION 'invalid max_rows: %', coalesce(max_rows::text, 'NULL')
            USING ERRCODE = 'UC009', DETAIL = 'max_rows must be between 1 and 1000';
    END IF;
    v_safe := credits_internal._events_safe_through(interval '50 milliseconds');
    RETURN QUERY
    SELECT e.event_id, e.event_id, e.kind, e.account_id, e.window_kind, credits_internal._iso(e.at), e.payload
      FROM credits.events e
     WHERE e.event_id > after AND e.event_id <= v_safe
     ORDER BY e.event_id
     LIMIT max_rows;
END
$$;

REVOKE ALL ON ALL ROUTINES IN SCHEMA credits, credits_internal FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits.read_events(bigint, integer) TO credits_app, credits_reader, credits_admin;
COMMENT ON FUNCTION credits.read_events(bigint, integer) IS
'The events committed after a cursor, oldest first: following the cursors a consumer sees every committed event exactly once, whatever order transactions commit in.';
