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
    candidate_at timestamptz,                -- ... than this instant
    -- on Citus, the instant of each worker ('host:port'), by its own clock
    -- (credits_internal._cluster_candidate)
    candidate_at_nodes jsonb
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

-- Whether a transaction that began before `since` may still add ledger
-- entries. An entry's id is taken by the statement that inserts it, which
-- also gives its transaction an xid: a transaction idle without an xid has
-- no entry in flight (a psql session left open after a SELECT does not hold
-- the rollups back). (pg_stat_activity is cached per transaction, hence the
-- clear.) Without track_activities there is no telling: assume one is.
CREATE OR REPLACE FUNCTION credits_internal._older_transactions_open(since timestamptz) RETURNS boolean
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

-- _settled for a watermark's candidate: picked on a single server at p_at;
-- on Citus at p_at on the coordinator and at p_at_nodes on each worker (by
-- its clock). The coordinator is asked first: a transaction that ended
-- there may still be committing on a worker, where it is then prepared,
-- which the worker's check sees.
CREATE OR REPLACE FUNCTION credits_internal._candidate_settled(p_at timestamptz, p_at_nodes jsonb, p_wait interval)
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
CREATE OR REPLACE FUNCTION credits_internal._events_safe_through(p_wait interval) RETURNS bigint
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

-- The worker's rollup step: like _refresh_rollups, but an error is recorded
-- in rollup_state (and the server log) instead of ending the worker.
-- (pinned search_path: see _worker_step)
CREATE OR REPLACE FUNCTION credits_internal._worker_rollups(p_max bigint, p_wait interval) RETURNS bigint
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

-------------------------------------------------------------------------------
-- Batches (issue 20): debit_many, its rows taken below SQL where the
-- fast path can (src/metering/metering.sql, src/metering/fast_path.rs).
-------------------------------------------------------------------------------

-- The batch's fast path, below SQL (src/metering/fast_path.rs): each row's
-- new entry id; NULL for a row the SQL path decides, and for the later rows
-- of its account.
CREATE OR REPLACE FUNCTION credits_internal._debit_many_fast(p_accounts text[], p_features text[], p_quantities numeric[],
                                                  p_keys text[], p_metadata jsonb[], p_now timestamptz)
RETURNS bigint[]
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'credits_debit_many_fast';

