-- Events (rule 9): running out notifies.
--   exhausted  a committed operation left nothing available in a window that
--              had credits (each window that ran out), or a try_debit /
--              try_reserve was denied by a window with nothing left; again
--              after new credits ran out once more;
--   denied     a try_debit / try_reserve was denied by a window with credits
--              left, but too few; once per account and window;
--   threshold  monthly usage reached a percentage of the monthly limit
--              (credits.thresholds, default '80,100'); once per window and threshold;
--   low_balance  what is available fell to the account's own alert
--              (credits.set_alert); once per window (the one that limits
--              what is available) and alert level.
-- Each event is a row in credits.events and a NOTIFY on channel credits;
-- both are transactional, so a rolled-back operation emits nothing.
-- (reset events are emitted where windows are closed: maintenance.sql.)

-- credits_internal._thresholds() (thresholds.rs): the configured thresholds, in percent, ascending.

-- The window an event is about, as a stable key (see schema.sql).
CREATE FUNCTION credits_internal._window_key(a credits.accounts, p_window text, p_now timestamptz) RETURNS text
LANGUAGE sql STABLE
RETURN CASE p_window
    WHEN 'daily' THEN to_char(credits_internal._utc_day(p_now), 'YYYY-MM-DD')
    ELSE to_char(credits_internal._utc_month(p_now), 'YYYY-MM')
         || CASE WHEN a.month = credits_internal._utc_month(p_now) AND a.monthly_epoch > 0
                 THEN '#' || a.monthly_epoch ELSE '' END
END;

