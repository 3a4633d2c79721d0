-- Accounts: subscribing and changing plans (rules 4, 5), buying more
-- (rule 6) and one-off grants.

-- Record what the account held this month (credits.month_allowances): the
-- largest monthly limit, and the allowance used before its current window.
CREATE FUNCTION credits_internal._record_month(p_account text, p_month date, p_peak numeric, p_used_before numeric)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO credits.month_allowances AS m (account_id, month, peak_limit, used_before)
    VALUES (p_account, p_month, p_peak, p_used_before)
    ON CONFLICT ON CONSTRAINT month_allowances_pkey DO UPDATE
       SET month = excluded.month, peak_limit = excluded.peak_limit, used_before = excluded.used_before;
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
CREATE FUNCTION subscribe(account_id text, plan text, fresh_allowance boolean DEFAULT NULL,
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

-- purchase: raise the recurring monthly limit by `credits`, every month
-- until the plan changes to one that may not buy. Available at once and in
-- full (SPEC §4.2): when the month's usage already exceeds the old limit
-- (after a downgrade), the excess is not charged against what was bought.
-- Returns the purchase's ledger entry id; an idempotency key replays it.
CREATE FUNCTION purchase(account_id text, credits numeric, idempotency_key text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_account text := purchase.account_id;
    p_credits numeric := purchase.credits;
    p_key     text := purchase.idempotency_key;
    v_request uuid;
    v_now     timestamptz := credits.now();
    v_acct    credits.accounts;
    v_state   credits_internal._account_state;
    v_held    credits.month_allowances;
    v_may     boolean;
    v_capped  boolean;
    v_entry   bigint;
BEGIN
    PERFORM credits_internal._check_text(p_account, 'account_id');
    PERFORM credits_internal._check_amount(p_credits, 'credits');
    p_credits := trim_scale(p_credits);
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._check_text(p_key, 'idempotency_key');
    END IF;
    v_acct := credits_internal._lock_account(p_account, v_now);
    v_now := v_acct.last_at;  -- the account's time (_lock_account)
    IF p_key IS NOT NULL THEN
        v_request := credits_internal._fingerprint('purchase', p_credits::text);
        v_entry := credits_internal._replay(p_account, p_key, v_request);
        IF v_entry IS NOT NULL THEN
            RETURN v_entry;
        END IF;
    END IF;
    SELECT p.may_purchase INTO v_may FROM credits.plans p WHERE p.plan = v_acct.plan;
    IF NOT v_may THEN
        RAISE EXCEPTION 'plan % may not buy credits (account %)', quote_literal(v_acct.plan), quote_literal(p_account)
            USING ERRCODE = 'UC006', HINT = 'Upgrade to a plan that allows purchases first.',
                  DETAIL = jsonb_build_object('account_id', p_account, 'plan', v_acct.plan)::text;
    END IF;
    v_state := credits_internal._state(v_acct, v_now);
    v_capped := v_state.monthly_used > v_state.monthly_limit;
    INSERT INTO credits.ledger (account_id, at, kind, amount, metadata)
    VALUES (p_account, v_now, 'P', p_credits,
            CASE WHEN v_capped THEN jsonb_build_object('monthly_used', v_state.monthly_limit) END)
    RETURNING entry_id INTO v_entry;
    UPDATE credits.accounts a
       SET purchased = a.purchased + p_credits,
           monthly_used = CASE WHEN v_capped THEN v_state.monthly_limit ELSE a.monthly_used END,
           monthly_epoch = CASE WHEN v_capped THEN v_entry ELSE a.monthly_epoch END
     WHERE a.account_id = p_account;
    -- The new limit is one the account held this month; usage the purchase
    -- set aside still counts as used this month (a later move back to a
    -- plan already held must not give it again, SPEC §4.1).
    SELECT * INTO v_held FROM credits.month_allowances m
     WHERE m.account_id = p_account AND m.month = credits_internal._utc_month(v_now);
    PERFORM credits_internal._record_month(p_account, credits_internal._utc_month(v_now),
                                  greatest(v_held.peak_limit, v_state.monthly_limit + p_credits),
                                  coalesce(v_held.used_before, 0)
                                  + CASE WHEN v_capped THEN v_state.monthly_used - v_state.monthly_limit ELSE 0 END);
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._remember_key(p_account, p_key, v_entry, v_request);
    END IF;
    RETURN v_entry;
END
$$;

-- grant: one-off credits, consumed after the monthly allowance,
-- soonest-expiring first. Returns the ledger entry id (= the grant id).
CREATE FUNCTION "grant"(account_id text, amount numeric, kind text DEFAULT 'promotional',
                        expires_at timestamptz DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_account text := "grant".account_id;
    p_amount  numeric := "grant".amount;
    p_kind    text := "grant".kind;
    p_expires timestamptz := "grant".expires_at;
    p_key     text := "grant".idempotency_key;
    v_now     timestamptz := credits.now();
    v_request uuid;
    v_entry   bigint;
BEGIN
    PERFORM credits_internal._check_text(p_account, 'account_id');
    PERFORM credits_internal._check_amount(p_amount, 'amount');
    p_amount := trim_scale(p_amount);
    IF p_kind IS NULL OR p_kind NOT IN ('promotional', 'purchased', 'adjustment') THEN
        RAISE EXCEPTION 'invalid grant kind: %', coalesce(quote_literal(p_kind), 'NULL')
            USING ERRCODE = 'UC009', DETAIL = 'kind must be promotional, purchased or adjustment';
    END IF;
    IF p_expires IS NOT NULL AND (p_expires <= v_now OR NOT isfinite(p_expires)) THEN
        RAISE EXCEPTION 'invalid expires_at: %', credits_internal._utc_text(p_expires)
            USING ERRCODE = 'UC009',
                  DETAIL = format('expires_at must be a finite time after now (%s)', credits_internal._utc_text(v_now));
    END IF;
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._check_text(p_key, 'idempotency_key');
    END IF;

    v_now := (credits_internal._lock_account(p_account, v_now)).last_at;
    IF p_key IS NOT NULL THEN
        v_request := credits_internal._fingerprint('grant', trim_scale(p_amount)::text, p_kind,
                                          extract(epoch FROM p_expires)::text);
        v_entry := credits_internal._replay(p_account, p_key, v_request);
        IF v_entry IS NOT NULL THEN
            RETURN v_entry;
        END IF;
    END IF;

    INSERT INTO credits.ledger (account_id, at, kind, amount, metadata)
    VALUES (p_account, v_now, 'G', p_amount,
            jsonb_strip_nulls(jsonb_build_object('kind', p_kind, 'expires_at', p_expires)))
    RETURNING entry_id INTO v_entry;
    INSERT INTO credits.grants (account_id, grant_id, kind, amount, remaining, expires_at)
    VALUES (p_account, v_entry, p_kind, p_amount, p_amount, p_expires);
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._remember_key(p_account, p_key, v_entry, v_request);
    END IF;
    RETURN v_entry;
END
$$;

-- reduce_purchase: lower the recurring purchase by `credits` from the next
-- month on (a subscription downgraded at the end of its period). What is
-- available this month stays: the part of this month's allowance the lower
-- limit would take away is given back as an adjustment grant that expires
-- at the month's end. Returns the reduction's ledger entry id (a 'P' entry
-- of -credits); UC013 when more is asked than is purchased.
CREATE FUNCTION reduce_purchase(account_id text, credits numeric, idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_account text := reduce_purchase.account_id;
    p_credits numeric := reduce_purchase.credits;
    p_key     text := reduce_purchase.idempotency_key;
    v_now     timestamptz := credits.now();
    v_acct    credits.accounts;
    v_state   credits_internal._account_state;
    v_request uuid;
    v_keep    numeric;
    v_expires timestamptz;
    v_entry   bigint;
    v_grant   bigint;
BEGIN
    PERFORM credits_internal._check_text(p_account, 'account_id');
    PERFORM credits_internal._check_amount(p_credits, 'credits');
    p_credits := trim_scale(p_credits);
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._check_text(p_key, 'idempotency_key');
    END IF;
    v_acct := credits_internal._lock_account(p_account, v_now);
    v_now := v_acct.last_at;  -- the account's time (_lock_account)
    IF p_key IS NOT NULL THEN
        v_request := credits_internal._fingerprint('reduce_purchase', p_credits::text);
        v_entry := credits_internal._replay(p_account, p_key, v_request);
        IF v_entry IS NOT NULL THEN
            RETURN v_entry;
        END IF;
    END IF;
    IF p_credits > v_acct.purchased THEN
        RAISE EXCEPTION 'cannot reduce the recurring purchase by %: account % has % purchased',
                        p_credits, quote_literal(p_account), trim_scale(v_acct.purchased)
            USING ERRCODE = 'UC013',
                  DETAIL = jsonb_build_object('account_id', p_account, 'purchased', trim_scale(v_acct.purchased),
                                              'requested', p_credits)::text;
    END IF;
    v_state := credits_internal._state(v_acct, v_now);
    v_keep := least(p_credits, v_state.allowance_available);
    INSERT INTO credits.ledger (account_id, at, kind, amount, metadata)
    VALUES (p_account, v_now, 'P', -p_credits, '{"reduction": true}')
    RETURNING entry_id INTO v_entry;
    UPDATE credits.accounts a SET purchased = a.purchased - p_credits WHERE a.account_id = p_account;
    IF v_keep > 0 THEN
        v_expires := credits_internal._resets_at('monthly', v_now);
        INSERT INTO credits.ledger (account_id, at, kind, amount, ref, metadata)
        VALUES (p_account, v_now, 'G', v_keep, v_entry,
                jsonb_build_object('kind', 'adjustment', 'expires_at', v_expires, 'reason', 'reduce_purchase'))
        RETURNING entry_id INTO v_grant;
        INSERT INTO credits.grants (account_id, grant_id, kind, amount, remaining, expires_at)
        VALUES (p_account, v_grant, 'adjustment', v_keep, v_keep, v_expires);
    END IF;
    PERFORM credits_internal._after_write(p_account, v_now, v_entry, v_state);
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._remember_key(p_account, p_key, v_entry, v_request);
    END IF;
    RETURN v_entry;
END
$$;

-- void_grant: remove what is left of a grant (a promotion withdrawn, a
-- grant made by mistake), as an expiry would: an 'E' entry of what was
-- left, with the reason. Nothing given back to the grant afterwards (a
-- refund of a debit that drew on it) returns to it. Voiding it again returns
-- the same entry; a grant that has expired cannot be voided (UC012).
-- void_grant_for takes the grant's account too (on Citus: delegated to its node).
CREATE FUNCTION void_grant(entry_id bigint, reason text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._void_grant(NULL, $1, $2);
END
$$;

CREATE FUNCTION void_grant_for(account_id text, entry_id bigint, reason text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM credits_internal._check_text($1, 'account_id');
    RETURN credits_internal._void_grant($1, $2, $3);
END
$$;

-- (the grant of the account `p_account`, or of any account when NULL)
CREATE FUNCTION credits_internal._void_grant(p_account text, p_entry bigint, p_reason text) RETURNS bigint
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

-- set_alert: a low_balance event for this account when what it has
-- available (balance().available) falls to `remaining` credits, or to
-- `percent` of its monthly limit, whichever comes first; once per window
-- (the one that limits what is available) and level, next to the global
-- credits.thresholds. Both NULL: no alert.
CREATE FUNCTION set_alert(account_id text, remaining numeric DEFAULT NULL, percent numeric DEFAULT NULL)
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

-- set_stripes: spread an account's debits over `stripes` stripes (2 to 64;
-- 0 turns it off), for an account many sessions debit at once: a debit then
-- locks one free stripe instead of the account row (src/metering/stripes.rs).
-- Decisions stay exact; what a striped account costs is in docs/rules.md.
CREATE FUNCTION set_stripes(account_id text, stripes integer) RETURNS void
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