-- debit_many: many debits in one call (a metering pipeline posting usage
-- after the fact), each row as try_debit would decide it, in the order
-- given for each account; one result row per input row, in input order:
--   outcome  charged | replayed (its key was used before by the same
--            request: entry_id is the first entry) | refused (UC001: its
--            denied or exhausted event is kept, as try_debit's) | rejected
--            (another documented error: nothing written for that row);
--   sqlstate, message, detail: the error of a refused or rejected row
--            (detail as JSON where the error gives JSON).
-- Arrays of one length (quantities NULL: 1 each; keys, metadata NULL:
-- none), at most 10,000 rows; UC009 otherwise, with nothing written.
-- An error outside the UC class (a serialization failure, a cancel) fails
-- the whole call.
CREATE OR REPLACE FUNCTION debit_many(account_ids text[], features text[], quantities numeric[] DEFAULT NULL,
                           idempotency_keys text[] DEFAULT NULL, metadata jsonb[] DEFAULT NULL)
RETURNS TABLE (ordinality integer, entry_id bigint, outcome text, sqlstate text, message text, detail jsonb)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now      timestamptz := credits.now();
    v_n        integer := cardinality(account_ids);
    v_entries  bigint[];
    v_decided  bigint[];
    v_outcome  text[];
    v_code     text[];
    v_message  text[];
    v_detail   jsonb[];
    v_prior    bigint;
    v_entry    bigint;
    v_sqlstate text;
    v_text     text;
    v_more     text;
    r          record;
BEGIN
    IF account_ids IS NULL OR features IS NULL THEN
        RAISE EXCEPTION 'invalid argument: account_ids and features must not be NULL' USING ERRCODE = 'UC009';
    END IF;
    IF v_n > 10000 THEN
        RAISE EXCEPTION 'invalid argument: % rows, at most 10000 per call', v_n USING ERRCODE = 'UC009';
    END IF;
    -- Every array one-dimensional (or empty) and as long as account_ids.
    IF coalesce(array_ndims(account_ids), 1) > 1 OR coalesce(array_ndims(features), 1) > 1
       OR coalesce(array_ndims(quantities), 1) > 1 OR coalesce(array_ndims(idempotency_keys), 1) > 1
       OR coalesce(array_ndims(metadata), 1) > 1 THEN
        RAISE EXCEPTION 'invalid argument: the arrays must be one-dimensional' USING ERRCODE = 'UC009';
    END IF;
    IF cardinality(features) <> v_n OR cardinality(quantities) <> v_n
       OR cardinality(idempotency_keys) <> v_n OR cardinality(metadata) <> v_n THEN
        RAISE EXCEPTION 'invalid argument: arrays of different lengths (account_ids %, features %, quantities %, idempotency_keys %, metadata %)',
                        v_n, cardinality(features), coalesce(cardinality(quantities)::text, 'NULL'),
                        coalesce(cardinality(idempotency_keys)::text, 'NULL'), coalesce(cardinality(metadata)::text, 'NULL')
            USING ERRCODE = 'UC009', DETAIL = 'account_ids, features and each array given must have one element per row';
    END IF;
    IF v_n = 0 THEN
        RETURN;
    END IF;
    IF quantities IS NULL THEN
        quantities := array_fill(1::numeric, ARRAY[v_n]);
    END IF;

    v_entries := credits_internal._debit_many_fast(account_ids, features, quantities, idempotency_keys,
                                                   metadata, v_now);

    -- The rows the fast path left, each account's in the order given, the
    -- accounts in key order (as the fast path locked them).
    IF array_position(v_entries, NULL) IS NULL THEN
        RETURN QUERY SELECT u.i::integer, u.entry_id, 'charged', NULL::text, NULL::text, NULL::jsonb
                       FROM unnest(v_entries) WITH ORDINALITY AS u(entry_id, i);
        RETURN;
    END IF;
    FOR r IN SELECT u.i, u.account_id, u.feature, u.quantity, u.key, u.meta
               FROM unnest(v_entries, account_ids, features, quantities, idempotency_keys, metadata)
                    WITH ORDINALITY AS u(entry_id, account_id, feature, quantity, key, meta, i)
              WHERE u.entry_id IS NULL
              ORDER BY u.account_id COLLATE "C", u.i
    LOOP
        IF v_outcome IS NULL THEN
            v_outcome := array_fill(NULL::text, ARRAY[v_n]);
            v_code := v_outcome;
            v_message := v_outcome;
            v_detail := array_fill(NULL::jsonb, ARRAY[v_n]);
            v_decided := array_fill(NULL::bigint, ARRAY[v_n]);
        END IF;
        v_prior := NULL;
        IF r.key IS NOT NULL THEN
            SELECT k.entry_id INTO v_prior FROM credits.idempotency k
             WHERE k.account_id = r.account_id AND k.idempotency_key = r.key;
        END IF;
        v_sqlstate := NULL;
        BEGIN
            v_entry := credits_internal._debit(r.account_id, r.feature, r.quantity, r.key, r.meta, true);
            v_decided[r.i] := v_entry;
            v_outcome[r.i] := CASE WHEN v_entry = v_prior THEN 'replayed' ELSE 'charged' END;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_text = MESSAGE_TEXT, v_more = PG_EXCEPTION_DETAIL;
            IF v_sqlstate NOT LIKE 'UC%' THEN
                RAISE;
            END IF;
            v_outcome[r.i] := CASE v_sqlstate WHEN 'UC001' THEN 'refused' ELSE 'rejected' END;
            v_code[r.i] := v_sqlstate;
            v_message[r.i] := v_text;
            v_detail[r.i] := CASE WHEN v_more LIKE '{%' THEN v_more::jsonb END;
        END;
        IF v_sqlstate = 'UC001' THEN
            -- As try_debit keeps it (the refusal's own writes rolled back with the row).
            PERFORM credits_internal._denied(r.account_id, (v_detail[r.i] ->> 'needed')::numeric,
                                             (credits_internal._lock_account(r.account_id, v_now)).last_at);
        END IF;
    END LOOP;

    RETURN QUERY
    SELECT u.i::integer, coalesce(u.entry_id, u.decided), coalesce(u.outcome, 'charged'), u.code, u.message, u.detail
      FROM unnest(v_entries, v_decided, v_outcome, v_code, v_message, v_detail)
           WITH ORDINALITY AS u(entry_id, decided, outcome, code, message, detail, i);
END
$$;

GRANT EXECUTE ON FUNCTION credits.debit_many(text[], text[], numeric[], text[], jsonb[]) TO credits_app, credits_admin;
COMMENT ON FUNCTION credits.debit_many(text[], text[], numeric[], text[], jsonb[]) IS
'Many debits in one call, each row decided as try_debit would, each account''s rows in the order given; one result per row: charged, replayed, refused (UC001) or rejected (another error, nothing written for it), with its entry id or error.';

REVOKE ALL ON ALL ROUTINES IN SCHEMA credits, credits_internal FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits.read_events(bigint, integer) TO credits_app, credits_reader, credits_admin;
COMMENT ON FUNCTION credits.read_events(bigint, integer) IS
'The events committed after a cursor, oldest first: following the cursors a consumer sees every committed event exactly once, whatever order transactions commit in.';

-------------------------------------------------------------------------------
-- Per-account alerts (src/accounts/accounts.sql, src/metering/events.sql):
-- a low_balance event when what is available falls to the account's level.
-------------------------------------------------------------------------------

ALTER TABLE credits.accounts ADD COLUMN alert_remaining numeric, ADD COLUMN alert_percent numeric;
ALTER TABLE credits.events DROP CONSTRAINT events_kind_check,
    ADD CONSTRAINT events_kind_check CHECK (kind IN ('exhausted', 'threshold', 'reset', 'denied', 'low_balance'));

-- What a debit could take in state `s`: every window applies, grants count
-- after the allowance, open holds are subtracted.
CREATE OR REPLACE FUNCTION credits_internal._available(s credits_internal._account_state) RETURNS numeric
LANGUAGE sql IMMUTABLE
RETURN least(coalesce(s.daily_available, s.allowance_available + s.grants_available),
             s.allowance_available + s.grants_available);

-- The window that caps what is available in state `s`.
CREATE OR REPLACE FUNCTION credits_internal._limiting_window(s credits_internal._account_state) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN s.daily_available < s.allowance_available + s.grants_available THEN 'daily' ELSE 'monthly' END;

-- An account's alert level (credits.set_alert) in state `s`: the higher of
-- its credits and its percentage of the monthly limit; NULL: no alert.
CREATE OR REPLACE FUNCTION credits_internal._alert_level(a credits.accounts, s credits_internal._account_state) RETURNS numeric
LANGUAGE sql IMMUTABLE
RETURN greatest(a.alert_remaining, trim_scale(s.monthly_limit * a.alert_percent / 100));

-- After entry `p_entry` changed a locked account whose state before was
-- `p_before`: the events its new state is due. A window that had credits
-- before and has none now ran out: an exhausted event for each window that
-- did (the daily and the monthly in one debit: two), again after new
-- credits ran out once more.
CREATE OR REPLACE FUNCTION credits_internal._after_write(p_account text, p_now timestamptz, p_entry bigint,
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

-- check: what a debit of `quantity` of `feature` would do now, writing
-- nothing (the same state and rules as debit; no lock, so a debit right
-- after may still be refused by a concurrent one).
--   allowed          whether the debit would succeed;
--   cost             what it would charge;
--   available        what a debit could take now (every window, grants, holds);
--   limiting_window  the window that refuses it, or when allowed the one
--                    that caps `available` (daily or monthly);
--   resets_at        when that window resets.
CREATE OR REPLACE FUNCTION "check"(account_id text, feature text, quantity numeric DEFAULT 1)
RETURNS TABLE (allowed boolean, cost numeric, available numeric, limiting_window text, resets_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now     timestamptz := credits.now();
    v_acct    credits.accounts;
    v_feature credits.features;
    s         credits_internal._account_state;
    v_lacking text;
BEGIN
    -- (on Citus, away from the account's node: on the node, in one round
    -- trip, as balance)
    IF credits_internal._elsewhere($1) THEN
        RETURN QUERY SELECT c.* FROM credits.accounts a CROSS JOIN LATERAL credits_internal._check_there(a.account_id, $2, $3) c
                      WHERE a.account_id = $1;
        IF NOT FOUND THEN
            PERFORM credits_internal._raise_unknown_account($1);
        END IF;
        RETURN;
    END IF;
    v_acct := credits_internal._account($1);
    v_feature := credits_internal._feature($2);
    cost := credits_internal._cost(v_feature, $3);
    v_now := credits_internal._reader_now(v_acct, v_now);
    s := credits_internal._state(v_acct, v_now);
    v_lacking := credits_internal._lacking_window(s, cost);
    allowed := v_lacking IS NULL;
    available := trim_scale(credits_internal._available(s));
    limiting_window := coalesce(v_lacking, credits_internal._limiting_window(s));
    resets_at := credits_internal._resets_at(limiting_window, v_now);
    RETURN NEXT;
END
$$;

-- The usage display of a read account at the instant it is in (windows as
-- of credits.now(), or later when the account is: SPEC §4.6): what
-- balance() returns for one account and usage_display for every account,
-- without looking the account up again. Security definer: the reporting
-- view calls it with the reader's rights, who reads no table.
--   daily_* are NULL when the plan has no daily limit.
--   available = what a debit could take right now: every window applies,
--   grants count after the allowance, open holds are subtracted.
CREATE OR REPLACE FUNCTION credits_internal._display(a credits.accounts)
RETURNS TABLE (plan text, daily_limit numeric, daily_used numeric, daily_remaining numeric,
               monthly_limit numeric, monthly_used numeric, monthly_remaining numeric,
               granted_remaining numeric, reserved numeric, available numeric,
               next_daily_reset timestamptz, next_monthly_reset timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now   timestamptz := credits_internal._reader_now(a, credits.now());
    s       credits_internal._account_state := credits_internal._state(a, v_now);
BEGIN
    plan := s.plan;
    daily_limit := trim_scale(s.daily_limit);
    daily_used := CASE WHEN s.daily_limit IS NOT NULL THEN trim_scale(s.daily_used) END;
    daily_remaining := CASE WHEN s.daily_limit IS NOT NULL
                            THEN trim_scale(greatest(0, s.daily_limit - s.daily_used)) END;
    monthly_limit := trim_scale(s.monthly_limit);
    monthly_used := trim_scale(s.monthly_used);
    monthly_remaining := trim_scale(greatest(0, s.monthly_limit - s.monthly_used));
    granted_remaining := trim_scale(s.granted_remaining);
    reserved := trim_scale(s.reserved);
    available := trim_scale(credits_internal._available(s));
    next_daily_reset := credits_internal._resets_at('daily', v_now);
    next_monthly_reset := credits_internal._resets_at('monthly', v_now);
    RETURN NEXT;
END
$$;

-- set_alert: a low_balance event for this account when what it has
-- available (balance().available) falls to `remaining` credits, or to
-- `percent` of its monthly limit, whichever comes first; once per window
-- (the one that limits what is available) and level, next to the global
-- credits.thresholds. Both NULL: no alert.
CREATE OR REPLACE FUNCTION set_alert(account_id text, remaining numeric DEFAULT NULL, percent numeric DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_account text := set_alert.account_id;
BEGIN
    PERFORM credits_internal._check_text(p_account, 'account_id');
    IF remaining IS NOT NULL THEN
        PERFORM credits_internal._check_amount(remaining, 'remaining');
    END IF;
    IF percent IS NOT NULL AND (percent <= 0 OR percent > 100 OR percent = 'NaN'::numeric) THEN
        RAISE EXCEPTION 'invalid percent: %', percent USING ERRCODE = 'UC004',
            DETAIL = 'percent must be more than 0 and at most 100';
    END IF;
    PERFORM credits_internal._lock_account(p_account, credits.now());
    UPDATE credits.accounts a
       SET alert_remaining = trim_scale(remaining), alert_percent = trim_scale(percent)
     WHERE a.account_id = p_account;
END
$$;

-- void_grant: remove what is left of a grant (a promotion withdrawn, a
-- grant made by mistake), as an expiry would: an 'E' entry of what was
-- left, with the reason. Nothing given back to the grant afterwards (a
-- refund of a debit that drew on it) returns to it. Voiding it again returns
-- the same entry; a grant that has expired cannot be voided (UC012).
-- void_grant_for takes the grant's account too (on Citus: delegated to its node).
CREATE OR REPLACE FUNCTION void_grant(entry_id bigint, reason text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._void_grant(NULL, $1, $2);
END
$$;

REVOKE ALL ON ALL ROUTINES IN SCHEMA credits, credits_internal FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits.set_alert(text, numeric, numeric) TO credits_app, credits_billing, credits_admin;
COMMENT ON FUNCTION credits.set_alert(text, numeric, numeric) IS
'A low_balance event for the account when what it has available falls to remaining credits or to percent of its monthly limit; once per window and level. Both NULL: no alert.';
COMMENT ON COLUMN credits.accounts.alert_remaining IS 'Alert (set_alert): a low_balance event when available falls to this many credits; NULL: none.';
COMMENT ON COLUMN credits.accounts.alert_percent IS 'Alert (set_alert): ... or to this percentage of the monthly limit; NULL: none.';
COMMENT ON COLUMN credits.events.kind IS 'exhausted, denied, threshold, reset or low_balance.';

-------------------------------------------------------------------------------
-- Activity counters in shared memory (src/metering/stats.rs,
-- src/metering/events.sql): charges, denials, refunds, holds.
-------------------------------------------------------------------------------

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

CREATE FUNCTION stats_reset() RETURNS void
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'credits_stats_reset';

-- Charge `p_amount` to a locked account whose state `s` was checked to fit:
-- the allowance first, then grants soonest-expiring first. Writes the 'D'
-- entry (ref = the hold it settles, if any) and returns its id. The amount
-- counts in today's daily window unless `p_today` is false (a settle whose
-- hold was placed on a day that has closed: the caller records it there).
-- Holds are promises, not earmarks (SPEC §4, issue: holds and grants): a
-- charge takes allowance that this month's holds hold before it takes a
-- grant, and those holds are backed by the grants instead, so a hold never
-- makes a debit spend a grant while allowance it did not use is left.
CREATE OR REPLACE FUNCTION credits_internal._charge(p_account text, s credits_internal._account_state, p_feature_id smallint,
                        p_amount numeric, p_metadata jsonb, p_ref bigint, p_now timestamptz,
                        p_today boolean DEFAULT true)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_alloc numeric := least(p_amount, s.allowance_available);
    v_need  numeric := p_amount - least(p_amount, s.allowance_available);
    v_shift numeric;
    v_take  numeric;
    v_entry bigint;
    h       record;
BEGIN
    -- Allowance held by this month's holds, moved onto grants.
    v_shift := least(v_need, s.grants_available,
                     least(s.reserved_allowance, greatest(0, s.monthly_limit - s.monthly_used)));
    IF v_shift > 0 THEN
        v_alloc := v_alloc + v_shift;
        v_need := v_need - v_shift;
        FOR h IN SELECT ho.hold_id, ho.amount - ho.from_grants AS on_allowance FROM credits.holds ho
                  WHERE ho.account_id = p_account AND ho.resolved_entry IS NULL AND ho.expires_at > p_now
                    AND ho.month >= credits_internal._utc_month(p_now) AND ho.amount > ho.from_grants
                  ORDER BY ho.hold_id DESC
        LOOP
            EXIT WHEN v_shift = 0;
            v_take := least(v_shift, h.on_allowance);
            UPDATE credits.holds ho SET from_grants = ho.from_grants + v_take
             WHERE ho.account_id = p_account AND ho.hold_id = h.hold_id;
            v_shift := v_shift - v_take;
        END LOOP;
    END IF;

    INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, from_grants, ref, metadata)
    VALUES (p_account, p_now, 'D', p_feature_id, p_amount, nullif(v_need, 0), p_ref, p_metadata)
    RETURNING entry_id INTO v_entry;
    PERFORM credits_internal._count('C', s.plan, p_feature_id);
    IF v_need > 0 THEN
        PERFORM credits_internal._draw_grants(p_account, v_entry, v_need, p_now);
    END IF;

    UPDATE credits.accounts a
       SET day = credits_internal._utc_day(p_now),
           daily_used = CASE WHEN p_today THEN s.daily_used + p_amount ELSE s.daily_used END,
           month = credits_internal._utc_month(p_now),
           monthly_used = s.monthly_used + v_alloc,
           monthly_epoch = CASE WHEN a.month = credits_internal._utc_month(p_now) THEN a.monthly_epoch ELSE 0 END
     WHERE a.account_id = p_account;
    RETURN v_entry;
END
$$;

-- The slow path: full validation, grants, precise errors.
CREATE OR REPLACE FUNCTION credits_internal._debit_slow(p_account text, p_feature text, p_quantity numeric, p_key text,
                            p_metadata jsonb, p_raise boolean, p_now timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_feature credits.features;
    v_amount  numeric;
    v_acct    credits.accounts;
    v_state   credits_internal._account_state;
    v_request uuid;
    v_entry   bigint;
BEGIN
    PERFORM credits_internal._check_text(p_account, 'account_id');
    v_feature := credits_internal._feature(p_feature);
    v_amount := credits_internal._cost(v_feature, p_quantity);
    PERFORM credits_internal._check_metadata(p_metadata);
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._check_text(p_key, 'idempotency_key');
    END IF;

    v_acct := credits_internal._lock_account(p_account, p_now);
    p_now := v_acct.last_at;  -- the account's time (_lock_account)
    IF p_key IS NOT NULL THEN
        v_request := credits_internal._debit_request(p_feature, p_quantity, p_metadata);
        v_entry := credits_internal._replay(p_account, p_key, v_request);
        IF v_entry IS NOT NULL THEN
            RETURN v_entry;
        END IF;
    END IF;

    v_state := credits_internal._state(v_acct, p_now);
    IF credits_internal._lacking_window(v_state, v_amount) IS NOT NULL THEN
        PERFORM credits_internal._count('N', v_state.plan, v_feature.feature_id);
        IF NOT p_raise THEN
            PERFORM credits_internal._denied(p_account, v_amount, p_now);
            RETURN NULL;
        END IF;
        PERFORM credits_internal._raise_insufficient(v_amount, p_feature, v_state, p_now);
    END IF;
    v_entry := credits_internal._charge(p_account, v_state, v_feature.feature_id, v_amount, p_metadata, NULL, p_now);
    PERFORM credits_internal._after_write(p_account, p_now, v_entry, v_state);

    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._remember_key(p_account, p_key, v_entry, v_request);
    END IF;
    RETURN v_entry;
END
$$;

-- refund: give back (part of) a debit to where it came from.
--   Grants first (they were drawn last), back to the very grants drawn
--   while they are still valid: a draw from a grant that has expired since
--   is recorded as expired at once ('E', SPEC §4.5), not restored;
--   then the allowance, back to the window of the debit: today's daily
--   window if the debit was today, this month's monthly window if the debit
--   was in it. A window that has since closed stays closed (no rollover):
--   that part is recorded in the ledger but not made available again.
--   amount NULL refunds what is left; repeating it returns the same entry.
--   idempotency_key (per account) makes a partial refund safe to retry.
--   refund_for takes the debit's account too: on Citus it is delegated to
--   the account's node, where refund(entry_id) looks the entry up on every
--   node first (docs/citus.md).
CREATE OR REPLACE FUNCTION refund(entry_id bigint, amount numeric DEFAULT NULL, reason text DEFAULT NULL,
                       idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._refund(NULL, $1, $2, $3, $4);
END
$$;

-- (IntervalStyle pinned: the ttl is part of the key's fingerprint, which
-- must not depend on session settings, SPEC §4.8.)
CREATE OR REPLACE FUNCTION credits_internal._reserve(p_account text, p_feature text, p_amount numeric, p_ttl interval,
                         p_key text, p_raise boolean)
RETURNS bigint
LANGUAGE plpgsql SET IntervalStyle = postgres AS $$
DECLARE
    v_now     timestamptz := credits.now();
    v_feature credits.features;
    v_acct    credits.accounts;
    v_state   credits_internal._account_state;
    v_request uuid;
    v_entry   bigint;
    v_expires timestamptz;
    v_grants  numeric;
BEGIN
    PERFORM credits_internal._check_text(p_account, 'account_id');
    v_feature := credits_internal._feature(p_feature);
    PERFORM credits_internal._check_amount(p_amount, 'amount');
    p_amount := trim_scale(p_amount);
    IF p_ttl IS NULL OR p_ttl <= interval '0' OR p_ttl > interval '31 days' THEN
        RAISE EXCEPTION 'invalid ttl: %', coalesce(trim_scale(extract(epoch FROM p_ttl)) || ' seconds', 'NULL')
            USING ERRCODE = 'UC009', DETAIL = 'ttl must be more than 0 and at most 31 days';
    END IF;
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._check_text(p_key, 'idempotency_key');
    END IF;

    v_acct := credits_internal._lock_account(p_account, v_now);
    v_now := v_acct.last_at;  -- the account's time (_lock_account)
    IF p_key IS NOT NULL THEN
        v_request := credits_internal._fingerprint('reserve', p_feature, p_amount::text, p_ttl::text);
        v_entry := credits_internal._replay(p_account, p_key, v_request);
        IF v_entry IS NOT NULL THEN
            RETURN v_entry;
        END IF;
    END IF;
    v_state := credits_internal._state(v_acct, v_now);
    IF credits_internal._lacking_window(v_state, p_amount) IS NOT NULL THEN
        PERFORM credits_internal._count('N', v_state.plan, v_feature.feature_id);
        IF NOT p_raise THEN
            PERFORM credits_internal._denied(p_account, p_amount, v_now);
            RETURN NULL;
        END IF;
        PERFORM credits_internal._raise_insufficient(p_amount, p_feature, v_state, v_now);
    END IF;

    -- (in UTC: a day of ttl is 24 hours whatever the session's TimeZone)
    v_expires := (v_now AT TIME ZONE 'UTC' + p_ttl) AT TIME ZONE 'UTC';
    v_grants := p_amount - least(p_amount, v_state.allowance_available);
    INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, from_grants, metadata)
    VALUES (p_account, v_now, 'H', v_feature.feature_id, p_amount, nullif(v_grants, 0),
            jsonb_build_object('expires_at', v_expires))
    RETURNING entry_id INTO v_entry;
    INSERT INTO credits.holds (account_id, hold_id, feature_id, amount, expires_at, from_grants, day, month)
    VALUES (p_account, v_entry, v_feature.feature_id, p_amount, v_expires, v_grants,
            credits_internal._utc_day(v_now), credits_internal._utc_month(v_now));
    UPDATE credits.accounts a SET reserved = a.reserved + p_amount WHERE a.account_id = p_account;
    PERFORM credits_internal._count('H', v_state.plan, v_feature.feature_id);
    PERFORM credits_internal._after_write(p_account, v_now, v_entry, v_state);
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._remember_key(p_account, p_key, v_entry, v_request);
    END IF;
    RETURN v_entry;
END
$$;

REVOKE ALL ON ALL ROUTINES IN SCHEMA credits, credits_internal FROM PUBLIC;
REVOKE ALL ON credits.stats FROM PUBLIC;
GRANT SELECT ON credits.stats TO credits_reader, credits_admin;
GRANT EXECUTE ON FUNCTION credits_internal._stats() TO credits_reader, credits_admin;
GRANT EXECUTE ON FUNCTION credits.stats_reset() TO credits_admin;
GRANT SELECT ON credits.stats TO credits_admin;
COMMENT ON FUNCTION credits.stats_reset() IS
'Reset this database''s activity counters (credits.stats) to zero. Admin.';
COMMENT ON COLUMN credits.stats.plan IS 'The account''s plan at the call.';
COMMENT ON COLUMN credits.stats.product IS 'The feature''s product.';
COMMENT ON COLUMN credits.stats.feature IS 'The feature.';
COMMENT ON COLUMN credits.stats.charges IS 'Debits and settles charged (fast and SQL path).';
COMMENT ON COLUMN credits.stats.denials IS 'Debits and reserves refused for want of credits (UC001 or a try_ NULL), counted though a raised one rolls back.';
COMMENT ON COLUMN credits.stats.refunds IS 'Refunds.';
COMMENT ON COLUMN credits.stats.holds IS 'Holds placed.';

-------------------------------------------------------------------------------
-- Stripes of hot accounts (issue 20): set_stripes, the stripes table, the
-- fold in _lock_account, unspent budgets in _state and verify(), maintenance
-- coming back to striped accounts (src/metering/stripes.rs).
-------------------------------------------------------------------------------

-- (added bare, then given their default and filled: PostgreSQL refuses
-- to add a column with a default while SQL functions take the row type;
-- the UPDATE writes every account row once)
ALTER TABLE credits.accounts ADD COLUMN stripes smallint, ADD COLUMN stripe_budget numeric;
ALTER TABLE credits.accounts ALTER COLUMN stripes SET DEFAULT 0, ALTER COLUMN stripe_budget SET DEFAULT 0;
UPDATE credits.accounts SET stripes = 0, stripe_budget = 0;
ALTER TABLE credits.accounts ALTER COLUMN stripes SET NOT NULL, ALTER COLUMN stripe_budget SET NOT NULL;

CREATE TABLE credits.stripes (
    account_id text COLLATE "C" NOT NULL REFERENCES credits.accounts (account_id),
    stripe     smallint NOT NULL,
    day        date NOT NULL DEFAULT '-infinity',
    month      date NOT NULL DEFAULT '-infinity',
    budget     numeric NOT NULL DEFAULT 0,
    spent      numeric NOT NULL DEFAULT 0,
    last_at    timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (account_id, stripe)
) WITH (fillfactor = 40);
SELECT pg_catalog.pg_extension_config_dump('credits.stripes', '');
REVOKE ALL ON credits.stripes FROM PUBLIC;
GRANT SELECT ON credits.stripes TO credits_admin;

-- Fold a locked account's stripes back into its counters: what their
-- budgets did not spend is no longer used, and the stripes are empty until
-- a debit refills them (_stripes_refill). The caller holds the stripes
-- (_lock_account takes them before the row); one created since (set_stripes
-- racing) is not waited for while the row is held: 40001, to retry.
CREATE OR REPLACE FUNCTION credits_internal._fold_stripes(a credits.accounts) RETURNS credits.accounts
LANGUAGE plpgsql AS $$
DECLARE
    v_unspent numeric;
    v_last    timestamptz;
BEGIN
    BEGIN
        SELECT coalesce(sum(s.budget - s.spent), 0), max(s.last_at) INTO v_unspent, v_last
          FROM (SELECT st.budget, st.spent, st.last_at FROM credits.stripes st
                 WHERE st.account_id = a.account_id FOR UPDATE NOWAIT) s;
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'could not serialize access to account %: its stripes changed meanwhile',
                        quote_literal(a.account_id) USING ERRCODE = '40001';
    END;
    UPDATE credits.stripes st SET budget = 0, spent = 0
     WHERE st.account_id = a.account_id AND (st.budget <> 0 OR st.spent <> 0);
    UPDATE credits.accounts ac
       SET daily_used = trim_scale(ac.daily_used - v_unspent), monthly_used = trim_scale(ac.monthly_used - v_unspent),
           stripe_budget = 0, last_at = greatest(ac.last_at, v_last)
     WHERE ac.account_id = a.account_id
    RETURNING * INTO a;
    RETURN a;
END
$$;

-- The instant a reader sees an account at: _account_now, moved on by the
-- latest debit of its stripes (src/metering/stripes.rs), which a striped
-- debit records on its stripe, not on the account row (_lock_account folds
-- it into last_at). balance(), check() and grants() read at this instant.
CREATE OR REPLACE FUNCTION credits_internal._reader_now(a credits.accounts, p_now timestamptz) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF a.stripes > 0 OR a.stripe_budget > 0 THEN
        RETURN greatest(credits_internal._account_now(a, p_now),
                        (SELECT max(s.last_at) FROM credits.stripes s WHERE s.account_id = a.account_id));
    END IF;
    RETURN credits_internal._account_now(a, p_now);
END
$$;

-- grants: each grant of an account, newest first: its kind, amount, what is
-- left to use, when it expires and its status (active, used, expired, void).
CREATE OR REPLACE FUNCTION grants(account_id text)
RETURNS TABLE (grant_id bigint, kind text, amount numeric, remaining numeric, expires_at timestamptz,
               granted_at timestamptz, status text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now timestamptz;
    v_acct credits.accounts;
BEGIN
    v_acct := credits_internal._account($1);
    v_now := credits_internal._reader_now(v_acct, credits.now());
    RETURN QUERY
    SELECT g.grant_id, g.kind, trim_scale(g.amount), trim_scale(u.remaining), g.expires_at, l.at, u.status
      FROM credits.grants g
      JOIN credits.ledger l ON l.account_id = g.account_id AND l.entry_id = g.grant_id
      LEFT JOIN credits.ledger e ON e.account_id = g.account_id AND e.entry_id = g.expired_entry
      CROSS JOIN LATERAL (
          SELECT CASE WHEN e.metadata ? 'void' THEN 'void'
                      WHEN g.expired_entry IS NOT NULL OR g.expires_at <= v_now THEN 'expired'
                      WHEN g.remaining = 0 THEN 'used'
                      ELSE 'active' END AS status) st
      CROSS JOIN LATERAL (
          SELECT st.status, CASE WHEN st.status IN ('active', 'used') THEN g.remaining ELSE 0 END AS remaining) u
     WHERE g.account_id = $1
     ORDER BY g.grant_id DESC;
END
$$;

-- Lock an account row (every write to an account goes through this lock,
-- which also orders its ledger entries) and fail with UC002 if it is missing.
-- The account is brought up to `p_now` (or its own time, if that is later:
-- _account_now) before anyone decides: ended windows closed, holds and
-- grants past their deadline expired. Callers then decide at the returned
-- row's last_at.
CREATE OR REPLACE FUNCTION credits_internal._lock_account(p_account text, p_now timestamptz) RETURNS credits.accounts
LANGUAGE plpgsql AS $$
DECLARE
    v credits.accounts;
BEGIN
    -- A striped account's stripes first, then its row: every path that
    -- waits for both takes them in this order (src/metering/stripes.rs).
    PERFORM FROM credits.stripes s WHERE s.account_id = p_account ORDER BY s.stripe FOR UPDATE;
    -- Locked by moving its time on: the account's time is the latest any
    -- call decided at, including one that writes nothing else (a denial),
    -- so what it expires or closes now stays expired and closed for a call
    -- whose clock is behind. (Callers decide at last_at, and write no other.)
    UPDATE credits.accounts a SET last_at = credits_internal._time_of(a.last_at, a.day, a.month, p_now)
     WHERE a.account_id = p_account
    RETURNING * INTO v;
    IF NOT FOUND THEN
        PERFORM credits_internal._raise_unknown_account(p_account);
    END IF;
    IF credits_internal._distributed() THEN
        PERFORM credits_internal._follow_history(p_account);
    END IF;
    IF v.stripe_budget > 0 THEN
        v := credits_internal._fold_stripes(v);
    END IF;
    p_now := v.last_at;
    IF credits_internal._windows_passed(v, p_now) THEN
        -- (through the account's row: on Citus, the query runs on the node
        -- holding the account, where _close_windows finds its shards)
        PERFORM credits_internal._close_windows(ARRAY[a.account_id], p_now)
           FROM credits.accounts a WHERE a.account_id = p_account;
        SELECT * INTO v FROM credits.accounts a WHERE a.account_id = p_account;
    END IF;
    IF credits_internal._expiry_due(v, p_now) THEN
        PERFORM credits_internal._expire_due(ARRAY[p_account], p_now);
        SELECT * INTO v FROM credits.accounts a WHERE a.account_id = p_account;
    END IF;
    RETURN v;
END
$$;

CREATE OR REPLACE FUNCTION credits_internal._state(a credits.accounts, p_now timestamptz) RETURNS credits_internal._account_state
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v         credits_internal._account_state;
    v_unspent numeric;
BEGIN
    -- A striped account's counters count its stripes' budgets as used: what
    -- they have not spent is not (src/metering/stripes.rs).
    IF a.stripe_budget > 0 THEN
        SELECT coalesce(sum(s.budget - s.spent), 0) INTO v_unspent
          FROM credits.stripes s WHERE s.account_id = a.account_id;
        a.daily_used := a.daily_used - v_unspent;
        a.monthly_used := a.monthly_used - v_unspent;
    END IF;
    SELECT p.plan, p.daily_limit,
           credits_internal._in_window(a.day, credits_internal._utc_day(p_now), a.daily_used),
           p.monthly_allowance + a.purchased,
           credits_internal._in_window(a.month, credits_internal._utc_month(p_now), a.monthly_used),
           coalesce((SELECT sum(g.remaining) FROM credits.grants g
                      WHERE g.account_id = a.account_id AND g.remaining > 0 AND g.expired_entry IS NULL
                        AND (g.expires_at IS NULL OR g.expires_at > p_now)), 0),
           0, 0, 0, 0
      INTO v.plan, v.daily_limit, v.daily_used, v.monthly_limit, v.monthly_used, v.granted_remaining,
           v.reserved, v.reserved_allowance, v.reserved_grants, v.reserved_today
      FROM credits.plans p
     WHERE p.plan = a.plan;
    IF a.reserved > 0 THEN
        -- (holds past their deadline no longer count, even before they are freed)
        SELECT coalesce(sum(h.amount), 0),
               coalesce(sum(h.amount) FILTER (WHERE h.day >= credits_internal._utc_day(p_now)), 0),
               coalesce(sum(h.amount - h.from_grants) FILTER (WHERE h.month >= credits_internal._utc_month(p_now)), 0),
               coalesce(sum(h.from_grants), 0)
          INTO v.reserved, v.reserved_today, v.reserved_allowance, v.reserved_grants
          FROM credits.holds h
         WHERE h.account_id = a.account_id AND h.resolved_entry IS NULL AND h.expires_at > p_now;
    END IF;
    v.daily_available := CASE WHEN v.daily_limit IS NOT NULL
                              THEN greatest(0, v.daily_limit - v.daily_used - v.reserved_today) END;
    v.allowance_available := greatest(0, v.monthly_limit - v.monthly_used - v.reserved_allowance);
    v.grants_available := greatest(0, v.granted_remaining - v.reserved_grants);
    RETURN v;
END
$$;

-- Hand a striped account's stripes budgets again (src/metering/stripes.rs):
-- each an equal part of half what the account can spend before any event
-- (a threshold, its alert, a full day). The caller holds the account and its
-- stripes, folded (_lock_account). Returns what it handed out.
CREATE OR REPLACE FUNCTION credits_internal._stripes_refill(p_account text, p_now timestamptz) RETURNS numeric
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'credits_stripes_refill';

-- A debit the fast path declined (debit and try_debit try it first). An
-- account with a hold or grant past its deadline, or a window to close that
-- had run out (whose reset event is emitted in SQL), is brought up to date,
-- and the fast path tried once more;
-- anything else is the slow path's.
CREATE OR REPLACE FUNCTION credits_internal._debit(p_account text, p_feature text, p_quantity numeric, p_key text,
                       p_metadata jsonb, p_raise boolean)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now   timestamptz := credits.now();
    v_entry bigint;
    a       credits.accounts;
BEGIN
    -- On Citus, away from the account's node (a debit inside a transaction
    -- on the coordinator): the whole debit runs on that node, in this
    -- transaction, in one round trip (src/distributed/distribute.sql).
    IF credits_internal._elsewhere(p_account) THEN
        SELECT credits_internal._debit_there(ac.account_id, p_feature, p_quantity, p_key, p_metadata, p_raise)
          INTO v_entry FROM credits.accounts ac WHERE ac.account_id = p_account;
        IF NOT FOUND THEN
            PERFORM credits_internal._raise_unknown_account(p_account);
        END IF;
        RETURN v_entry;
    END IF;
    -- (the row read first, then asked about: Citus cannot ship a query
    -- that passes a whole row of a distributed table to a function)
    SELECT * INTO a FROM credits.accounts ac WHERE ac.account_id = p_account;
    IF FOUND AND (credits_internal._windows_passed(a, v_now) OR credits_internal._expiry_due(a, v_now)) THEN
        PERFORM credits_internal._lock_account(p_account, v_now);
        v_entry := credits_internal._debit_fast(p_account, p_feature, p_quantity, p_key, p_metadata, v_now);
    END IF;
    IF v_entry IS NULL THEN
        v_entry := credits_internal._debit_slow(p_account, p_feature, p_quantity, p_key, p_metadata, p_raise, v_now);
    END IF;
    -- A striped account's stripes, emptied on the way here, get budgets for
    -- the debits after this one (nothing for any other account).
    PERFORM credits_internal._stripes_refill(p_account, v_now);
    RETURN v_entry;
END
$$;

-- verify: recompute every account's balances from the ledger and report
-- each difference. No rows = every stored balance is what the ledger implies.
-- Each window counter is checked against the window it says it counts
-- (accounts.day / accounts.month), so the result does not depend on the clock.
CREATE OR REPLACE FUNCTION verify() RETURNS TABLE (account_id text, problem text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT p.account_id, p.problem
      FROM (SELECT v.account_id, v.problem FROM credits_internal._verify_accounts() v
            UNION ALL
            -- The usage rollups hold the ledger's totals up to rolled_through, exactly.
            SELECT coalesce(r.account_id, t.account_id),
                   format('usage rollup of %s kind %s feature %s has %s (%s from grants) in %s entries, the ledger says %s (%s) in %s',
                          to_char(coalesce(r.month, t.month), 'YYYY-MM'), coalesce(r.kind, t.kind),
                          coalesce(r.feature_id, t.feature_id)::text, r.amount, r.from_grants, r.entries,
                          t.amount, t.from_grants, t.entries)
              FROM credits.usage_rollup r
              FULL JOIN credits_internal._ledger_totals(0, credits_internal._rolled_through()) t
                ON t.account_id = r.account_id AND t.month = r.month AND t.kind = r.kind
               AND coalesce(t.feature_id, -1) = coalesce(r.feature_id, -1)
             WHERE r.amount IS DISTINCT FROM t.amount OR r.from_grants IS DISTINCT FROM t.from_grants
                OR r.entries IS DISTINCT FROM t.entries
           ) p
     ORDER BY p.account_id, p.problem;
END
$$;

-- One step of maintenance at instant `p_at`, in the caller's transaction:
-- starts a run if something is due, or does one batch of the run in
-- progress (which keeps its own instant, so a run cut short resumes as it
-- began). Returns the seconds until more is due: 0 = call again now.
CREATE OR REPLACE FUNCTION credits_internal._maintenance_step(p_at timestamptz, p_batch integer) RETURNS double precision
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    st       credits.maintenance_state;
    run      credits.maintenance_runs;
    v_done   record;
    v_ids    text[];
    v_n      integer;
    v_one    text;
    v_free   boolean;
BEGIN
    IF p_at IS NULL OR NOT isfinite(p_at) THEN
        RAISE EXCEPTION 'invalid maintenance instant: %', coalesce(p_at::text, 'NULL') USING ERRCODE = 'UC009';
    END IF;
    IF p_batch IS NULL OR p_batch < 1 THEN
        RAISE EXCEPTION 'invalid batch size: %', coalesce(p_batch::text, 'NULL') USING ERRCODE = 'UC009';
    END IF;
    -- One maintenance step at a time: the worker and a manual run interleave safely.
    -- (On Citus every node runs its own: these tables are the node's, and
    -- each batch works on the node's shards.)
    SELECT * INTO st FROM credits.maintenance_state FOR UPDATE;

    IF st.run_id IS NULL THEN
        IF credits_internal._next_due(st.done_through) > p_at THEN
            RETURN greatest(0, extract(epoch FROM credits_internal._next_due(greatest(st.done_through, p_at)) - p_at));
        END IF;
        INSERT INTO credits.maintenance_runs (run_at, previous, phase)
        VALUES (p_at, st.done_through,
                CASE WHEN st.done_through IS NULL OR credits_internal._utc_day(st.done_through) < credits_internal._utc_day(p_at)
                     THEN 'windows' ELSE 'expiries' END)
        RETURNING * INTO run;
        UPDATE credits.maintenance_state SET run_id = run.run_id;
    ELSE
        SELECT * INTO run FROM credits.maintenance_runs r WHERE r.run_id = st.run_id;
    END IF;

    IF run.phase = 'windows' THEN
        -- One batch per transaction, locks taken in key order; accounts
        -- held by another transaction are noted and closed once free.
        SELECT * INTO v_done FROM credits_internal._close_windows_after(run.cursor, run.run_at, p_batch);
        INSERT INTO credits.maintenance_waiting (run_id, account_id, since)
        SELECT run.run_id, s.id, clock_timestamp() FROM unnest(v_done.skipped) s(id)
        ON CONFLICT DO NOTHING;
        IF v_done.last_account IS NULL THEN
            UPDATE credits.maintenance_runs r SET phase = 'expiries' WHERE r.run_id = run.run_id;
        ELSE
            UPDATE credits.maintenance_runs r
               SET cursor = v_done.last_account, batches = r.batches + 1,
                   accounts = r.accounts + v_done.accounts, windows = r.windows + v_done.windows
             WHERE r.run_id = run.run_id;
        END IF;
        RETURN 0;
    END IF;

    -- Expiries: the accounts with a hold or grant past its deadline, a batch
    -- at a time (one another transaction holds is left for a later step).
    v_ids := credits_internal._lock_free(credits_internal._due_accounts(run.run_at, p_batch), false);
    IF v_ids <> '{}' THEN
        v_n := credits_internal._expire_due(v_ids, run.run_at);
        UPDATE credits.maintenance_runs r SET batches = r.batches + 1, expired = r.expired + v_n
         WHERE r.run_id = run.run_id;
        RETURN 0;
    END IF;

    -- The accounts skipped because a transaction held them, once free.
    -- Striped ones with budgets out go through _lock_account (which folds
    -- them back before closing) when their stripes, then their row, can be
    -- taken without waiting (the order every path takes them in).
    v_n := 0;
    FOR v_one IN SELECT w.account_id FROM credits.maintenance_waiting w
                  WHERE w.run_id = run.run_id ORDER BY w.account_id
    LOOP
        CONTINUE WHEN NOT coalesce((SELECT a.stripe_budget > 0 FROM credits.accounts a WHERE a.account_id = v_one), false);
        SELECT count(*) = (SELECT count(*) FROM credits.stripes s WHERE s.account_id = v_one) INTO v_free
          FROM (SELECT FROM credits.stripes s WHERE s.account_id = v_one FOR UPDATE SKIP LOCKED) x;
        IF v_free THEN
            PERFORM FROM credits.accounts a WHERE a.account_id = v_one FOR UPDATE SKIP LOCKED;
            IF FOUND THEN
                PERFORM credits_internal._lock_account(v_one, run.run_at);
                DELETE FROM credits.maintenance_waiting w WHERE w.run_id = run.run_id AND w.account_id = v_one;
                v_n := v_n + 1;
            END IF;
        END IF;
    END LOOP;
    IF v_n > 0 THEN
        UPDATE credits.maintenance_runs r SET batches = r.batches + 1, accounts = r.accounts + v_n
         WHERE r.run_id = run.run_id;
        RETURN 0;
    END IF;
    v_ids := credits_internal._lock_free(ARRAY(SELECT w.account_id FROM credits.maintenance_waiting w
                                                 WHERE w.run_id = run.run_id), true);
    IF v_ids <> '{}' THEN
        v_n := credits_internal._close_windows(v_ids, run.run_at);
        DELETE FROM credits.maintenance_waiting w WHERE w.run_id = run.run_id AND w.account_id = ANY (v_ids);
        UPDATE credits.maintenance_runs r
           SET batches = r.batches + 1, accounts = r.accounts + cardinality(v_ids), windows = r.windows + v_n
         WHERE r.run_id = run.run_id;
        RETURN 0;
    END IF;
    -- Still held (or still with a deadline to expire): come back in a second;
    -- every other account is done, and the held ones are correct at their
    -- next call meanwhile.
    IF EXISTS (SELECT FROM credits.maintenance_waiting w WHERE w.run_id = run.run_id)
       OR credits_internal._due_accounts(run.run_at, 1) <> '{}' THEN
        RETURN 1;
    END IF;

    UPDATE credits.maintenance_runs r SET phase = 'done', finished_at = clock_timestamp()
     WHERE r.run_id = run.run_id;
    UPDATE credits.maintenance_state
       SET run_id = NULL, done_through = greatest(done_through, run.run_at);
    RETURN greatest(0, extract(epoch FROM credits_internal._next_due(greatest(st.done_through, run.run_at)) - p_at));
END
$$;

-- set_stripes: spread an account's debits over `stripes` stripes (2 to 64;
-- 0 turns it off), for an account many sessions debit at once: a debit then
-- locks one free stripe instead of the account row (src/metering/stripes.rs).
-- Decisions stay exact; what a striped account costs is in docs/rules.md.
CREATE OR REPLACE FUNCTION set_stripes(account_id text, stripes integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_account text := set_stripes.account_id;
    p_stripes integer := set_stripes.stripes;
BEGIN
    PERFORM credits_internal._check_text(p_account, 'account_id');
    IF p_stripes IS NULL OR p_stripes < 0 OR p_stripes = 1 OR p_stripes > 64 THEN
        RAISE EXCEPTION 'invalid stripes: %', coalesce(p_stripes::text, 'NULL') USING ERRCODE = 'UC009',
            DETAIL = 'stripes must be 0 (off) or from 2 to 64';
    END IF;
    -- (folds what the stripes hold back into the account)
    PERFORM credits_internal._lock_account(p_account, credits.now());
    DELETE FROM credits.stripes s WHERE s.account_id = p_account AND s.stripe >= p_stripes;
    INSERT INTO credits.stripes (account_id, stripe)
    SELECT p_account, g FROM generate_series(0, p_stripes - 1) g
    ON CONFLICT DO NOTHING;
    UPDATE credits.accounts a SET stripes = p_stripes WHERE a.account_id = p_account;
END
$$;

GRANT EXECUTE ON FUNCTION credits.set_stripes(text, integer) TO credits_admin;
COMMENT ON FUNCTION credits.set_stripes(text, integer) IS
'Spread an account''s debits over 2 to 64 stripes (0: off), for an account many sessions debit at once: a debit locks a free stripe instead of the account row. Decisions stay exact. Admin.';
COMMENT ON TABLE credits.stripes IS 'The stripes of striped accounts (set_stripes): budgets of their allowance that debits spend without locking the account row.';
COMMENT ON COLUMN credits.accounts.stripes IS 'Stripes its debits spread over (set_stripes), 0 for none.';
COMMENT ON COLUMN credits.accounts.stripe_budget IS 'Allowance handed to its stripes, counted in daily_used and monthly_used until what they did not spend is folded back.';
COMMENT ON COLUMN credits.stripes.account_id IS 'The account.';
COMMENT ON COLUMN credits.stripes.stripe IS 'Its number, from 0.';
COMMENT ON COLUMN credits.stripes.day IS 'The UTC day its budget counts in.';
COMMENT ON COLUMN credits.stripes.month IS 'The UTC month its budget counts in.';
COMMENT ON COLUMN credits.stripes.budget IS 'Allowance the account handed it.';
COMMENT ON COLUMN credits.stripes.spent IS 'Debited from the budget.';
COMMENT ON COLUMN credits.stripes.last_at IS 'The instant of its latest debit.';

-- Scale-out on Citus (issue 19): credits.distribute() and what a
-- distributed install needs (src/distributed/): events take ids from a
-- plain sequence (an identity column's cannot get the node bits), no whole
-- row of a table passed to a function inside a query, joins of the ledger
-- on account_id too, verify()'s per-account part as a view each node runs
-- on its shards, and what does not run distributed yet refused with UC014.
DO $$
DECLARE
    v_last   bigint;
    v_called boolean;
BEGIN
    SELECT s.last_value, s.is_called INTO v_last, v_called FROM credits.events_event_id_seq s;
    -- (out of the extension first, which also takes it off the list of
    -- what pg_dump dumps, then dropped with the identity)
    ALTER EXTENSION credits DROP SEQUENCE credits.events_event_id_seq;
    ALTER TABLE credits.events ALTER COLUMN event_id DROP IDENTITY;
    CREATE SEQUENCE credits.events_event_id_seq AS bigint OWNED BY credits.events.event_id;
    PERFORM setval('credits.events_event_id_seq', v_last, v_called);
    ALTER TABLE credits.events ALTER COLUMN event_id SET DEFAULT nextval('credits.events_event_id_seq');
END
$$;
SELECT pg_catalog.pg_extension_config_dump('credits.events_event_id_seq', '');
REVOKE ALL ON SEQUENCE credits.events_event_id_seq FROM PUBLIC;

-- Time only moves forward per account (SPEC §4.6): a call whose clock is
-- behind the account (a transaction that began before 00:00 UTC and reaches
-- an account another session already rolled over, or one that began before
-- the last write to the account; a clock set back) is counted at the
-- account's time: the start of its windows or its last write, whichever is
-- later, and its ledger entry is stamped there. So no call reopens a closed
-- window or un-expires a hold, and an account's entries are in time order.
-- Every call that locks an account (_lock_account) and the debit fast path
-- set last_at to the time they decide at.
CREATE OR REPLACE FUNCTION credits_internal._time_of(p_last_at timestamptz, p_day date, p_month date, p_now timestamptz)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN greatest(p_now, p_last_at, p_day::timestamp AT TIME ZONE 'UTC', p_month::timestamp AT TIME ZONE 'UTC');

-- (of a row; _time_of for a statement that writes the row: Citus cannot
-- ship a whole row of a distributed table to a function)
CREATE OR REPLACE FUNCTION credits_internal._account_now(a credits.accounts, p_now timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN credits_internal._time_of(a.last_at, a.day, a.month, p_now);

-- A new id on a Citus cluster (the default distribute() gives ledger and
-- events ids): the sequence's next value with the node's group in the low
-- 16 bits, so that nodes never make the same id (each node has its own
-- sequence; Citus gives extension sequences no ranges of their own). The
-- code below SQL makes ledger ids the same way (Schema::next_entry_id).
CREATE OR REPLACE FUNCTION credits_internal._next_id(p_sequence regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (nextval(p_sequence) << 16) | (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g);
END
$$;

-- Is this install distributed (credits.accounts a Citus table)? From the
-- session's cache of the schema (src/distributed/shards.rs): cheap enough
-- for every write to ask.
CREATE OR REPLACE FUNCTION credits_internal._distributed() RETURNS boolean
LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'credits_distributed';

-- Moves this node's sequence so that every value it gives from now on is
-- above p_past; never back, which would give values again. (setval is not
-- atomic with the read that decides it: values other sessions take between
-- the two would be given again if setval moved the sequence to below them.
-- So the sequence moves by nextval, which is atomic, across a gap of up to
-- 100,000; only a wider gap is jumped with setval, which to go back would
-- need 100,000 values taken on this node between two statements of this
-- function. Jumps on a node are serialized.)
CREATE OR REPLACE FUNCTION credits_internal._advance_sequence(p_sequence regclass, p_past bigint) RETURNS void
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

-- On Citus, before a write makes ids for an account: each node makes ids
-- from its own sequence (_next_id), so this node's may be behind the
-- account's last entry or event, made on another node (the coordinator, a
-- node the account's shard moved from). The sequence is moved past them,
-- so that an account's ids increase with its entries.
CREATE OR REPLACE FUNCTION credits_internal._follow_history(p_account text) RETURNS void
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
CREATE OR REPLACE FUNCTION credits_internal._cluster_candidate(p_sequence regclass, p_above bigint, p_wait interval,
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
CREATE OR REPLACE FUNCTION credits_internal._cluster_sequence_max(p_sequence regclass) RETURNS bigint
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
CREATE OR REPLACE FUNCTION credits_internal._on_workers(p_what text, p_command text, p_only text DEFAULT NULL)
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
CREATE OR REPLACE FUNCTION credits_internal._sequence_past(p_sequence regclass, p_past bigint, p_wait interval) RETURNS jsonb
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
CREATE OR REPLACE FUNCTION credits_internal._workers_settled(p_at_nodes jsonb, p_wait interval) RETURNS boolean
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

-- Is the install distributed and the account's shards on another node?
CREATE OR REPLACE FUNCTION credits_internal._elsewhere(p_account text) RETURNS boolean
LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'credits_elsewhere';

-- A debit on the account's node, called there through a query on the
-- account's row (credits_internal._debit, away from the node): the query
-- runs on the node in the caller's distributed transaction, where this
-- makes the debit as a call there would (fast path first). Citus refuses
-- queries on distributed tables from inside a query on a shard unless told
-- it may: they are the account's own, on this shard, which the query holds.
CREATE OR REPLACE FUNCTION credits_internal._debit_there(p_account text, p_feature text, p_quantity numeric, p_key text,
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

-- check() on the account's node, called there through a query on the
-- account's row (credits.check away from the node), as _debit_there.
CREATE OR REPLACE FUNCTION credits_internal._check_there(p_account text, p_feature text, p_quantity numeric)
RETURNS TABLE (allowed boolean, cost numeric, available numeric, limiting_window text, resets_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET citus.allow_nested_distributed_execution = on AS $$
BEGIN
    RETURN QUERY SELECT c.* FROM credits."check"(p_account, p_feature, p_quantity) c;
END
$$;

-- UC014 for what does not run on a distributed install yet (docs/citus.md).
CREATE OR REPLACE FUNCTION credits_internal._refuse_distributed(p_what text) RETURNS void
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
CREATE OR REPLACE FUNCTION credits_internal._distributed_tables() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['accounts', 'ledger', 'grants', 'grant_draws', 'month_allowances', 'holds', 'events',
                 'closed_windows', 'idempotency', 'stripes', 'usage_rollup']
$$;

-- The public functions that act on one account, delegated by Citus to the
-- node holding it (their first argument is the account). Not the SQL
-- wrappers the planner inlines (most double precision forms): they become
-- calls of the numeric forms, which are delegated.
CREATE OR REPLACE FUNCTION credits_internal._delegated_functions() RETURNS regprocedure[]
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
CREATE OR REPLACE FUNCTION credits_internal._prepare_distribution(p_first_id bigint, p_rolled_through bigint, p_worker boolean)
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
CREATE OR REPLACE FUNCTION credits_internal._display_of(p_account text)
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

GRANT EXECUTE ON FUNCTION credits_internal._display_of(text) TO credits_reader, credits_admin;

-- balance: the usage display of one account now (see _display).
CREATE OR REPLACE FUNCTION balance(account_id text)
RETURNS TABLE (plan text, daily_limit numeric, daily_used numeric, daily_remaining numeric,
               monthly_limit numeric, monthly_used numeric, monthly_remaining numeric,
               granted_remaining numeric, reserved numeric, available numeric,
               next_daily_reset timestamptz, next_monthly_reset timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- (on Citus, away from the account's node, as inside a transaction on
    -- the coordinator: the whole balance on the node, in one round trip,
    -- through a query on the account's row, as credits_internal._debit does)
    IF credits_internal._elsewhere(balance.account_id) THEN
        RETURN QUERY SELECT d.* FROM credits.accounts a CROSS JOIN LATERAL credits_internal._display_of(a.account_id) d
                      WHERE a.account_id = balance.account_id;
        IF NOT FOUND THEN
            PERFORM credits_internal._raise_unknown_account(balance.account_id);
        END IF;
        RETURN;
    END IF;
    RETURN QUERY SELECT d.* FROM credits_internal._display(credits_internal._account(balance.account_id)) d;
END
$$;

-- UC014 unless this is a Citus coordinator every node of which has credits
-- at this version.
CREATE OR REPLACE FUNCTION credits_internal._check_citus() RETURNS void
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
CREATE OR REPLACE FUNCTION credits_internal._progress(p_level text, p_message text) RETURNS void
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
CREATE OR REPLACE FUNCTION distribute() RETURNS SETOF text
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

-- subscribe: create the account on a plan, or change its plan (SPEC rule 5, §4.1).
--   New account: the plan's full allowance whatever the day (rule 4, no proration).
--   Upgrade (a monthly limit larger than every limit the account held this
--     calendar month): a fresh window of the new plan's full allowance starts
--     now; what was left of the old one is forfeited and recorded in the
--     ledger ('F'), never added; what open holds hold of it is forfeited
--     as they resolve, for what they do not use (a later settle charges the
--     new window).
--   Any other move (a downgrade, a lateral move, a return to a level already
--     held this month) grants nothing: the window's usage becomes everything
--     the account used from allowances this month, so free -> pro -> free or
--     pro -> free -> pro never yields a second allowance;
--     remaining = max(0, new limit - used).
--   fresh_allowance overrides the choice: true when the caller's billing
--     system charged the change as a new period, false when it did not.
--   Every change restarts the window's refunds (a refund of a debit made
--     before it does not go back to the allowance) and its events.
--   Purchased credits carry over to plans that may buy, and lapse otherwise.
--   Subscribing to the current plan changes nothing.
--   idempotency_key: a billing webhook retried takes effect once (a retry
--     of an old change after a newer one changes nothing); the key is kept
--     with the plan-change entry that answers it.
CREATE OR REPLACE FUNCTION subscribe(account_id text, plan text, fresh_allowance boolean DEFAULT NULL,
                          idempotency_key text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_account   text := subscribe.account_id;
    p_plan      text := subscribe.plan;
    p_fresh     boolean := subscribe.fresh_allowance;
    p_key       text := subscribe.idempotency_key;
    v_request   uuid;
    v_now       timestamptz := credits.now();
    v_month     date;
    v_new       credits.plans;
    v_acct      credits.accounts;
    v_old       credits_internal._account_state;
    v_held      credits.month_allowances;
    v_purchased numeric;
    v_new_limit numeric;
    v_peak      numeric;
    v_before    numeric;
    v_upgrade   boolean;
    v_used      numeric;
    v_forfeit   numeric;
    v_entry     bigint;
BEGIN
    PERFORM credits_internal._check_text(p_account, 'account_id');
    PERFORM credits_internal._check_text(p_plan, 'plan');
    SELECT * INTO v_new FROM credits.plans p WHERE p.plan = p_plan;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown plan: %', quote_literal(p_plan) USING ERRCODE = 'UC003',
            HINT = 'Plans are listed in credits.plans.';
    END IF;
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._check_text(p_key, 'idempotency_key');
        v_request := credits_internal._fingerprint('subscribe', p_plan, p_fresh::text);
    END IF;

    INSERT INTO credits.accounts AS a (account_id, plan, created_at, day, month, last_at)
    VALUES (p_account, p_plan, v_now, credits_internal._utc_day(v_now), credits_internal._utc_month(v_now), v_now)
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        IF credits_internal._distributed() THEN
            PERFORM credits_internal._follow_history(p_account);  -- (this node may make ids: _lock_account)
        END IF;
        INSERT INTO credits.ledger (account_id, at, kind, amount, metadata)
        VALUES (p_account, v_now, 'S', 0,
                jsonb_build_object('plan', p_plan, 'purchased', 0, 'limit', v_new.monthly_allowance))
        RETURNING entry_id INTO v_entry;
        IF p_key IS NOT NULL THEN
            PERFORM credits_internal._remember_key(p_account, p_key, v_entry, v_request);
        END IF;
        RETURN;
    END IF;

    v_acct := credits_internal._lock_account(p_account, v_now);
    v_now := v_acct.last_at;  -- the account's time (_lock_account)
    v_month := credits_internal._utc_month(v_now);
    IF p_key IS NOT NULL AND credits_internal._replay(p_account, p_key, v_request) IS NOT NULL THEN
        RETURN;
    END IF;
    IF v_acct.plan = p_plan THEN
        IF p_key IS NOT NULL THEN
            -- (answered by the entry that put the account on this plan)
            PERFORM credits_internal._remember_key(p_account, p_key,
                (SELECT max(l.entry_id) FROM credits.ledger l WHERE l.account_id = p_account AND l.kind = 'S'),
                v_request);
        END IF;
        RETURN;
    END IF;
    v_old := credits_internal._state(v_acct, v_now);
    v_purchased := CASE WHEN v_new.may_purchase THEN v_acct.purchased ELSE 0 END;
    v_new_limit := v_new.monthly_allowance + v_purchased;
    -- Every limit held this month: the current one, and the largest recorded.
    SELECT * INTO v_held FROM credits.month_allowances m
     WHERE m.account_id = p_account AND m.month = v_month;
    v_peak := greatest(v_old.monthly_limit, v_held.peak_limit);
    v_before := coalesce(v_held.used_before, 0);
    v_upgrade := coalesce(p_fresh, v_new_limit > v_peak);

    IF v_upgrade THEN
        -- (what this month's open holds hold stays theirs: a hold keeps what
        -- it reserved; what it does not use is forfeited when it resolves)
        v_forfeit := greatest(0, v_old.monthly_limit - v_old.monthly_used - v_old.reserved_allowance);
        IF v_forfeit > 0 THEN
            INSERT INTO credits.ledger (account_id, at, kind, amount, metadata)
            VALUES (p_account, v_now, 'F', v_forfeit,
                    jsonb_build_object('reason', 'upgrade', 'plan', v_acct.plan));
        END IF;
    END IF;
    v_used := CASE WHEN v_upgrade THEN 0 ELSE v_before + v_old.monthly_used END;

    INSERT INTO credits.ledger (account_id, at, kind, amount, metadata)
    VALUES (p_account, v_now, 'S', 0,
            jsonb_strip_nulls(jsonb_build_object(
                'plan', p_plan, 'from', v_acct.plan, 'upgrade', v_upgrade, 'purchased', v_purchased,
                'limit', v_new_limit, 'from_limit', v_old.monthly_limit, 'monthly_used', v_used,
                'fresh_allowance', p_fresh)))
    RETURNING entry_id INTO v_entry;

    UPDATE credits.accounts a
       SET plan = p_plan,
           purchased = v_purchased,
           month = v_month,
           monthly_used = v_used,
           monthly_epoch = v_entry
     WHERE a.account_id = p_account;
    PERFORM credits_internal._record_month(p_account, v_month, greatest(v_peak, v_new_limit),
                                  CASE WHEN v_upgrade THEN v_before + v_old.monthly_used ELSE 0 END);
    PERFORM credits_internal._after_write(p_account, v_now, v_entry, v_old);
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._remember_key(p_account, p_key, v_entry, v_request);
    END IF;
END
$$;

-- A window's reset event, emitted when closing it (src/maintenance/close.rs).
CREATE OR REPLACE FUNCTION credits_internal._emit_reset(p_account text, p_window text, p_at timestamptz) RETURNS void
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

-- Expire, for locked accounts, the holds and grants whose deadline is at or
-- before `at`: holds are freed ('X', reason expired), grants with credits
-- left are closed by an 'E' entry, both stamped at their deadline whoever
-- sees it first. Each resolves once. An account a grant's expiry leaves
-- with nothing available gets an exhausted event. Returns how many.
CREATE OR REPLACE FUNCTION credits_internal._expire_due(p_accounts text[], p_at timestamptz) RETURNS integer
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    v_n       integer := 0;
    v_account text;
    v_hold    credits.holds;
    v_holds   credits.holds[];
    v_grant   credits.grants;
    v_entry   bigint;
    v_entries bigint[];
    v_last    bigint;
    v_freed   numeric;
    v_acct    credits.accounts;
    v_state   credits_internal._account_state;
BEGIN
    -- An account at a time, every statement on its rows alone (on Citus:
    -- on its shard, where Citus routes each).
    FOREACH v_account IN ARRAY p_accounts LOOP
        -- Holds: freed ('X'), then what each kept aside of a month that has
        -- closed, or of an allowance an upgrade has replaced since, is
        -- forfeited (_hold_resolved).
        v_holds := '{}';
        v_entries := '{}';
        v_freed := 0;
        FOR v_hold IN SELECT * FROM credits.holds h
                       WHERE h.account_id = v_account AND h.resolved_entry IS NULL AND h.expires_at <= p_at
                       ORDER BY h.hold_id LOOP
            INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, ref, metadata)
            VALUES (v_account, v_hold.expires_at, 'X', v_hold.feature_id, v_hold.amount, v_hold.hold_id,
                    '{"reason": "expired"}')
            RETURNING entry_id INTO v_entry;
            UPDATE credits.holds h SET resolved_entry = v_entry
             WHERE h.account_id = v_account AND h.hold_id = v_hold.hold_id;
            v_holds := v_holds || v_hold;
            v_entries := v_entries || v_entry;
            v_freed := v_freed + v_hold.amount;
        END LOOP;
        IF v_freed > 0 THEN
            UPDATE credits.accounts a SET reserved = a.reserved - v_freed WHERE a.account_id = v_account;
        END IF;
        FOR i IN 1 .. coalesce(array_length(v_holds, 1), 0) LOOP
            PERFORM credits_internal._hold_resolved(v_holds[i], v_entries[i], 0, 0, p_at);
        END LOOP;
        v_n := v_n + coalesce(array_length(v_holds, 1), 0);

        -- Grants: what is left expires ('E'); one that ran its account out
        -- (its last expiry entry) makes an exhausted event.
        v_last := NULL;
        FOR v_grant IN SELECT * FROM credits.grants g
                        WHERE g.account_id = v_account AND g.expired_entry IS NULL AND g.expires_at <= p_at
                        ORDER BY g.expires_at, g.grant_id LOOP
            v_entry := 0;
            IF v_grant.remaining > 0 THEN
                INSERT INTO credits.ledger (account_id, at, kind, amount, ref, metadata)
                VALUES (v_account, v_grant.expires_at, 'E', v_grant.remaining, v_grant.grant_id,
                        jsonb_build_object('grant_kind', v_grant.kind))
                RETURNING entry_id INTO v_entry;
                v_last := v_entry;
            END IF;
            UPDATE credits.grants g SET expired_entry = v_entry
             WHERE g.account_id = v_account AND g.grant_id = v_grant.grant_id;
            v_n := v_n + 1;
        END LOOP;
        IF v_last IS NOT NULL THEN
            SELECT * INTO v_acct FROM credits.accounts ac WHERE ac.account_id = v_account;
            v_state := credits_internal._state(v_acct, p_at);
            IF v_state.allowance_available + v_state.grants_available = 0 THEN
                PERFORM credits_internal._emit(v_acct, 'exhausted', 'monthly', NULL, p_at, v_state, v_last);
            END IF;
        END IF;
    END LOOP;
    RETURN v_n;
END
$$;

-- history: an account's transactions, newest first, as its customer reads
-- them. Keyset-paginated: pass the last entry_id of a page as before_entry
-- for the next one (max_rows 1 to 1000).
--   kind     the entry as a word: plan, purchase, purchase_reduction, grant,
--            debit, refund, hold, release, hold_expiry, forfeit, expiry, void;
--   amount   credits, always positive (what the kind says happened to them);
--   plan     the plan a plan entry moved the account to;
--   from_grants  the part of a debit or refund drawn from / given back to grants;
--   day, month   the UTC windows a debit, refund or hold counted in (a
--            settle: its hold's; a refund: its debit's); for other kinds the
--            month of the entry (a month-end forfeit: the month it ended);
--   ref      the debit a refund refunds, the hold a settle, release or
--            hold_expiry resolves, the grant an expiry or void ends;
--   reason   the reason given (a refund's, a void's) or recorded (a
--            forfeit's: month_end, upgrade, hold; a release's);
--   metadata the application's metadata of a debit.
CREATE OR REPLACE FUNCTION history(account_id text, before_entry bigint DEFAULT NULL, max_rows integer DEFAULT 50)
RETURNS TABLE (entry_id bigint, at timestamptz, kind text, feature text, product text, amount numeric,
               from_grants numeric, plan text, day date, month date, ref bigint, reason text, metadata jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM credits_internal._account($1);
    IF max_rows IS NULL OR max_rows < 1 OR max_rows > 1000 THEN
        RAISE EXCEPTION 'invalid max_rows: %', coalesce(max_rows::text, 'NULL')
            USING ERRCODE = 'UC009', DETAIL = 'max_rows must be between 1 and 1000';
    END IF;
    RETURN QUERY
    SELECT l.entry_id, l.at, credits_internal._kind_word(l.kind, l.metadata), f.feature, f.product,
           trim_scale(abs(l.amount)), trim_scale(l.from_grants),
           CASE WHEN l.kind = 'S' THEN l.metadata ->> 'plan' END,
           CASE WHEN l.kind IN ('D', 'R', 'H') THEN credits_internal._utc_day(coalesce(h.at, d.at, l.at)) END,
           CASE WHEN l.kind IN ('D', 'R', 'H') THEN credits_internal._utc_month(coalesce(h.at, d.at, l.at))
                ELSE credits_internal._report_month(l.kind, l.at, l.metadata) END,
           l.ref,
           CASE WHEN l.kind IN ('F', 'R', 'E', 'X') THEN l.metadata ->> 'reason' END,
           CASE WHEN l.kind = 'D' THEN l.metadata END
      FROM credits.ledger l
      LEFT JOIN credits.features f ON f.feature_id = l.feature_id
      -- the instant whose windows it counted in: a settle's hold, a refund's
      -- debit (or its hold)
      LEFT JOIN credits.ledger d ON l.kind = 'R' AND d.account_id = l.account_id AND d.entry_id = l.ref
      LEFT JOIN credits.ledger h ON l.kind IN ('D', 'R') AND h.kind = 'H' AND h.account_id = l.account_id
                                AND h.entry_id = CASE l.kind WHEN 'D' THEN l.ref ELSE d.ref END
     WHERE l.account_id = $1 AND l.entry_id < coalesce(before_entry, 9223372036854775807)
     ORDER BY l.entry_id DESC
     LIMIT max_rows;
END
$$;

-- grants: each grant of an account, newest first: its kind, amount, what is
-- left to use, when it expires and its status (active, used, expired, void).
CREATE OR REPLACE FUNCTION grants(account_id text)
RETURNS TABLE (grant_id bigint, kind text, amount numeric, remaining numeric, expires_at timestamptz,
               granted_at timestamptz, status text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now timestamptz;
    v_acct credits.accounts;
BEGIN
    v_acct := credits_internal._account($1);
    v_now := credits_internal._reader_now(v_acct, credits.now());
    RETURN QUERY
    SELECT g.grant_id, g.kind, trim_scale(g.amount), trim_scale(u.remaining), g.expires_at, l.at, u.status
      FROM credits.grants g
      JOIN credits.ledger l ON l.account_id = g.account_id AND l.entry_id = g.grant_id
      LEFT JOIN credits.ledger e ON e.account_id = g.account_id AND e.entry_id = g.expired_entry
      CROSS JOIN LATERAL (
          SELECT CASE WHEN e.metadata ? 'void' THEN 'void'
                      WHEN g.expired_entry IS NOT NULL OR g.expires_at <= v_now THEN 'expired'
                      WHEN g.remaining = 0 THEN 'used'
                      ELSE 'active' END AS status) st
      CROSS JOIN LATERAL (
          SELECT st.status, CASE WHEN st.status IN ('active', 'used') THEN g.remaining ELSE 0 END AS remaining) u
     WHERE g.account_id = $1
     ORDER BY g.grant_id DESC;
END
$$;

-- The ledger's totals per account, reporting month, kind and feature for
-- the entries after `p_after` up to `p_upto`: what usage_rollup adds up
-- (_refresh_rollups) and what verify() checks it against.
CREATE OR REPLACE FUNCTION credits_internal._ledger_totals(p_after bigint, p_upto bigint)
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

-- The worker's rollup step: like _refresh_rollups, but an error is recorded
-- in rollup_state (and the server log) instead of ending the worker.
-- (pinned search_path: see _worker_step)
CREATE OR REPLACE FUNCTION credits_internal._worker_rollups(p_max bigint, p_wait interval) RETURNS bigint
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
CREATE OR REPLACE PROCEDURE refresh_rollups(batch bigint DEFAULT 1000000, wait interval DEFAULT '1 minute')
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

-- The worker's step: like _maintenance_step, but an error is recorded in
-- maintenance_state (and the server log) instead of ending the worker, which
-- retries after `p_retry` seconds: returns -p_retry.
-- (The worker runs as the bootstrap superuser: every name it resolves, in
-- the exception handler too, comes from pg_catalog, never from a schema a
-- user can create objects in.)
CREATE OR REPLACE FUNCTION credits_internal._worker_step(p_batch integer, p_retry double precision) RETURNS double precision
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._maintenance_step(credits.now(), p_batch);
EXCEPTION WHEN OTHERS THEN
    UPDATE credits.maintenance_state
       SET last_error = format('%s (SQLSTATE %s)', SQLERRM, SQLSTATE), last_error_at = clock_timestamp();
    RAISE WARNING 'credits maintenance: % (SQLSTATE %), retrying in % s', SQLERRM, SQLSTATE, p_retry;
    RETURN -p_retry;
END
$$;

-- The earliest instant at which something is or was due after `done_through`:
-- the next UTC day boundary, the next hold or grant deadline.
CREATE OR REPLACE FUNCTION credits_internal._next_due(p_done_through timestamptz) RETURNS timestamptz
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$  -- used by the status view
DECLARE
    -- the first deadline of a hold or grant not expired yet (on Citus, of
    -- this node's shards, read directly: every node expires its own)
    v_query text := $q$SELECT least((SELECT min(h.expires_at) FROM credits.holds h WHERE h.resolved_entry IS NULL),
                                    (SELECT min(g.expires_at) FROM credits.grants g
                                      WHERE g.expired_entry IS NULL AND g.expires_at IS NOT NULL))$q$;
    v_due   timestamptz := CASE WHEN p_done_through IS NULL THEN '-infinity'::timestamptz
                                ELSE (credits_internal._utc_day(p_done_through) + 1)::timestamp AT TIME ZONE 'UTC' END;
    v_some  timestamptz;
    v_sql   text;
BEGIN
    FOR v_sql IN SELECT credits_internal._on_local_shards(v_query) LOOP
        EXECUTE v_sql INTO v_some;
        v_due := least(v_due, v_some);
    END LOOP;
    RETURN v_due;
END
$$;

-- The accounts with a hold or grant past its deadline at `p_at`: up to
-- `p_batch` of each kind, the earliest deadlines first. On Citus, those of
-- this node's shards (read directly: every node expires its own).
CREATE OR REPLACE FUNCTION credits_internal._due_accounts(p_at timestamptz, p_batch integer) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- (one query: as it is on a single server, on each of this node's
    -- shard groups on Citus)
    v_query text := $q$SELECT ARRAY((SELECT h.account_id FROM credits.holds h
                                      WHERE h.resolved_entry IS NULL AND h.expires_at <= $1
                                      ORDER BY h.expires_at LIMIT $2)
                                    UNION
                                    (SELECT g.account_id FROM credits.grants g
                                      WHERE g.expired_entry IS NULL AND g.expires_at <= $1
                                      ORDER BY g.expires_at LIMIT $2))$q$;
    v_due   text[] := '{}';
    v_some  text[];
    v_sql   text;
BEGIN
    FOR v_sql IN SELECT credits_internal._on_local_shards(v_query) LOOP
        EXECUTE v_sql INTO v_some USING p_at, p_batch;
        v_due := v_due || v_some;
    END LOOP;
    RETURN v_due;
END
$$;

-- Of the accounts `p_ids`, those no other transaction holds, locked (for the
-- rest of the transaction), in key order; with `p_unstriped`, only those
-- with no budgets out on stripes. (On Citus an account at a time: Citus
-- locks rows of one shard per statement.)
CREATE OR REPLACE FUNCTION credits_internal._lock_free(p_ids text[], p_unstriped boolean) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_free text[] := '{}';
    v_one  text;
BEGIN
    IF NOT credits_internal._distributed() THEN
        RETURN ARRAY(SELECT a.account_id FROM credits.accounts a
                      WHERE a.account_id = ANY (p_ids) AND (NOT p_unstriped OR a.stripe_budget = 0)
                      ORDER BY a.account_id
                        FOR UPDATE SKIP LOCKED);
    END IF;
    FOR v_one IN SELECT DISTINCT x FROM unnest(p_ids) x ORDER BY x LOOP
        -- (one whose shards moved away since: its new node's maintenance takes it)
        CONTINUE WHEN credits_internal._elsewhere(v_one);
        PERFORM FROM credits.accounts a
          WHERE a.account_id = v_one AND (NOT p_unstriped OR a.stripe_budget = 0)
            FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            -- (this node's ids past the account's, as _lock_account makes them)
            PERFORM credits_internal._follow_history(v_one);
            v_free := v_free || v_one;
        END IF;
    END LOOP;
    RETURN v_free;
END
$$;

-- run_maintenance: do everything due at `at` (default credits.now()) now,
-- committing after each batch; a NOTICE reports progress. Idempotent: a
-- second call for the same instant finds nothing due. Call it outside a
-- transaction block (CALL credits.run_maintenance()), by hand or from pg_cron.
CREATE OR REPLACE PROCEDURE run_maintenance(at timestamptz DEFAULT NULL)
-- (No SET search_path: a procedure with one cannot COMMIT. Every name is qualified.)
LANGUAGE plpgsql AS $$
DECLARE
    v_at    timestamptz := coalesce(run_maintenance.at, credits.now());
    v_batch integer := coalesce(nullif(pg_catalog.current_setting('credits.maintenance_batch_size', true), ''), '2000')::integer;
    v_steps integer := 0;
BEGIN
    -- (each batch is idempotent, so it commits without waiting for the WAL flush)
    WHILE pg_catalog.set_config('synchronous_commit', 'off', true) IS NOT NULL
          AND credits_internal._maintenance_step(v_at, v_batch) = 0 LOOP
        COMMIT;
        v_steps := v_steps + 1;
        IF v_steps % 10 = 0 THEN
            RAISE NOTICE '%', credits_internal._maintenance_progress();
        END IF;
    END LOOP;
    COMMIT;
    RAISE NOTICE '%', credits_internal._maintenance_progress();
END
$$;

-- (the double precision check, not inlined: src/metering/float_amounts.sql)
CREATE OR REPLACE FUNCTION credits."check"(account_id text, feature text, quantity double precision)
RETURNS TABLE (allowed boolean, cost numeric, available numeric, limiting_window text, resets_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM credits."check"(account_id, feature, credits_internal._from_float8(quantity, 'quantity'));
END;

-- Account forms of the calls that take an entry or hold id (delegated on
-- Citus): refund_for, settle_for, release_for, void_grant_for.
DROP FUNCTION credits_internal._take_hold(bigint, timestamptz, numeric);
DROP FUNCTION credits_internal._release(bigint);
DROP FUNCTION credits_internal._raise_wrong_entry(bigint, text);

-- UC011: the entry a call names is not of the kind it acts on (or, with
-- an account, not one of its entries).
CREATE OR REPLACE FUNCTION credits_internal._raise_wrong_entry(p_entry bigint, p_wanted text, p_account text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_kind text := (SELECT credits_internal._kind_word(l.kind, l.metadata) FROM credits.ledger l
                     WHERE l.entry_id = p_entry AND (p_account IS NULL OR l.account_id = p_account));
BEGIN
    RAISE EXCEPTION 'entry % is not %: %', p_entry, p_wanted || coalesce(' of account ' || quote_literal(p_account), ''),
                    coalesce('it is a ' || v_kind,
                             CASE WHEN p_account IS NULL THEN 'no entry has that id' ELSE 'the account has no entry with that id' END)
        USING ERRCODE = 'UC011',
              DETAIL = (jsonb_build_object('entry_id', p_entry, 'kind', v_kind)
                        || CASE WHEN p_account IS NOT NULL THEN jsonb_build_object('account_id', p_account)
                                ELSE '{}' END)::text;
END
$$;

-- Lock the account of an open hold and free the hold, for a settle of
-- `p_settle` (NULL: a release). A hold resolves at most once: one already
-- resolved the same way (settled for the same amount, or released) comes
-- back with its resolving entry, which the caller returns (a retry gets the
-- first result); anything else is UC008 (unknown, or resolved otherwise:
-- settled for another amount, released, expired). A hold taken is marked
-- resolved by entry 0 until the caller writes the entry that resolves it
-- (so the account's state no longer counts it).
CREATE OR REPLACE FUNCTION credits_internal._take_hold(p_account text, p_hold bigint, p_now timestamptz, p_settle numeric)
RETURNS credits.holds
LANGUAGE plpgsql AS $$
DECLARE
    v_hold credits.holds;
    v_by   credits.ledger;
    v_how  text;
BEGIN
    IF p_hold IS NULL THEN
        RAISE EXCEPTION 'invalid hold_id: NULL' USING ERRCODE = 'UC009';
    END IF;
    IF p_account IS NULL THEN
        SELECT * INTO v_hold FROM credits.holds h WHERE h.hold_id = p_hold;
    ELSE
        SELECT * INTO v_hold FROM credits.holds h WHERE h.account_id = p_account AND h.hold_id = p_hold;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'hold % is not active: no hold has that id', p_hold
            USING ERRCODE = 'UC008', DETAIL = jsonb_build_object('hold_id', p_hold, 'state', 'unknown')::text;
    END IF;
    PERFORM credits_internal._lock_account(v_hold.account_id, p_now);  -- may expire it
    SELECT * INTO v_hold FROM credits.holds h WHERE h.account_id = v_hold.account_id AND h.hold_id = p_hold;
    IF v_hold.resolved_entry IS NOT NULL THEN
        SELECT * INTO v_by FROM credits.ledger l
         WHERE l.account_id = v_hold.account_id AND l.entry_id = v_hold.resolved_entry;
        v_how := CASE WHEN v_by.kind = 'D' THEN 'settled'
                      WHEN v_by.metadata ->> 'reason' = 'expired' THEN 'expired'
                      ELSE 'released' END;
        IF (v_how = 'settled' AND v_by.amount = p_settle) OR (v_how = 'released' AND p_settle IS NULL) THEN
            RETURN v_hold;
        END IF;
        RAISE EXCEPTION 'hold % is not active: already %', p_hold,
                        v_how || CASE WHEN v_how = 'settled' THEN ' for ' || trim_scale(v_by.amount) ELSE '' END
            USING ERRCODE = 'UC008',
                  DETAIL = jsonb_strip_nulls(jsonb_build_object(
                      'hold_id', p_hold, 'state', v_how, 'entry_id', v_by.entry_id,
                      'amount', CASE WHEN v_how = 'settled' THEN trim_scale(v_by.amount) END))::text;
    END IF;
    UPDATE credits.accounts a SET reserved = a.reserved - v_hold.amount WHERE a.account_id = v_hold.account_id;
    UPDATE credits.holds h SET resolved_entry = 0 WHERE h.account_id = v_hold.account_id AND h.hold_id = p_hold;
    v_hold.resolved_entry := NULL;
    RETURN v_hold;
END
$$;

-- Free a hold without charge: the release's entry ('X'); a hold already
-- released gives its release back.
CREATE OR REPLACE FUNCTION credits_internal._release(p_account text, p_hold bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_now   timestamptz := credits.now();
    v_hold  credits.holds;
    v_entry bigint;
BEGIN
    v_hold := credits_internal._take_hold(p_account, p_hold, v_now, NULL);
    IF v_hold.resolved_entry IS NOT NULL THEN
        RETURN v_hold.resolved_entry;
    END IF;
    v_now := (SELECT a.last_at FROM credits.accounts a WHERE a.account_id = v_hold.account_id);
    INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, ref, metadata)
    VALUES (v_hold.account_id, v_now, 'X', v_hold.feature_id, v_hold.amount, v_hold.hold_id, '{"reason": "release"}')
    RETURNING entry_id INTO v_entry;
    PERFORM credits_internal._hold_resolved(v_hold, v_entry, 0, 0, v_now);
    RETURN v_entry;
END
$$;

-- (the hold of the account `p_account`, or of any account when NULL)
CREATE OR REPLACE FUNCTION credits_internal._settle(p_account text, p_hold bigint, p_amount numeric) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now    timestamptz := credits.now();
    v_hold   credits.holds;
    v_acct   credits.accounts;
    v_state  credits_internal._account_state;
    v_own    numeric;  -- what the hold held on the allowance
    v_alloc  numeric;
    v_entry  bigint;
BEGIN
    IF p_amount = 0 THEN
        RETURN credits_internal._release(p_account, p_hold);
    END IF;
    PERFORM credits_internal._check_amount(p_amount, 'amount');
    p_amount := trim_scale(p_amount);
    v_hold := credits_internal._take_hold(p_account, p_hold, v_now, p_amount);
    IF v_hold.resolved_entry IS NOT NULL THEN
        RETURN v_hold.resolved_entry;
    END IF;
    SELECT * INTO v_acct FROM credits.accounts a WHERE a.account_id = v_hold.account_id;
    v_now := v_acct.last_at;  -- the account's time (_lock_account)
    v_state := credits_internal._state(v_acct, v_now);
    v_own := v_hold.amount - v_hold.from_grants;

    IF v_hold.day >= credits_internal._utc_day(v_now) THEN
        -- Its windows are the current ones: what it held is there again, and
        -- up to its amount it is charged whatever the limits say now.
        IF p_amount <= v_hold.amount THEN
            v_state.daily_available := greatest(v_state.daily_available, p_amount);
            v_state.allowance_available := greatest(v_state.allowance_available, least(p_amount, v_own));
        END IF;
        IF credits_internal._lacking_window(v_state, p_amount) IS NOT NULL THEN
            PERFORM credits_internal._raise_insufficient(p_amount,
                                                format('hold %s', v_hold.hold_id), v_state, v_now);
        END IF;
        v_entry := credits_internal._charge(v_hold.account_id, v_state, v_hold.feature_id, p_amount, NULL, v_hold.hold_id, v_now);
        PERFORM credits_internal._hold_resolved(v_hold, v_entry, p_amount, 0, v_now);
        PERFORM credits_internal._after_write(v_hold.account_id, v_now, v_entry, v_state);
        RETURN v_entry;
    END IF;

    -- Its day (and perhaps its month) has closed: at most its amount.
    IF p_amount > v_hold.amount THEN
        RAISE EXCEPTION 'insufficient credits: % needed for hold %, placed on %, a day that has closed: it settles for at most %',
                        p_amount, v_hold.hold_id, to_char(v_hold.day, 'YYYY-MM-DD'), trim_scale(v_hold.amount)
            USING ERRCODE = 'UC001',
                  -- (UC001's keys, those of an open window null: the window has closed)
                  DETAIL = jsonb_build_object('window', 'daily', 'limit', NULL, 'used', NULL, 'granted', NULL,
                                              'reserved', NULL, 'available', trim_scale(v_hold.amount),
                                              'needed', p_amount, 'resets_at', NULL,
                                              'day', v_hold.day, 'hold_id', v_hold.hold_id)::text,
                  HINT = 'Settle the hold for at most its amount and debit the rest.';
    END IF;
    v_alloc := least(p_amount, v_own);
    IF v_hold.month >= credits_internal._utc_month(v_now) THEN
        -- The month is current: the monthly allowance counts it now.
        v_state.allowance_available := greatest(v_state.allowance_available, v_alloc);
        IF p_amount > v_state.allowance_available + v_state.grants_available THEN
            PERFORM credits_internal._raise_insufficient(p_amount,
                                                format('hold %s', v_hold.hold_id), v_state, v_now);
        END IF;
        v_entry := credits_internal._charge(v_hold.account_id, v_state, v_hold.feature_id, p_amount, NULL, v_hold.hold_id,
                                   v_now, p_today => false);
        PERFORM credits_internal._hold_resolved(v_hold, v_entry, p_amount, 0, v_now);
    ELSE
        -- The month has closed too: its allowance part is charged there.
        IF p_amount - v_alloc > v_state.grants_available THEN
            RAISE EXCEPTION 'insufficient credits: % needed from grants for hold %, % available',
                            p_amount - v_alloc, v_hold.hold_id, trim_scale(v_state.grants_available)
                USING ERRCODE = 'UC001',
                      DETAIL = jsonb_build_object('window', 'monthly', 'limit', NULL, 'used', NULL,
                                                  'granted', trim_scale(v_state.granted_remaining),
                                                  'reserved', NULL, 'available', trim_scale(v_state.grants_available),
                                                  'needed', p_amount - v_alloc, 'resets_at', NULL,
                                                  'month', to_char(v_hold.month, 'YYYY-MM'),
                                                  'hold_id', v_hold.hold_id)::text,
                      HINT = 'The grants the hold was backed by have expired since.';
        END IF;
        INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, from_grants, ref)
        VALUES (v_hold.account_id, v_now, 'D', v_hold.feature_id, p_amount, nullif(p_amount - v_alloc, 0),
                v_hold.hold_id)
        RETURNING entry_id INTO v_entry;
        IF p_amount > v_alloc THEN
            PERFORM credits_internal._draw_grants(v_hold.account_id, v_entry, p_amount - v_alloc, v_now);
        END IF;
        PERFORM credits_internal._hold_resolved(v_hold, v_entry, p_amount, v_alloc, v_now);
    END IF;
    PERFORM credits_internal._after_write(v_hold.account_id, v_now, v_entry, v_state);
    RETURN v_entry;
END
$$;

-- settle: charge the actual amount of a hold (see the top of this file);
-- settle(hold, 0) is a release (and returns the release's entry).
-- settle_for takes the hold's account too (on Citus: delegated to its node).
CREATE OR REPLACE FUNCTION settle(hold_id bigint, amount numeric) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._settle(NULL, $1, $2);
END
$$;

CREATE OR REPLACE FUNCTION settle_for(account_id text, hold_id bigint, amount numeric) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM credits_internal._check_text($1, 'account_id');
    RETURN credits_internal._settle($1, $2, $3);
END
$$;

-- release: free a hold without charge (see the top of this file).
CREATE OR REPLACE FUNCTION release(hold_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM credits_internal._release(NULL, $1);
END
$$;

-- (release_for: with the hold's account; on Citus, delegated to its node)
CREATE OR REPLACE FUNCTION release_for(account_id text, hold_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM credits_internal._check_text($1, 'account_id');
    PERFORM credits_internal._release($1, $2);
END
$$;

-- (the entry of the account `p_account`, or of any account when NULL)
CREATE OR REPLACE FUNCTION credits_internal._refund(p_account text, p_entry bigint, p_amount numeric, p_reason text, p_key text)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_request uuid;
    v_now     timestamptz := credits.now();
    v_debit   credits.ledger;
    v_debit_at timestamptz;  -- the instant whose windows the debit counted in
    v_acct    credits.accounts;
    v_done    numeric;
    v_grants_done numeric;
    v_left    numeric;
    v_last    bigint;
    v_to_grants numeric;
    v_need    numeric;
    v_take    numeric;
    v_entry   bigint;
    g         record;
BEGIN
    IF p_entry IS NULL THEN
        RAISE EXCEPTION 'invalid entry_id: NULL' USING ERRCODE = 'UC009';
    END IF;
    IF p_amount IS NOT NULL THEN
        PERFORM credits_internal._check_amount(p_amount, 'amount');
        p_amount := trim_scale(p_amount);
    END IF;
    IF p_reason IS NOT NULL THEN
        PERFORM credits_internal._check_text(p_reason, 'reason');
    END IF;
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._check_text(p_key, 'idempotency_key');
    END IF;
    IF p_account IS NULL THEN
        SELECT * INTO v_debit FROM credits.ledger l WHERE l.entry_id = p_entry;
    ELSE
        SELECT * INTO v_debit FROM credits.ledger l WHERE l.account_id = p_account AND l.entry_id = p_entry;
    END IF;
    IF NOT FOUND OR v_debit.kind <> 'D' THEN
        PERFORM credits_internal._raise_wrong_entry(p_entry, 'a debit', p_account);
    END IF;
    v_acct := credits_internal._lock_account(v_debit.account_id, v_now);
    v_now := v_acct.last_at;  -- the account's time (_lock_account)
    IF p_key IS NOT NULL THEN
        v_request := credits_internal._fingerprint('refund', p_entry::text, p_amount::text, p_reason);
        v_entry := credits_internal._replay(v_debit.account_id, p_key, v_request);
        IF v_entry IS NOT NULL THEN
            RETURN v_entry;
        END IF;
    END IF;
    -- (a settle counted in the windows of its hold, SPEC §4.3)
    v_debit_at := coalesce((SELECT h.at FROM credits.ledger h
                             WHERE h.account_id = v_debit.account_id AND h.entry_id = v_debit.ref AND h.kind = 'H'),
                           v_debit.at);

    SELECT coalesce(sum(r.amount), 0), coalesce(sum(r.from_grants), 0), max(r.entry_id)
      INTO v_done, v_grants_done, v_last
      FROM credits.ledger r WHERE r.account_id = v_debit.account_id AND r.ref = p_entry AND r.kind = 'R';
    v_left := v_debit.amount - v_done;
    IF p_amount IS NULL THEN
        IF v_left = 0 THEN
            IF p_key IS NOT NULL THEN
                PERFORM credits_internal._remember_key(v_debit.account_id, p_key, v_last, v_request);
            END IF;
            RETURN v_last;
        END IF;
        p_amount := v_left;
    ELSIF p_amount > v_left THEN
        RAISE EXCEPTION 'refund of % exceeds what is left of debit %: %', p_amount, p_entry, trim_scale(v_left)
            USING ERRCODE = 'UC007',
                  DETAIL = jsonb_build_object('entry_id', p_entry, 'debited', trim_scale(v_debit.amount),
                                              'refunded', trim_scale(v_done), 'left', trim_scale(v_left))::text;
    END IF;

    v_to_grants := least(p_amount, coalesce(v_debit.from_grants, 0) - v_grants_done);
    PERFORM credits_internal._count('R', v_acct.plan, v_debit.feature_id);
    INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, from_grants, ref, metadata)
    VALUES (v_debit.account_id, v_now, 'R', v_debit.feature_id, p_amount, nullif(v_to_grants, 0), p_entry,
            CASE WHEN p_reason IS NOT NULL THEN jsonb_build_object('reason', p_reason) END)
    RETURNING ledger.entry_id INTO v_entry;

    -- Give back to the grants this debit drew from, latest-expiring first.
    -- (_lock_account recorded every grant past its deadline as expired.)
    v_need := v_to_grants;
    FOR g IN SELECT d.grant_id, sum(d.amount) AS net, gr.kind,
                    gr.expired_entry IS NOT NULL OR gr.expires_at <= v_now AS expired
               FROM credits.grant_draws d
               JOIN credits.grants gr ON gr.account_id = d.account_id AND gr.grant_id = d.grant_id
              WHERE d.account_id = v_debit.account_id
                AND (d.entry_id = p_entry
                     OR d.entry_id IN (SELECT r.entry_id FROM credits.ledger r
                                       WHERE r.account_id = d.account_id AND r.ref = p_entry AND r.kind = 'R'))
              GROUP BY d.grant_id, gr.expires_at, gr.kind, gr.expired_entry
             HAVING sum(d.amount) > 0
              ORDER BY gr.expires_at DESC NULLS FIRST, d.grant_id DESC
    LOOP
        EXIT WHEN v_need = 0;
        v_take := least(v_need, g.net);
        INSERT INTO credits.grant_draws (account_id, entry_id, grant_id, amount)
        VALUES (v_debit.account_id, v_entry, g.grant_id, -v_take);
        IF g.expired THEN
            -- Given back and expired at once: the grant stays as it expired.
            INSERT INTO credits.ledger (account_id, at, kind, amount, ref, metadata)
            VALUES (v_debit.account_id, v_now, 'E', v_take, g.grant_id,
                    jsonb_build_object('grant_kind', g.kind, 'refund', v_entry))
            RETURNING ledger.entry_id INTO v_last;
            INSERT INTO credits.grant_draws (account_id, entry_id, grant_id, amount)
            VALUES (v_debit.account_id, v_last, g.grant_id, v_take);
        ELSE
            UPDATE credits.grants gr SET remaining = gr.remaining + v_take
             WHERE gr.account_id = v_debit.account_id AND gr.grant_id = g.grant_id;
        END IF;
        v_need := v_need - v_take;
    END LOOP;

    UPDATE credits.accounts a
       SET daily_used = CASE WHEN a.day = credits_internal._utc_day(v_debit_at) AND a.day = credits_internal._utc_day(v_now)
                             THEN a.daily_used - p_amount ELSE a.daily_used END,
           monthly_used = CASE WHEN a.month = credits_internal._utc_month(v_debit_at) AND a.month = credits_internal._utc_month(v_now)
                                    AND p_entry > a.monthly_epoch
                               THEN a.monthly_used - (p_amount - v_to_grants) ELSE a.monthly_used END
     WHERE a.account_id = v_debit.account_id;
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._remember_key(v_debit.account_id, p_key, v_entry, v_request);
    END IF;
    RETURN v_entry;
END
$$;

-- refund: give back (part of) a debit to where it came from.
--   Grants first (they were drawn last), back to the very grants drawn
--   while they are still valid: a draw from a grant that has expired since
--   is recorded as expired at once ('E', SPEC §4.5), not restored;
--   then the allowance, back to the window of the debit: today's daily
--   window if the debit was today, this month's monthly window if the debit
--   was in it. A window that has since closed stays closed (no rollover):
--   that part is recorded in the ledger but not made available again.
--   amount NULL refunds what is left; repeating it returns the same entry.
--   idempotency_key (per account) makes a partial refund safe to retry.
--   refund_for takes the debit's account too: on Citus it is delegated to
--   the account's node, where refund(entry_id) looks the entry up on every
--   node first (docs/citus.md).
CREATE OR REPLACE FUNCTION refund(entry_id bigint, amount numeric DEFAULT NULL, reason text DEFAULT NULL,
                       idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._refund(NULL, $1, $2, $3, $4);
END
$$;

CREATE OR REPLACE FUNCTION refund_for(account_id text, entry_id bigint, amount numeric DEFAULT NULL, reason text DEFAULT NULL,
                           idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM credits_internal._check_text($1, 'account_id');
    RETURN credits_internal._refund($1, $2, $3, $4, $5);
END
$$;

-- (the grant of the account `p_account`, or of any account when NULL)
CREATE OR REPLACE FUNCTION credits_internal._void_grant(p_account text, p_entry bigint, p_reason text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now    timestamptz := credits.now();
    v_grant  credits.grants;
    v_acct   credits.accounts;
    v_state  credits_internal._account_state;
    v_gone   credits.ledger;
    v_entry  bigint;
BEGIN
    IF p_entry IS NULL THEN
        RAISE EXCEPTION 'invalid entry_id: NULL' USING ERRCODE = 'UC009';
    END IF;
    IF p_reason IS NOT NULL THEN
        PERFORM credits_internal._check_text(p_reason, 'reason');
    END IF;
    IF p_account IS NULL THEN
        SELECT * INTO v_grant FROM credits.grants g WHERE g.grant_id = p_entry;
    ELSE
        SELECT * INTO v_grant FROM credits.grants g WHERE g.account_id = p_account AND g.grant_id = p_entry;
    END IF;
    IF NOT FOUND THEN
        PERFORM credits_internal._raise_wrong_entry(p_entry, 'a grant', p_account);
    END IF;
    v_acct := credits_internal._lock_account(v_grant.account_id, v_now);  -- may expire it
    v_now := v_acct.last_at;  -- the account's time (_lock_account)
    SELECT * INTO v_grant FROM credits.grants g WHERE g.account_id = v_grant.account_id AND g.grant_id = p_entry;
    IF v_grant.expired_entry IS NOT NULL THEN
        SELECT * INTO v_gone FROM credits.ledger l
         WHERE l.account_id = v_grant.account_id AND l.entry_id = v_grant.expired_entry;
        IF v_gone.metadata ? 'void' THEN
            RETURN v_gone.entry_id;
        END IF;
        RAISE EXCEPTION 'grant % is not active: it expired at %', p_entry, credits_internal._utc_text(v_grant.expires_at)
            USING ERRCODE = 'UC012',
                  DETAIL = jsonb_build_object('grant_id', p_entry, 'state', 'expired',
                                              'entry_id', nullif(v_grant.expired_entry, 0),
                                              'expires_at', credits_internal._iso(v_grant.expires_at))::text;
    END IF;
    v_state := credits_internal._state(v_acct, v_now);
    INSERT INTO credits.ledger (account_id, at, kind, amount, ref, metadata)
    VALUES (v_grant.account_id, v_now, 'E', v_grant.remaining, p_entry,
            jsonb_strip_nulls(jsonb_build_object('grant_kind', v_grant.kind, 'void', true, 'reason', p_reason)))
    RETURNING ledger.entry_id INTO v_entry;
    UPDATE credits.grants g SET expired_entry = v_entry
     WHERE g.account_id = v_grant.account_id AND g.grant_id = p_entry;
    PERFORM credits_internal._after_write(v_grant.account_id, v_now, v_entry, v_state);
    RETURN v_entry;
END
$$;

-- void_grant: remove what is left of a grant (a promotion withdrawn, a
-- grant made by mistake), as an expiry would: an 'E' entry of what was
-- left, with the reason. Nothing given back to the grant afterwards (a
-- refund of a debit that drew on it) returns to it. Voiding it again returns
-- the same entry; a grant that has expired cannot be voided (UC012).
-- void_grant_for takes the grant's account too (on Citus: delegated to its node).
CREATE OR REPLACE FUNCTION void_grant(entry_id bigint, reason text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._void_grant(NULL, $1, $2);
END
$$;

CREATE OR REPLACE FUNCTION void_grant_for(account_id text, entry_id bigint, reason text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM credits_internal._check_text($1, 'account_id');
    RETURN credits_internal._void_grant($1, $2, $3);
END
$$;

GRANT EXECUTE ON FUNCTION
    credits.refund_for(text, bigint, numeric, text, text),
    credits.settle_for(text, bigint, numeric),
    credits.release_for(text, bigint)
TO credits_app, credits_admin;
GRANT EXECUTE ON FUNCTION credits.void_grant_for(text, bigint, text) TO credits_billing, credits_admin;
COMMENT ON FUNCTION credits.refund_for(text, bigint, numeric, text, text) IS
'refund of a debit of the given account (UC011 if it is not one): on Citus, delegated to the account''s node.';
COMMENT ON FUNCTION credits.settle_for(text, bigint, numeric) IS
'settle of a hold of the given account (UC008 if it has none by that id): on Citus, delegated to the account''s node.';
COMMENT ON FUNCTION credits.release_for(text, bigint) IS
'release of a hold of the given account (UC008 if it has none by that id): on Citus, delegated to the account''s node.';
COMMENT ON FUNCTION credits.void_grant_for(text, bigint, text) IS
'void_grant of a grant of the given account (UC011 if it is not one): on Citus, delegated to the account''s node.';
-- (their double precision forms: src/metering/float_amounts.sql)
CREATE FUNCTION credits.settle_for(account_id text, hold_id bigint, amount double precision)
RETURNS bigint LANGUAGE sql
RETURN credits.settle_for(account_id, hold_id, credits_internal._from_float8(amount, 'amount'));
CREATE FUNCTION credits.refund_for(account_id text, entry_id bigint, amount double precision, reason text DEFAULT NULL,
                           idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.refund_for(account_id, entry_id, credits_internal._from_float8(amount, 'amount'), reason,
                          idempotency_key);
GRANT EXECUTE ON FUNCTION
    credits.refund_for(text, bigint, double precision, text, text),
    credits.settle_for(text, bigint, double precision)
TO credits_app, credits_admin;
COMMENT ON FUNCTION credits.settle_for(text, bigint, double precision) IS
'settle_for with the amount as double precision.';
COMMENT ON FUNCTION credits.refund_for(text, bigint, double precision, text, text) IS
'refund_for with the amount as double precision.';

-- (usage_monthly and account_months find the month's plan with a LATERAL
-- subquery instead of credits_internal._plan_in, which Citus cannot run per
-- row: src/reporting/views.sql)
-- The plan an account was on at the end of a month (now, for the current
-- month) is its last plan change before the month ended: a LATERAL
-- subquery in the view (read with the view's rights, as every table here;
-- Citus runs it on the account's shard), the same in account_months.
CREATE OR REPLACE VIEW usage_monthly AS
SELECT m.*, p.plan
  FROM (SELECT u.account_id,
               u.month,
               f.product,
               f.feature,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'D'), 0) AS debited,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'R'), 0) AS refunded,
               coalesce(sum(CASE u.kind WHEN 'D' THEN u.amount ELSE -u.amount END), 0) AS net,
               coalesce(sum(u.entries) FILTER (WHERE u.kind = 'D'), 0) AS debits,
               coalesce(sum(u.entries) FILTER (WHERE u.kind = 'R'), 0) AS refunds
          FROM credits_internal._ledger_months u
          JOIN credits.features f ON f.feature_id = u.feature_id
         WHERE u.kind IN ('D', 'R')
         GROUP BY u.account_id, u.month, f.product, f.feature) m
  LEFT JOIN LATERAL (SELECT (l.metadata ->> 'plan') COLLATE "C" AS plan FROM credits.ledger l
                      WHERE l.account_id = m.account_id AND l.kind = 'S'
                        AND l.at < (m.month + interval '1 month')::timestamp AT TIME ZONE 'UTC'
                      ORDER BY l.entry_id DESC LIMIT 1) p ON true;

CREATE OR REPLACE VIEW account_months AS
SELECT m.*, p.plan
  FROM (SELECT u.account_id,
               u.month,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'D'), 0) AS debited,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'R'), 0) AS refunded,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'D'), 0)
                 - coalesce(sum(u.amount) FILTER (WHERE u.kind = 'R'), 0) AS net_usage,
               coalesce(sum(u.from_grants) FILTER (WHERE u.kind = 'D'), 0)
                 - coalesce(sum(u.from_grants) FILTER (WHERE u.kind = 'R'), 0) AS net_from_grants,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'F'), 0) AS forfeited,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'G'), 0) AS granted,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'P'), 0) AS purchased,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'E'), 0) AS expired
          FROM credits_internal._ledger_months u
         GROUP BY u.account_id, u.month) m
  LEFT JOIN LATERAL (SELECT (l.metadata ->> 'plan') COLLATE "C" AS plan FROM credits.ledger l
                      WHERE l.account_id = m.account_id AND l.kind = 'S'
                        AND l.at < (m.month + interval '1 month')::timestamp AT TIME ZONE 'UTC'
                      ORDER BY l.entry_id DESC LIMIT 1) p ON true;

DROP FUNCTION credits_internal._plan_in(text, date);

-- The problems verify() reports for the accounts, from their rows alone
-- (everything but the usage rollups): per account, joined on account_id
-- throughout, so that on Citus each node runs it on its shards
-- (credits_internal._verify_nodes).
CREATE OR REPLACE VIEW credits_internal._verify_problems AS
    WITH
    -- The latest plan entry says the plan and the purchases carried into it.
    last_plan AS (
        SELECT DISTINCT ON (l.account_id) l.account_id, l.entry_id, l.metadata
          FROM credits.ledger l
         WHERE l.kind = 'S'
         ORDER BY l.account_id, l.entry_id DESC
    ),
    -- The monthly window restarted in the counted month at its latest plan
    -- change (an upgrade from 0, any other move from the usage it recorded)
    -- or at a purchase that set its usage to the old limit (SPEC §4.1, §4.2).
    epoch AS (
        SELECT DISTINCT ON (l.account_id) l.account_id, l.entry_id,
               coalesce((l.metadata ->> 'monthly_used')::numeric, 0) AS used
          FROM credits.ledger l
          JOIN credits.accounts a ON a.account_id = l.account_id
         WHERE ((l.kind = 'S' AND ((l.metadata ->> 'upgrade')::boolean OR l.metadata ? 'monthly_used'))
                OR (l.kind = 'P' AND l.metadata ? 'monthly_used'))
           AND credits_internal._utc_month(l.at) = a.month
         ORDER BY l.account_id, l.entry_id DESC
    ),
    -- Every debit (+) and refund (-) with the instants whose windows it
    -- counts in: a debit in the windows it was made in (a settle: its hold's,
    -- SPEC §4.3); a refund gives back to a window only while the window of
    -- its debit is still the current one (own_at and debit_at both in it).
    counted AS (
        SELECT d.account_id, s.sign * d.amount AS amount,
               s.sign * (d.amount - coalesce(d.from_grants, 0)) AS allowance,
               coalesce(src.entry_id, d.entry_id) AS debit_entry,
               CASE d.kind WHEN 'D' THEN coalesce(h.at, d.at) ELSE d.at END AS own_at,
               coalesce(h.at, src.at, d.at) AS debit_at
          FROM credits.ledger d
          CROSS JOIN LATERAL (SELECT CASE d.kind WHEN 'D' THEN 1 ELSE -1 END AS sign) s
          LEFT JOIN credits.ledger src ON d.kind = 'R' AND src.account_id = d.account_id AND src.entry_id = d.ref
          LEFT JOIN credits.ledger h ON h.kind = 'H' AND h.account_id = d.account_id
                                    AND h.entry_id = CASE d.kind WHEN 'D' THEN d.ref ELSE src.ref END
         WHERE d.kind IN ('D', 'R')
    ),
    usage AS (
        SELECT c.account_id,
               sum(CASE WHEN credits_internal._utc_day(c.own_at) = a.day AND credits_internal._utc_day(c.debit_at) = a.day
                        THEN c.amount ELSE 0 END) AS daily_used,
               sum(CASE WHEN credits_internal._utc_month(c.own_at) = a.month AND credits_internal._utc_month(c.debit_at) = a.month
                         AND c.debit_entry > coalesce(e.entry_id, 0)
                        THEN c.allowance ELSE 0 END) AS monthly_used
          FROM counted c
          JOIN credits.accounts a ON a.account_id = c.account_id
          LEFT JOIN epoch e ON e.account_id = c.account_id
         GROUP BY c.account_id
    ),
    -- The plan changes of each month (SPEC §4.1), windows numbered by the
    -- upgrades before them; what each window was granted is the largest limit
    -- it held (a change's limit before and after it).
    changes AS (
        SELECT l.account_id, l.entry_id, credits_internal._utc_month(l.at) AS month,
               (l.metadata ->> 'from_limit')::numeric AS from_limit,
               (l.metadata ->> 'limit')::numeric AS new_limit,
               (l.metadata ->> 'upgrade')::boolean AS upgrade,
               count(*) FILTER (WHERE (l.metadata ->> 'upgrade')::boolean)
                   OVER (PARTITION BY l.account_id, credits_internal._utc_month(l.at) ORDER BY l.entry_id) AS window_no
          FROM credits.ledger l
         WHERE l.kind = 'S' AND l.metadata ? 'from_limit'
    ),
    window_limits AS (
        SELECT c.account_id, c.month, CASE WHEN c.upgrade THEN c.window_no - 1 ELSE c.window_no END AS window_no,
               c.from_limit AS window_limit
          FROM changes c
        UNION ALL
        SELECT c.account_id, c.month, c.window_no, c.new_limit FROM changes c
    ),
    month_grants AS (
        SELECT w.account_id, w.month,
               sum(w.window_limit)
               -- (a reduction takes effect the next month: a plan change after it
               -- records the lowered limit, but the month keeps what it had)
               + coalesce((SELECT sum(abs(p.amount)) FROM credits.ledger p
                            WHERE p.account_id = w.account_id AND p.kind = 'P'
                              AND credits_internal._utc_month(p.at) = w.month), 0) AS granted
          FROM (SELECT wl.account_id, wl.month, wl.window_no, max(wl.window_limit) AS window_limit
                  FROM window_limits wl GROUP BY wl.account_id, wl.month, wl.window_no) w
         GROUP BY w.account_id, w.month
    ),
    derived AS (
        SELECT a.account_id,
               lp.entry_id IS NOT NULL AS has_plan_entry,
               lp.metadata ->> 'plan' AS plan,
               (lp.metadata ->> 'purchased')::numeric
                 + coalesce((SELECT sum(p.amount) FROM credits.ledger p
                              WHERE p.account_id = a.account_id AND p.kind = 'P'
                                AND p.entry_id > lp.entry_id), 0) AS purchased,
               coalesce(u.daily_used, 0) AS daily_used,
               coalesce(e.used, 0) + coalesce(u.monthly_used, 0) AS monthly_used
          FROM credits.accounts a
          LEFT JOIN last_plan lp ON lp.account_id = a.account_id
          LEFT JOIN usage u ON u.account_id = a.account_id
          LEFT JOIN epoch e ON e.account_id = a.account_id
    ),
    stripe_totals AS (
        SELECT s.account_id, sum(s.budget) AS budget, sum(s.budget - s.spent) AS unspent
          FROM credits.stripes s GROUP BY s.account_id
    ),
    problems AS (
        SELECT a.account_id, 'the ledger has no plan entry for this account' AS problem
          FROM credits.accounts a JOIN derived d USING (account_id)
         WHERE NOT d.has_plan_entry
        UNION ALL
        SELECT a.account_id, format('plan is %s, the ledger says %s', a.plan, d.plan)
          FROM credits.accounts a JOIN derived d USING (account_id)
         WHERE d.has_plan_entry AND a.plan IS DISTINCT FROM d.plan
        UNION ALL
        SELECT a.account_id, format('purchased is %s, the ledger says %s', a.purchased, d.purchased)
          FROM credits.accounts a JOIN derived d USING (account_id)
         WHERE d.has_plan_entry AND a.purchased IS DISTINCT FROM d.purchased
        UNION ALL
        -- (a striped account's counters count its stripes' unspent budgets as used)
        SELECT a.account_id, format('daily_used of %s is %s, the ledger says %s',
                                    to_char(a.day, 'YYYY-MM-DD'), a.daily_used - coalesce(st.unspent, 0), d.daily_used)
          FROM credits.accounts a JOIN derived d USING (account_id) LEFT JOIN stripe_totals st USING (account_id)
         WHERE a.daily_used - coalesce(st.unspent, 0) <> d.daily_used
        UNION ALL
        SELECT a.account_id, format('monthly_used of %s is %s, the ledger says %s',
                                    to_char(a.month, 'YYYY-MM'), a.monthly_used - coalesce(st.unspent, 0), d.monthly_used)
          FROM credits.accounts a JOIN derived d USING (account_id) LEFT JOIN stripe_totals st USING (account_id)
         WHERE a.monthly_used - coalesce(st.unspent, 0) <> d.monthly_used
        UNION ALL
        -- Stripes: stripe_budget is what they were handed, none spent more.
        SELECT a.account_id, format('stripe_budget is %s, its stripes hold %s', a.stripe_budget, coalesce(st.budget, 0))
          FROM credits.accounts a LEFT JOIN stripe_totals st USING (account_id)
         WHERE a.stripe_budget <> coalesce(st.budget, 0)
        UNION ALL
        SELECT s.account_id, format('stripe %s spent %s of a budget of %s', s.stripe, s.spent, s.budget)
          FROM credits.stripes s
         WHERE s.spent > s.budget OR s.spent < 0
        UNION ALL
        -- SPEC §4: no credits appear through a sequence of calls. In a month
        -- with plan changes, the allowance used and forfeited is at most the
        -- allowances granted: for each window (an upgrade starts one) the
        -- largest limit it held, and the purchases.
        SELECT m.account_id,
               format('in %s, %s of allowance was used and %s forfeited, but only %s was granted',
                      to_char(m.month, 'YYYY-MM'), m.used, m.forfeited, m.granted)
          FROM (SELECT g.account_id, g.month, g.granted,
                       coalesce((SELECT sum(c.allowance) FROM counted c
                                  WHERE c.account_id = g.account_id AND credits_internal._utc_month(c.own_at) = g.month
                                    AND credits_internal._utc_month(c.debit_at) = g.month), 0) AS used,
                       coalesce((SELECT sum(f.amount) FROM credits.ledger f
                                  WHERE f.account_id = g.account_id AND f.kind = 'F'
                                    AND credits_internal._report_month(f.kind, f.at, f.metadata) = g.month), 0) AS forfeited
                  FROM month_grants g) m
         WHERE m.used + m.forfeited > m.granted
        UNION ALL
        -- Holds: reserved is the sum of the open holds; each hold has its 'H'
        -- entry, and a resolved hold points to the entry that resolved it.
        SELECT a.account_id, format('reserved is %s, open holds sum to %s', a.reserved, coalesce(h.total, 0))
          FROM credits.accounts a
          LEFT JOIN (SELECT ho.account_id, sum(ho.amount) AS total FROM credits.holds ho
                      WHERE ho.resolved_entry IS NULL GROUP BY ho.account_id) h ON h.account_id = a.account_id
         WHERE a.reserved <> coalesce(h.total, 0)
        UNION ALL
        SELECT ho.account_id, format('hold %s has no matching hold entry in the ledger', ho.hold_id)
          FROM credits.holds ho
         WHERE NOT EXISTS (SELECT 1 FROM credits.ledger l
                            WHERE l.entry_id = ho.hold_id AND l.kind = 'H'
                              AND l.account_id = ho.account_id AND l.amount = ho.amount)
        UNION ALL
        SELECT ho.account_id, format('hold %s is resolved by entry %s, which does not resolve it',
                                     ho.hold_id, ho.resolved_entry)
          FROM credits.holds ho
         WHERE ho.resolved_entry IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM credits.ledger l
                            WHERE l.account_id = ho.account_id AND l.entry_id = ho.resolved_entry AND l.ref = ho.hold_id
                              AND l.kind IN ('D', 'X'))
        UNION ALL
        SELECT l.account_id, format('hold entry %s has no hold', l.entry_id)
          FROM credits.ledger l
         WHERE l.kind = 'H'
           AND NOT EXISTS (SELECT 1 FROM credits.holds ho
                            WHERE ho.account_id = l.account_id AND ho.hold_id = l.entry_id)
        UNION ALL
        -- Each grant: what is left = granted - drawn + given back.
        SELECT g.account_id, format('grant %s has %s remaining, the ledger says %s', g.grant_id, g.remaining,
                                    g.amount - coalesce(dr.drawn, 0))
          FROM credits.grants g
          LEFT JOIN (SELECT gd.account_id, gd.grant_id, sum(gd.amount) AS drawn
                       FROM credits.grant_draws gd GROUP BY gd.account_id, gd.grant_id) dr
                 ON dr.account_id = g.account_id AND dr.grant_id = g.grant_id
         WHERE g.remaining <> g.amount - coalesce(dr.drawn, 0)
        UNION ALL
        -- The ledger alone: granted - drawn + given back - expired is what the
        -- grants not yet expired hold (SPEC §4.5: nothing goes back to an
        -- expired grant).
        SELECT a.account_id, format('grants not yet expired hold %s, the ledger says %s',
                                    coalesce(g.held, 0), coalesce(l.held, 0))
          FROM credits.accounts a
          LEFT JOIN (SELECT gr.account_id, sum(gr.remaining) AS held FROM credits.grants gr
                      WHERE gr.expired_entry IS NULL GROUP BY gr.account_id) g ON g.account_id = a.account_id
          LEFT JOIN (SELECT le.account_id,
                            sum(CASE le.kind WHEN 'G' THEN le.amount WHEN 'D' THEN -coalesce(le.from_grants, 0)
                                             WHEN 'R' THEN coalesce(le.from_grants, 0) WHEN 'E' THEN -le.amount END) AS held
                       FROM credits.ledger le WHERE le.kind IN ('G', 'D', 'R', 'E')
                      GROUP BY le.account_id) l ON l.account_id = a.account_id
         WHERE coalesce(g.held, 0) <> coalesce(l.held, 0)
        UNION ALL
        SELECT g.account_id, format('grant %s has no matching grant entry in the ledger', g.grant_id)
          FROM credits.grants g
         WHERE NOT EXISTS (SELECT 1 FROM credits.ledger l
                            WHERE l.entry_id = g.grant_id AND l.kind = 'G'
                              AND l.account_id = g.account_id AND l.amount = g.amount)
        UNION ALL
        SELECT l.account_id, format('grant entry %s has no grant', l.entry_id)
          FROM credits.ledger l
         WHERE l.kind = 'G'
           AND NOT EXISTS (SELECT 1 FROM credits.grants g
                            WHERE g.account_id = l.account_id AND g.grant_id = l.entry_id)
        UNION ALL
        -- Each debit or refund: its grant part equals its grant draws.
        SELECT l.account_id, format('entry %s has from_grants %s, its grant draws sum to %s',
                                    l.entry_id, coalesce(l.from_grants, 0), coalesce(abs(dr.total), 0))
          FROM credits.ledger l
          LEFT JOIN (SELECT gd.account_id, gd.entry_id, sum(gd.amount) AS total
                       FROM credits.grant_draws gd GROUP BY gd.account_id, gd.entry_id) dr
                 ON dr.account_id = l.account_id AND dr.entry_id = l.entry_id
         WHERE l.kind IN ('D', 'R') AND coalesce(l.from_grants, 0) <> coalesce(abs(dr.total), 0)
        UNION ALL
        SELECT d.account_id, format('debit %s of %s has %s refunded', d.entry_id, d.amount, r.total)
          FROM credits.ledger d
          JOIN (SELECT l.account_id, l.ref, sum(l.amount) AS total FROM credits.ledger l
                 WHERE l.kind = 'R' GROUP BY l.account_id, l.ref) r ON r.account_id = d.account_id AND r.ref = d.entry_id
         WHERE d.kind = 'D' AND r.total > d.amount
        UNION ALL
        SELECT i.account_id, format('idempotency key %s points to entry %s of another account or none',
                                    quote_literal(i.idempotency_key), i.entry_id)
          FROM credits.idempotency i
         WHERE NOT EXISTS (SELECT 1 FROM credits.ledger l
                            WHERE l.entry_id = i.entry_id AND l.account_id = i.account_id)
        UNION ALL
        SELECT DISTINCT l.account_id, 'ledger entries for an account that does not exist'
          FROM credits.ledger l
         WHERE NOT EXISTS (SELECT 1 FROM credits.accounts a WHERE a.account_id = l.account_id)
    )
    SELECT p.account_id, p.problem FROM problems p;

-- verify()'s problems of the accounts' rows: on Citus gathered from every
-- node (src/distributed/distribute.sql).
CREATE OR REPLACE FUNCTION credits_internal._verify_accounts() RETURNS TABLE (account_id text, problem text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF credits_internal._distributed() THEN
        RETURN QUERY SELECT v.account_id, v.problem FROM credits_internal._verify_nodes() v;
    ELSE
        RETURN QUERY SELECT v.account_id, v.problem FROM credits_internal._verify_problems v;
    END IF;
END
$$;

-- verify()'s problems of the accounts on Citus: every node checks the
-- shards it holds (_verify_local), in its own transaction.
CREATE OR REPLACE FUNCTION credits_internal._verify_nodes() RETURNS TABLE (account_id text, problem text)
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
CREATE OR REPLACE FUNCTION credits_internal._on_local_shards(p_query text) RETURNS SETOF text
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
CREATE OR REPLACE FUNCTION credits_internal._verify_local() RETURNS TABLE (account_id text, problem text)
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

GRANT EXECUTE ON FUNCTION credits_internal._refuse_distributed(text), credits_internal._distributed() TO credits_admin;
COMMENT ON FUNCTION credits.distribute() IS
'Citus: distribute this install over the cluster (on the coordinator, as a superuser): per-account tables sharded by account, catalogs replicated, per-account calls delegated to the node holding the account. UC014 without Citus. Idempotent (docs/citus.md).';

REVOKE ALL ON ALL ROUTINES IN SCHEMA credits, credits_internal FROM PUBLIC;
