-- Reservations (holds) for work whose cost is known only at the end.
--   reserve  sets credits aside at once: counted in balance().reserved and
--            unavailable to every other call (same window checks as debit);
--   settle   charges the actual amount as a debit and frees the hold;
--            more than was held is charged only if what is available once
--            the hold is freed covers it (UC001 otherwise, nothing written);
--   release  frees the hold without charge;
--   try_reserve  like reserve, NULL instead of UC001 (the denial's exhausted
--            event commits, which a raised error's cannot).
-- A hold resolves at most once (UC008 afterwards). A hold past its ttl is
-- freed at the next call on its account or by maintenance, whichever comes
-- first (ledger 'X', reason expired, stamped at the deadline).

-- (IntervalStyle pinned: the ttl is part of the key's fingerprint, which
-- must not depend on session settings, SPEC §4.8.)
CREATE FUNCTION _reserve(p_account text, p_feature text, p_amount numeric, p_ttl interval,
                         p_key text, p_raise boolean)
RETURNS bigint
LANGUAGE plpgsql SET IntervalStyle = postgres AS $$
DECLARE
    v_now     timestamptz := credits.now();
    v_feature credits.features;
    v_acct    credits.accounts;
    v_state   credits._account_state;
    v_request uuid;
    v_entry   bigint;
    v_expires timestamptz;
BEGIN
    PERFORM credits._check_text(p_account, 'account_id');
    v_feature := credits._feature(p_feature);
    PERFORM credits._check_amount(p_amount, 'amount');
    p_amount := trim_scale(p_amount);
    IF p_ttl IS NULL OR p_ttl <= interval '0' OR p_ttl > interval '31 days' THEN
        RAISE EXCEPTION 'invalid ttl: %', coalesce(trim_scale(extract(epoch FROM p_ttl)) || ' seconds', 'NULL')
            USING ERRCODE = 'UC009', DETAIL = 'ttl must be more than 0 and at most 31 days';
    END IF;
    IF p_key IS NOT NULL THEN
        PERFORM credits._check_text(p_key, 'idempotency_key');
    END IF;

    v_acct := credits._lock_account(p_account, v_now);
    v_now := credits._account_now(v_acct, v_now);
    IF p_key IS NOT NULL THEN
        v_request := credits._fingerprint('reserve', p_feature, p_amount::text, p_ttl::text);
        v_entry := credits._replay(p_account, p_key, v_request);
        IF v_entry IS NOT NULL THEN
            RETURN v_entry;
        END IF;
    END IF;
    v_state := credits._state(v_acct, v_now);
    IF credits._lacking_window(v_state, p_amount) IS NOT NULL THEN
        IF NOT p_raise THEN
            PERFORM credits._denied(p_account, p_amount, v_now);
            RETURN NULL;
        END IF;
        PERFORM credits._raise_insufficient(p_account, p_amount, p_feature, v_state, v_now);
    END IF;

    -- (in UTC: a day of ttl is 24 hours whatever the session's TimeZone)
    v_expires := (v_now AT TIME ZONE 'UTC' + p_ttl) AT TIME ZONE 'UTC';
    INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, metadata)
    VALUES (p_account, v_now, 'H', v_feature.feature_id, p_amount,
            jsonb_build_object('expires_at', v_expires))
    RETURNING entry_id INTO v_entry;
    INSERT INTO credits.holds (account_id, hold_id, feature_id, amount, expires_at)
    VALUES (p_account, v_entry, v_feature.feature_id, p_amount, v_expires);
    UPDATE credits.accounts a SET reserved = a.reserved + p_amount, last_at = v_now WHERE a.account_id = p_account;
    PERFORM credits._after_write(p_account, v_now, v_entry, v_state);
    IF p_key IS NOT NULL THEN
        PERFORM credits._remember_key(p_account, p_key, v_entry, v_request);
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
    RETURN credits._reserve($1, $2, $3, $4, $5, true);
END
$$;

-- try_reserve: like reserve, but NULL instead of UC001 (and an exhausted event that commits).
CREATE FUNCTION try_reserve(account_id text, feature text, amount numeric,
                            ttl interval DEFAULT '15 minutes', idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits._reserve($1, $2, $3, $4, $5, false);
END
$$;

-- Lock the account of an open hold and free the hold; UC008 if the hold is
-- unknown or already resolved (settled, released or expired).
CREATE FUNCTION _take_hold(p_hold bigint, p_now timestamptz) RETURNS credits.holds
LANGUAGE plpgsql AS $$
DECLARE
    v_hold credits.holds;
    v_acct credits.accounts;
    v_how  text;
BEGIN
    IF p_hold IS NULL THEN
        RAISE EXCEPTION 'invalid hold_id: NULL' USING ERRCODE = 'UC009';
    END IF;
    SELECT * INTO v_hold FROM credits.holds h WHERE h.hold_id = p_hold;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'hold % is not active', p_hold
            USING ERRCODE = 'UC008', DETAIL = 'no hold has that id';
    END IF;
    v_acct := credits._lock_account(v_hold.account_id, p_now);  -- may expire it
    SELECT * INTO v_hold FROM credits.holds h WHERE h.hold_id = p_hold;
    IF v_hold.resolved_entry IS NOT NULL THEN
        SELECT CASE WHEN l.kind = 'D' THEN 'settled'
                    WHEN l.metadata ->> 'reason' = 'expired' THEN 'expired'
                    ELSE 'released' END
          INTO v_how FROM credits.ledger l WHERE l.entry_id = v_hold.resolved_entry;
        RAISE EXCEPTION 'hold % is not active: already %', p_hold, v_how
            USING ERRCODE = 'UC008', DETAIL = format('resolved by ledger entry %s', v_hold.resolved_entry);
    END IF;
    UPDATE credits.accounts a SET reserved = a.reserved - v_hold.amount, last_at = credits._account_now(v_acct, p_now)
     WHERE a.account_id = v_hold.account_id;
    RETURN v_hold;
END
$$;

CREATE FUNCTION settle(hold_id bigint, amount numeric) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_amount numeric := settle.amount;
    v_now    timestamptz := credits.now();
    v_hold   credits.holds;
    v_acct   credits.accounts;
    v_state  credits._account_state;
    v_entry  bigint;
BEGIN
    PERFORM credits._check_amount(p_amount, 'amount');
    p_amount := trim_scale(p_amount);
    v_hold := credits._take_hold(settle.hold_id, v_now);
    SELECT * INTO v_acct FROM credits.accounts a WHERE a.account_id = v_hold.account_id;
    v_now := credits._account_now(v_acct, v_now);
    v_state := credits._state(v_acct, v_now);
    IF credits._lacking_window(v_state, p_amount) IS NOT NULL THEN
        PERFORM credits._raise_insufficient(v_hold.account_id, p_amount,
                                            format('hold %s', v_hold.hold_id), v_state, v_now);
    END IF;
    v_entry := credits._charge(v_hold.account_id, v_state, v_hold.feature_id, p_amount, NULL, v_hold.hold_id, v_now);
    UPDATE credits.holds h SET resolved_entry = v_entry
     WHERE h.account_id = v_hold.account_id AND h.hold_id = v_hold.hold_id;
    PERFORM credits._after_write(v_hold.account_id, v_now, v_entry, v_state);
    RETURN v_entry;
END
$$;

CREATE FUNCTION release(hold_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now   timestamptz := credits.now();
    v_hold  credits.holds;
    v_entry bigint;
BEGIN
    v_hold := credits._take_hold(release.hold_id, v_now);
    v_now := (SELECT credits._account_now(a, v_now) FROM credits.accounts a WHERE a.account_id = v_hold.account_id);
    INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, ref, metadata)
    VALUES (v_hold.account_id, v_now, 'X', v_hold.feature_id, v_hold.amount, v_hold.hold_id, '{"reason": "release"}')
    RETURNING entry_id INTO v_entry;
    UPDATE credits.holds h SET resolved_entry = v_entry
     WHERE h.account_id = v_hold.account_id AND h.hold_id = v_hold.hold_id;
END
$$;