-- Emit one event (once: the events' unique key). `p_cause` is the ledger
-- entry that ran an exhausted window out (0 for the other kinds). A reset
-- is sent only when the new window has credits (SPEC §4.7). The NOTIFY has
-- the shape of a read_events row, or with credits.notify_payload = minimal
-- only its cursor, id and kind: LISTEN has no access control, so a
-- listener should read an event back (read_events) rather than trust a
-- payload anyone could have sent.
CREATE FUNCTION credits_internal._emit(a credits.accounts, p_kind text, p_window text, p_threshold numeric,
                      p_now timestamptz, s credits_internal._account_state, p_cause bigint DEFAULT 0)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_key       text := credits_internal._window_key(a, p_window, p_now);
    v_available numeric := credits_internal._available(s);
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

-- A window's reset event, emitted when closing it (src/maintenance/close.rs).
CREATE FUNCTION credits_internal._emit_reset(p_account text, p_window text, p_at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    a credits.accounts;
BEGIN
    SELECT * INTO a FROM credits.accounts ac WHERE ac.account_id = p_account;
    IF FOUND THEN
        PERFORM credits_internal._emit(a, 'reset', p_window, NULL, p_at, credits_internal._state(a, p_at));
    END IF;
END
$$;

-- The event feed's watermark: every event id at or below it is final
-- (committed or rolled back), as events take their ids when inserted, in
-- transactions that may commit in any order. The stored candidate becomes
-- safe once no transaction older than it is open; then the newest id is
-- the next candidate, given up to p_wait (milliseconds: a writer's commit)
-- to become safe too. The technique of the usage rollups (_settled,
-- src/reporting/rollups.sql); on Citus, where every node gives ids, the
-- candidate is the highest id any node gave, once every node gives only
-- higher ones (_cluster_candidate), and it is safe once no older
-- transaction is open on any node. Advanced by read_events; a session that
-- finds another advancing it, or cannot write (a standby, a read-only
-- transaction, REPEATABLE READ: its snapshot could miss events committed
-- meanwhile), uses the stored value.
CREATE FUNCTION credits_internal._events_safe_through(p_wait interval) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    st        credits_internal.event_watermark;
    v_settled boolean;
BEGIN
    IF current_setting('transaction_read_only')::boolean
       OR current_setting('transaction_isolation') <> 'read committed' THEN
        RETURN (SELECT w.safe_through FROM credits_internal.event_watermark w);
    END IF;
    SELECT * INTO st FROM credits_internal.event_watermark FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN (SELECT w.safe_through FROM credits_internal.event_watermark w);
    END IF;
    IF st.candidate > st.safe_through
       AND credits_internal._candidate_settled(st.candidate_at, st.candidate_at_nodes, interval '0') THEN
        st.safe_through := st.candidate;
    END IF;
    IF st.candidate <= st.safe_through THEN
        IF credits_internal._distributed() THEN
            SELECT c.candidate, c.at, c.at_nodes, c.settled
              INTO st.candidate, st.candidate_at, st.candidate_at_nodes, v_settled
              FROM credits_internal._cluster_candidate('credits.events_event_id_seq', st.safe_through, p_wait) c;
        ELSE
            st.candidate := coalesce((SELECT max(e.event_id) FROM credits.events e), 0);
            st.candidate_at := clock_timestamp();
            v_settled := st.candidate > st.safe_through AND credits_internal._settled(st.candidate_at, p_wait);
        END IF;
        IF v_settled THEN
            st.safe_through := st.candidate;
        END IF;
    END IF;
    UPDATE credits_internal.event_watermark
       SET safe_through = st.safe_through, candidate = st.candidate, candidate_at = st.candidate_at,
           candidate_at_nodes = st.candidate_at_nodes;
    RETURN st.safe_through;
END
$$;

-- read_events: the events committed after the cursor `after`, oldest first,
-- at most max_rows (1 to 1000). A consumer that calls it again with the
-- last cursor it got sees every committed event exactly once, whatever
-- order their transactions commit in (an event still in flight holds back
-- the ones after it, for as long as its transaction is open). Call it
-- outside a long transaction: it waits up to 50 ms for a commit in flight.
-- On Citus, on the coordinator: the events of every node, in one order.
CREATE FUNCTION read_events(after bigint DEFAULT 0, max_rows integer DEFAULT 100)
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

-- After entry `p_entry` changed a locked account whose state before was
-- `p_before`: the events its new state is due. A window that had credits
-- before and has none now ran out: an exhausted event for each window that
-- did (the daily and the monthly in one debit: two), again after new
-- credits ran out once more.
CREATE FUNCTION credits_internal._after_write(p_account text, p_now timestamptz, p_entry bigint,
                             p_before credits_internal._account_state)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    a credits.accounts;
    s credits_internal._account_state;
    t numeric;
    v_level numeric;  -- the account's alert (NULL: none)
BEGIN
    SELECT * INTO a FROM credits.accounts ac WHERE ac.account_id = p_account;
    s := credits_internal._state(a, p_now);
    v_level := credits_internal._alert_level(a, s);
    IF s.monthly_limit > 0 THEN
        FOREACH t IN ARRAY credits_internal._thresholds() LOOP
            EXIT WHEN s.monthly_used * 100 < s.monthly_limit * t;
            PERFORM credits_internal._emit(a, 'threshold', 'monthly', t, p_now, s);
        END LOOP;
    END IF;
    -- (the account's alert: what is available fell to its level)
    IF credits_internal._available(s) <= v_level AND credits_internal._available(p_before) > v_level THEN
        PERFORM credits_internal._emit(a, 'low_balance', credits_internal._limiting_window(s), v_level, p_now, s);
    END IF;
    IF s.daily_available = 0 AND p_before.daily_available > 0 THEN
        PERFORM credits_internal._emit(a, 'exhausted', 'daily', NULL, p_now, s, p_entry);
    END IF;
    IF s.allowance_available + s.grants_available = 0
       AND p_before.allowance_available + p_before.grants_available > 0 THEN
        PERFORM credits_internal._emit(a, 'exhausted', 'monthly', NULL, p_now, s, p_entry);
    END IF;
END
$$;

-- A denied try_debit or try_reserve: a window with nothing left is
-- exhausted (once per window, if nothing recorded it running out); one with
-- credits left but too few is a denied event (SPEC §4.7), once per window.
CREATE FUNCTION credits_internal._denied(p_account text, p_amount numeric, p_now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    a        credits.accounts;
    s        credits_internal._account_state;
    v_window text;
    v_left   numeric;
BEGIN
    SELECT * INTO a FROM credits.accounts ac WHERE ac.account_id = p_account;
    s := credits_internal._state(a, p_now);
    v_window := credits_internal._lacking_window(s, p_amount);
    v_left := CASE v_window WHEN 'daily' THEN s.daily_available ELSE s.allowance_available + s.grants_available END;
    IF v_left > 0 THEN
        PERFORM credits_internal._emit(a, 'denied', v_window, NULL, p_now, s);
    ELSIF NOT EXISTS (SELECT FROM credits.events e
                       WHERE e.account_id = p_account AND e.kind = 'exhausted' AND e.window_kind = v_window
                         AND e.window_key = credits_internal._window_key(a, v_window, p_now)) THEN
        PERFORM credits_internal._emit(a, 'exhausted', v_window, NULL, p_now, s);
    END IF;
END
$$;

-- Activity counters in shared memory (src/metering/stats.rs): charges,
-- denials, refunds and holds per plan and feature, counted as calls happen
-- (a denial that raises UC001 rolls its transaction back, but its count
-- stays). Empty without shared_preload_libraries.
CREATE FUNCTION credits_internal._count(kind "char", plan text, feature smallint) RETURNS void
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'credits_count';

CREATE FUNCTION credits_internal._stats()
RETURNS TABLE (plan text, feature_id smallint, charges bigint, denials bigint, refunds bigint, holds bigint)
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'stats_wrapper';

CREATE VIEW stats AS
SELECT s.plan, f.product, f.feature,
       sum(s.charges)::bigint AS charges, sum(s.denials)::bigint AS denials,
       sum(s.refunds)::bigint AS refunds, sum(s.holds)::bigint AS holds
  FROM credits_internal._stats() s
  LEFT JOIN credits.features f ON f.feature_id = s.feature_id
 GROUP BY s.plan, f.product, f.feature;
COMMENT ON VIEW stats IS 'Charges, denials (UC001 and try_ refusals, though rolled back), refunds and holds per plan and feature in this database, since the server started or stats_reset(): counts of calls, in shared memory.';

-- stats_reset: this database's counters back to zero.
CREATE FUNCTION stats_reset() RETURNS void
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'credits_stats_reset';
