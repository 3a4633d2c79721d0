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
BEGIN
    SELECT * INTO a FROM credits.accounts ac WHERE ac.account_id = p_account;
    s := credits_internal._state(a, p_now);
    IF s.monthly_limit > 0 THEN
        FOREACH t IN ARRAY credits_internal._thresholds() LOOP
            EXIT WHEN s.monthly_used * 100 < s.monthly_limit * t;
            PERFORM credits_internal._emit(a, 'threshold', 'monthly', t, p_now, s);
        END LOOP;
    END IF;
    -- (the account's alert: what is available fell to its level)
    IF (a.alert_remaining IS NOT NULL OR a.alert_percent IS NOT NULL)
       AND credits_internal._available(s) <= credits_internal._alert_level(a, s)
       AND credits_internal._available(p_before) > credits_internal._alert_level(a, s) THEN
        PERFORM credits_internal._emit(a, 'low_balance', credits_internal._limiting_window(s), credits_internal._alert_level(a, s),
                                       p_now, s);
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
    v_acct := credits_internal._account($1);
    v_feature := credits_internal._feature($2);
    cost := credits_internal._cost(v_feature, $3);
    v_now := credits_internal._account_now(v_acct, v_now);
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
    v_now   timestamptz := credits_internal._account_now(a, credits.now());
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

REVOKE ALL ON ALL ROUTINES IN SCHEMA credits, credits_internal FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits.set_alert(text, numeric, numeric) TO credits_app, credits_billing, credits_admin;
COMMENT ON FUNCTION credits.set_alert(text, numeric, numeric) IS
'A low_balance event for the account when what it has available falls to remaining credits or to percent of its monthly limit; once per window and level. Both NULL: no alert.';
COMMENT ON COLUMN credits.accounts.alert_remaining IS 'Alert (set_alert): a low_balance event when available falls to this many credits; NULL: none.';
COMMENT ON COLUMN credits.accounts.alert_percent IS 'Alert (set_alert): ... or to this percentage of the monthly limit; NULL: none.';
COMMENT ON COLUMN credits.events.kind IS 'exhausted, denied, threshold, reset or low_balance.';
