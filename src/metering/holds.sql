-- Reservations (holds) for work whose cost is known only at the end.
--   reserve  sets credits aside at once: counted in balance().reserved and
--            unavailable to every other call (same window checks as debit),
--            on the allowance first, then on grants;
--   settle   charges the actual amount as a debit and frees the hold; up to
--            the hold's amount it always succeeds (a hold keeps what it
--            reserved, even past a plan change to a smaller limit, SPEC §4.4);
--            more than was held is charged only if what is available once
--            the hold is freed covers it (UC001 otherwise, nothing written);
--   release  frees the hold without charge.
-- A hold belongs to the windows it was placed in (SPEC §4.3): a window that
-- closes while it is open keeps the hold's part aside instead of forfeiting
-- it; a settle after that boundary charges the hold's own windows (their
-- closed records show it, the new windows are untouched) and can charge at
-- most the hold's amount; whatever a hold of a closed month does not use is
-- forfeited ('F', reason hold) when it is settled, released or expires.
--   try_reserve  like reserve, NULL instead of UC001 (the denial's exhausted
--            event commits, which a raised error's cannot).
-- A hold resolves at most once: settling or releasing it again the same
-- way returns the first result, any other way is UC008. A hold past its ttl is
-- freed at the next call on its account or by maintenance, whichever comes
-- first (ledger 'X', reason expired, stamped at the deadline).

-- (IntervalStyle pinned: the ttl is part of the key's fingerprint, which
-- must not depend on session settings, SPEC §4.8.)
CREATE FUNCTION credits_internal._reserve(p_account text, p_feature text, p_amount numeric, p_ttl interval,
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

-- reserve: hold `amount` credits of `feature` for at most `ttl`; UC001 when any window lacks them.
CREATE FUNCTION reserve(account_id text, feature text, amount numeric,
                        ttl interval DEFAULT '15 minutes', idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._reserve($1, $2, $3, $4, $5, true);
END
$$;

-- try_reserve: like reserve, but NULL instead of UC001 (and an exhausted event that commits).
CREATE FUNCTION try_reserve(account_id text, feature text, amount numeric,
                            ttl interval DEFAULT '15 minutes', idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._reserve($1, $2, $3, $4, $5, false);
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
CREATE FUNCTION credits_internal._take_hold(p_account text, p_hold bigint, p_now timestamptz, p_settle numeric)
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

-- A hold resolved by entry `p_entry` at `p_at`, of which `p_charged` was
-- charged (0 when freed): its windows that have closed get what they kept
-- aside for it; an allowance an upgrade replaced since it was placed loses
-- what the hold kept of it and did not use. Its month, if closed: `p_charged_allowance` is used, the rest
-- of what it held on the allowance is forfeited ('F', reason hold). Its day,
-- if closed (settles only): the charge is used there.
CREATE FUNCTION credits_internal._hold_resolved(p_hold credits.holds, p_entry bigint, p_charged numeric,
                               p_charged_allowance numeric, p_at timestamptz)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_own     numeric := p_hold.amount - p_hold.from_grants;  -- what it held on the allowance
    v_forfeit numeric;
BEGIN
    UPDATE credits.holds h SET resolved_entry = p_entry
     WHERE h.account_id = p_hold.account_id AND h.hold_id = p_hold.hold_id;
    -- Its month still open but restarted by an upgrade since it was placed:
    -- the upgrade forfeited the old allowance but what the hold held of it;
    -- what the hold did not use of that is forfeited now (SPEC §4.1, §4.3).
    IF p_hold.month >= credits_internal._utc_month(p_at) AND v_own > p_charged
       AND EXISTS (SELECT FROM credits.ledger l
                    WHERE l.account_id = p_hold.account_id AND l.kind = 'S' AND l.entry_id > p_hold.hold_id
                      AND (l.metadata ->> 'upgrade')::boolean) THEN
        INSERT INTO credits.ledger (account_id, at, kind, amount, ref, metadata)
        VALUES (p_hold.account_id, p_at, 'F', v_own - p_charged, p_hold.hold_id,
                jsonb_build_object('reason', 'hold', 'month', to_char(p_hold.month, 'YYYY-MM')));
    END IF;
    -- (a hold whose deadline came before its month ended was not kept aside)
    IF p_hold.month < credits_internal._utc_month(p_at)
       AND p_hold.expires_at > (p_hold.month + interval '1 month')::timestamp AT TIME ZONE 'UTC' THEN
        UPDATE credits.closed_windows c
           SET used = c.used + p_charged_allowance,
               held = c.held - v_own,
               forfeited = greatest(0, c.window_limit - c.used - p_charged_allowance - c.held + v_own)
          FROM credits.closed_windows was
         WHERE c.account_id = p_hold.account_id AND c.window_kind = 'monthly' AND c.window_start = p_hold.month
           AND was.account_id = c.account_id AND was.window_kind = c.window_kind
           AND was.window_start = c.window_start
        RETURNING c.forfeited - was.forfeited INTO v_forfeit;
        IF v_forfeit > 0 THEN
            INSERT INTO credits.ledger (account_id, at, kind, amount, ref, metadata)
            VALUES (p_hold.account_id, p_at, 'F', v_forfeit, p_hold.hold_id,
                    jsonb_build_object('reason', 'hold', 'month', to_char(p_hold.month, 'YYYY-MM')));
        END IF;
    END IF;
    IF p_charged > 0 AND p_hold.day < credits_internal._utc_day(p_at) THEN
        INSERT INTO credits.closed_windows AS c
               (account_id, window_kind, window_start, plan, window_limit, used, forfeited, closed_at)
        SELECT p_hold.account_id, 'daily', p_hold.day, a.plan, p.daily_limit, p_charged, NULL,
               (p_hold.day + 1)::timestamp AT TIME ZONE 'UTC'
          FROM credits.accounts a JOIN credits.plans p ON p.plan = a.plan
         WHERE a.account_id = p_hold.account_id
        ON CONFLICT ON CONSTRAINT closed_windows_pkey DO UPDATE SET used = c.used + excluded.used;
    END IF;
END
$$;

-- settle: charge the actual amount of a hold (see the top of this file);
-- settle(hold, 0) is a release (and returns the release's entry).
-- settle_for takes the hold's account too (on Citus: delegated to its node).
CREATE FUNCTION settle(hold_id bigint, amount numeric) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._settle(NULL, $1, $2);
END
$$;

CREATE FUNCTION settle_for(account_id text, hold_id bigint, amount numeric) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM credits_internal._check_text($1, 'account_id');
    RETURN credits_internal._settle($1, $2, $3);
END
$$;

-- (the hold of the account `p_account`, or of any account when NULL)
CREATE FUNCTION credits_internal._settle(p_account text, p_hold bigint, p_amount numeric) RETURNS bigint
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

-- Free a hold without charge: the release's entry ('X'); a hold already
-- released gives its release back.
CREATE FUNCTION credits_internal._release(p_account text, p_hold bigint) RETURNS bigint
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

-- release: free a hold without charge (see the top of this file).
CREATE FUNCTION release(hold_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM credits_internal._release(NULL, $1);
END
$$;

-- (release_for: with the hold's account; on Citus, delegated to its node)
CREATE FUNCTION release_for(account_id text, hold_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM credits_internal._check_text($1, 'account_id');
    PERFORM credits_internal._release($1, $2);
END
$$;
