-- credits 0.2.0 -> 1.0.0
--
-- Every schema change made after 0.2.0 goes here as well as into the code
-- that creates a fresh install, so that an upgraded database and a fresh
-- one are identical (tests/client/tests/upgrade.rs compares them).

-- A fourth role, for billing webhooks (src/security/privileges.sql).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'credits_billing') THEN
        CREATE ROLE credits_billing NOLOGIN;
    END IF;
END
$$;

-- Today's holds in an account's state (UC001's daily facts).
ALTER TYPE credits_internal._account_state ADD ATTRIBUTE reserved_today numeric;

-- Calls whose arguments or result changed: an idempotency key for
-- subscribe, purchase and refund (purchase returns its entry); internal
-- helpers with new arguments.
DROP FUNCTION credits.subscribe(text, text, boolean);
DROP FUNCTION credits.purchase(text, numeric);
DROP FUNCTION credits.refund(bigint, numeric, text);
DROP FUNCTION credits_internal._raise_insufficient(text, numeric, text, credits_internal._account_state, timestamptz);
DROP FUNCTION credits_internal._take_hold(bigint, timestamptz);

-------------------------------------------------------------------------------
-- Structured answers (src/schema/internal.sql, src/metering/metering.sql):
-- JSON error details, check().
-------------------------------------------------------------------------------

-- Instants in JSON (error details, check(), events): ISO 8601 in UTC,
-- '2026-12-01T00:00:00Z', whatever the session's settings (jsonb writes a
-- timestamp in ISO form and drops a zero fraction).
CREATE OR REPLACE FUNCTION credits_internal._iso(at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN isfinite(at) THEN (to_jsonb(at AT TIME ZONE 'UTC') #>> '{}') || 'Z' ELSE at::text END;

-- When the window of `p_window` kind that holds `p_now` resets: the next
-- 00:00 UTC, or the next 1st of a month at 00:00 UTC.
CREATE OR REPLACE FUNCTION credits_internal._resets_at(p_window text, p_now timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE p_window
    WHEN 'daily' THEN (credits_internal._utc_day(p_now) + 1)::timestamp AT TIME ZONE 'UTC'
    WHEN 'monthly' THEN (credits_internal._utc_month(p_now) + interval '1 month') AT TIME ZONE 'UTC'
END;

CREATE OR REPLACE FUNCTION credits_internal._state(a credits.accounts, p_now timestamptz) RETURNS credits_internal._account_state
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v         credits_internal._account_state;
BEGIN
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

-- A ledger entry's kind as a word (history, errors): what a customer or a
-- client reads instead of the one-letter code.
CREATE OR REPLACE FUNCTION credits_internal._kind_word(kind "char", metadata jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE kind
    WHEN 'S' THEN 'plan'
    WHEN 'P' THEN CASE WHEN metadata ? 'reduction' THEN 'purchase_reduction' ELSE 'purchase' END
    WHEN 'G' THEN 'grant'
    WHEN 'D' THEN 'debit'
    WHEN 'R' THEN 'refund'
    WHEN 'H' THEN 'hold'
    WHEN 'X' THEN CASE WHEN metadata ->> 'reason' = 'expired' THEN 'hold_expiry' ELSE 'release' END
    WHEN 'F' THEN 'forfeit'
    WHEN 'E' THEN CASE WHEN metadata ? 'void' THEN 'void' ELSE 'expiry' END
END;

-- UC011: the entry a call names is not of the kind it acts on.
CREATE OR REPLACE FUNCTION credits_internal._raise_wrong_entry(p_entry bigint, p_wanted text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_kind text := (SELECT credits_internal._kind_word(l.kind, l.metadata) FROM credits.ledger l WHERE l.entry_id = p_entry);
BEGIN
    RAISE EXCEPTION 'entry % is not %: %', p_entry, p_wanted, coalesce('it is a ' || v_kind, 'no entry has that id')
        USING ERRCODE = 'UC011', DETAIL = jsonb_build_object('entry_id', p_entry, 'kind', v_kind)::text;
END
$$;

-- The replay half of idempotency: the entry a key already produced, NULL if
-- the key is new, UC005 if the key was used for a different request.
-- Callers hold the account lock, so a concurrent twin has committed or not.
CREATE OR REPLACE FUNCTION credits_internal._replay(p_account text, p_key text, p_request uuid) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_entry bigint;
    v_request uuid;
BEGIN
    SELECT i.entry_id, i.request INTO v_entry, v_request
      FROM credits.idempotency i
     WHERE i.account_id = p_account AND i.idempotency_key = p_key;
    IF v_entry IS NOT NULL AND v_request <> p_request THEN
        RAISE EXCEPTION 'idempotency key % was already used with a different request', quote_literal(p_key)
            USING ERRCODE = 'UC005',
                  DETAIL = jsonb_build_object('account_id', p_account, 'idempotency_key', p_key,
                                              'entry_id', v_entry)::text,
                  HINT = 'Use a new key for a new request.';
    END IF;
    RETURN v_entry;
END
$$;

-- The window that refuses `p_amount` in state `s` (NULL = it fits): the
-- monthly one when it lacks it (waiting for tomorrow would not help), else
-- the daily one. What UC001, check() and denied events name.
CREATE OR REPLACE FUNCTION credits_internal._lacking_window(s credits_internal._account_state, p_amount numeric) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE
    WHEN p_amount > s.allowance_available + s.grants_available THEN 'monthly'
    WHEN s.daily_available IS NOT NULL AND p_amount > s.daily_available THEN 'daily'
END;

-- The facts of one window of `s` at `p_now`, as UC001's DETAIL gives them
-- (docs/sqlstates.md; every UC001 has the same keys): its limit, what is
-- used and reserved in it, the grants (monthly window; null for the daily
-- one), what is available (grants included for the monthly window), what
-- the request needs and when the window resets.
CREATE OR REPLACE FUNCTION credits_internal._window_facts(s credits_internal._account_state, p_window text,
                                               p_needed numeric, p_now timestamptz) RETURNS jsonb
LANGUAGE sql IMMUTABLE
RETURN CASE p_window
    WHEN 'daily' THEN jsonb_build_object(
        'window', 'daily', 'limit', trim_scale(s.daily_limit), 'used', trim_scale(s.daily_used),
        'granted', NULL, 'reserved', trim_scale(s.reserved_today),
        'available', trim_scale(s.daily_available), 'needed', trim_scale(p_needed),
        'resets_at', credits_internal._iso(credits_internal._resets_at('daily', p_now)))
    ELSE jsonb_build_object(
        'window', 'monthly', 'limit', trim_scale(s.monthly_limit), 'used', trim_scale(s.monthly_used),
        'granted', trim_scale(s.granted_remaining), 'reserved', trim_scale(s.reserved_allowance + s.reserved_grants),
        'available', trim_scale(s.allowance_available + s.grants_available), 'needed', trim_scale(p_needed),
        'resets_at', credits_internal._iso(credits_internal._resets_at('monthly', p_now)))
END;

-- UC001, the one way to refuse a request for `p_amount` (`p_what`: the
-- feature, or the hold settled) that `s` lacks: the message a person can
-- read, the window's facts as JSON in DETAIL, the reset in HINT.
CREATE OR REPLACE FUNCTION credits_internal._raise_insufficient(p_amount numeric, p_what text,
                                    s credits_internal._account_state, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_window text := coalesce(credits_internal._lacking_window(s, p_amount), 'monthly');
    v_facts  jsonb := credits_internal._window_facts(s, v_window, p_amount, p_now);
BEGIN
    RAISE EXCEPTION 'insufficient credits: % needed for %, the % window has % available',
                    trim_scale(p_amount), p_what, v_window, v_facts ->> 'available'
        USING ERRCODE = 'UC001', DETAIL = v_facts::text,
              HINT = format('The %s window resets at %s.', v_window, v_facts ->> 'resets_at');
END
$$;

-- What `p_quantity` of a feature costs: UC004 unless the quantity is a valid
-- amount and the charge is exact to 4 decimal places.
CREATE OR REPLACE FUNCTION credits_internal._cost(p_feature credits.features, p_quantity numeric) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_amount numeric;
BEGIN
    PERFORM credits_internal._check_amount(p_quantity, 'quantity');
    v_amount := trim_scale(p_feature.cost * p_quantity);
    IF scale(v_amount) > 4 THEN
        RAISE EXCEPTION 'invalid amount: % (cost % x quantity %)', v_amount, p_feature.cost, p_quantity
            USING ERRCODE = 'UC004', DETAIL = 'the charge must be exact to 4 decimal places';
    END IF;
    RETURN v_amount;
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
    v_total   numeric;
    v_lacking text;
BEGIN
    v_acct := credits_internal._account($1);
    v_feature := credits_internal._feature($2);
    cost := credits_internal._cost(v_feature, $3);
    v_now := credits_internal._account_now(v_acct, v_now);
    s := credits_internal._state(v_acct, v_now);
    v_total := s.allowance_available + s.grants_available;
    v_lacking := credits_internal._lacking_window(s, cost);
    allowed := v_lacking IS NULL;
    available := trim_scale(least(coalesce(s.daily_available, v_total), v_total));
    limiting_window := coalesce(v_lacking, CASE WHEN s.daily_available < v_total THEN 'daily' ELSE 'monthly' END);
    resets_at := credits_internal._resets_at(limiting_window, v_now);
    RETURN NEXT;
END
$$;


-------------------------------------------------------------------------------
-- Webhook-safe writes (src/accounts/accounts.sql, src/metering/holds.sql,
-- src/metering/metering.sql).
-------------------------------------------------------------------------------

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
CREATE OR REPLACE FUNCTION purchase(account_id text, credits numeric, idempotency_key text DEFAULT NULL) RETURNS bigint
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

-- reduce_purchase: lower the recurring purchase by `credits` from the next
-- month on (a subscription downgraded at the end of its period). What is
-- available this month stays: the part of this month's allowance the lower
-- limit would take away is given back as an adjustment grant that expires
-- at the month's end. Returns the reduction's ledger entry id (a 'P' entry
-- of -credits); UC013 when more is asked than is purchased.
CREATE OR REPLACE FUNCTION reduce_purchase(account_id text, credits numeric, idempotency_key text DEFAULT NULL)
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
CREATE OR REPLACE FUNCTION void_grant(entry_id bigint, reason text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_entry  bigint := void_grant.entry_id;
    p_reason text := void_grant.reason;
    v_now    timestamptz := credits.now();
    v_grant  credits.grants;
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
    SELECT * INTO v_grant FROM credits.grants g WHERE g.grant_id = p_entry;
    IF NOT FOUND THEN
        PERFORM credits_internal._raise_wrong_entry(p_entry, 'a grant');
    END IF;
    v_now := (credits_internal._lock_account(v_grant.account_id, v_now)).last_at;  -- may expire it
    SELECT * INTO v_grant FROM credits.grants g WHERE g.account_id = v_grant.account_id AND g.grant_id = p_entry;
    IF v_grant.expired_entry IS NOT NULL THEN
        SELECT * INTO v_gone FROM credits.ledger l WHERE l.entry_id = v_grant.expired_entry;
        IF v_gone.metadata ? 'void' THEN
            RETURN v_gone.entry_id;
        END IF;
        RAISE EXCEPTION 'grant % is not active: it expired at %', p_entry, credits_internal._utc_text(v_grant.expires_at)
            USING ERRCODE = 'UC012',
                  DETAIL = jsonb_build_object('grant_id', p_entry, 'state', 'expired',
                                              'entry_id', nullif(v_grant.expired_entry, 0),
                                              'expires_at', credits_internal._iso(v_grant.expires_at))::text;
    END IF;
    v_state := credits_internal._state((SELECT a FROM credits.accounts a WHERE a.account_id = v_grant.account_id), v_now);
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
CREATE OR REPLACE FUNCTION refund(entry_id bigint, amount numeric DEFAULT NULL, reason text DEFAULT NULL,
                       idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_entry   bigint := refund.entry_id;
    p_amount  numeric := refund.amount;
    p_reason  text := refund.reason;
    p_key     text := refund.idempotency_key;
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
    SELECT * INTO v_debit FROM credits.ledger l WHERE l.entry_id = p_entry;
    IF NOT FOUND OR v_debit.kind <> 'D' THEN
        PERFORM credits_internal._raise_wrong_entry(p_entry, 'a debit');
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
    v_debit_at := coalesce((SELECT h.at FROM credits.ledger h WHERE h.entry_id = v_debit.ref AND h.kind = 'H'),
                           v_debit.at);

    SELECT coalesce(sum(r.amount), 0), coalesce(sum(r.from_grants), 0), max(r.entry_id)
      INTO v_done, v_grants_done, v_last
      FROM credits.ledger r WHERE r.ref = p_entry AND r.kind = 'R';
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
                     OR d.entry_id IN (SELECT r.entry_id FROM credits.ledger r WHERE r.ref = p_entry AND r.kind = 'R'))
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
    PERFORM credits_internal._after_write(p_account, v_now, v_entry, v_state);
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._remember_key(p_account, p_key, v_entry, v_request);
    END IF;
    RETURN v_entry;
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
CREATE OR REPLACE FUNCTION credits_internal._take_hold(p_hold bigint, p_now timestamptz, p_settle numeric)
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
    SELECT * INTO v_hold FROM credits.holds h WHERE h.hold_id = p_hold;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'hold % is not active: no hold has that id', p_hold
            USING ERRCODE = 'UC008', DETAIL = jsonb_build_object('hold_id', p_hold, 'state', 'unknown')::text;
    END IF;
    PERFORM credits_internal._lock_account(v_hold.account_id, p_now);  -- may expire it
    SELECT * INTO v_hold FROM credits.holds h WHERE h.account_id = v_hold.account_id AND h.hold_id = p_hold;
    IF v_hold.resolved_entry IS NOT NULL THEN
        SELECT * INTO v_by FROM credits.ledger l WHERE l.entry_id = v_hold.resolved_entry;
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

-- settle: charge the actual amount of a hold (see the top of this file);
-- settle(hold, 0) is a release (and returns the release's entry).
CREATE OR REPLACE FUNCTION settle(hold_id bigint, amount numeric) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_amount numeric := settle.amount;
    v_now    timestamptz := credits.now();
    v_hold   credits.holds;
    v_acct   credits.accounts;
    v_state  credits_internal._account_state;
    v_own    numeric;  -- what the hold held on the allowance
    v_alloc  numeric;
    v_entry  bigint;
BEGIN
    IF p_amount = 0 THEN
        RETURN credits_internal._release(settle.hold_id);
    END IF;
    PERFORM credits_internal._check_amount(p_amount, 'amount');
    p_amount := trim_scale(p_amount);
    v_hold := credits_internal._take_hold(settle.hold_id, v_now, p_amount);
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
CREATE OR REPLACE FUNCTION credits_internal._release(p_hold bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_now   timestamptz := credits.now();
    v_hold  credits.holds;
    v_entry bigint;
BEGIN
    v_hold := credits_internal._take_hold(p_hold, v_now, NULL);
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
CREATE OR REPLACE FUNCTION release(hold_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM credits_internal._release(release.hold_id);
END
$$;


-------------------------------------------------------------------------------
-- What the application shows its customers (src/reporting/reporting.sql).
-------------------------------------------------------------------------------

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
           CASE WHEN l.kind IN ('D', 'R', 'H') THEN credits_internal._utc_day(w.at) END,
           CASE WHEN l.kind IN ('D', 'R', 'H') THEN credits_internal._utc_month(w.at)
                ELSE credits_internal._report_month(l.kind, l.at, l.metadata) END,
           l.ref,
           CASE WHEN l.kind IN ('F', 'R', 'E', 'X') THEN l.metadata ->> 'reason' END,
           CASE WHEN l.kind = 'D' THEN l.metadata END
      FROM credits.ledger l
      LEFT JOIN credits.features f ON f.feature_id = l.feature_id
      -- the instant whose windows it counted in: a settle's hold, a refund's debit (or its hold)
      CROSS JOIN LATERAL (
          SELECT coalesce((SELECT h.at FROM credits.ledger h
                            WHERE l.kind IN ('D', 'R') AND h.kind = 'H'
                              AND h.entry_id = CASE l.kind WHEN 'D' THEN l.ref
                                                    ELSE (SELECT d.ref FROM credits.ledger d WHERE d.entry_id = l.ref) END),
                          (SELECT d.at FROM credits.ledger d WHERE l.kind = 'R' AND d.entry_id = l.ref),
                          l.at) AS at) w
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
    v_now := credits_internal._account_now(v_acct, credits.now());
    RETURN QUERY
    SELECT g.grant_id, g.kind, trim_scale(g.amount), trim_scale(u.remaining), g.expires_at, l.at, u.status
      FROM credits.grants g
      JOIN credits.ledger l ON l.entry_id = g.grant_id
      LEFT JOIN credits.ledger e ON e.entry_id = g.expired_entry
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


-------------------------------------------------------------------------------
-- Further changes.
-------------------------------------------------------------------------------

-- An amount passed as double precision (a Python float, a JavaScript
-- number or an untyped string, which PostgreSQL reads as double precision
-- when a function has both forms), as numeric. Below 10^11, or whole, a
-- double converts to exactly the decimal it was written as (it carries 15
-- significant digits); a fraction on a larger value may already be lost,
-- so it is refused (UC004) rather than charged rounded. Inlined into its
-- caller: the check costs nothing on the way to the fast path.
CREATE OR REPLACE FUNCTION credits_internal._float8_refused(value double precision, what text) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION 'invalid %: % as double precision', what, value USING ERRCODE = 'UC004',
        DETAIL = format('a double precision %s of 10^11 or more must be whole: pass a fraction that large as numeric', what);
END
$$;

CREATE OR REPLACE FUNCTION credits_internal._from_float8(value double precision, what text) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN abs(value) >= 1e11::double precision AND value <> trunc(value)
            THEN credits_internal._float8_refused(value, what)
            ELSE value::numeric END;

-- verify: recompute every account's balances from the ledger and report
-- each difference. No rows = every stored balance is what the ledger implies.
-- Each window counter is checked against the window it says it counts
-- (accounts.day / accounts.month), so the result does not depend on the clock.
CREATE OR REPLACE FUNCTION verify() RETURNS TABLE (account_id text, problem text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
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
          LEFT JOIN credits.ledger src ON d.kind = 'R' AND src.entry_id = d.ref
          LEFT JOIN credits.ledger h ON h.kind = 'H' AND h.entry_id = CASE d.kind WHEN 'D' THEN d.ref ELSE src.ref END
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
        SELECT a.account_id, format('daily_used of %s is %s, the ledger says %s',
                                    to_char(a.day, 'YYYY-MM-DD'), a.daily_used, d.daily_used)
          FROM credits.accounts a JOIN derived d USING (account_id)
         WHERE a.daily_used <> d.daily_used
        UNION ALL
        SELECT a.account_id, format('monthly_used of %s is %s, the ledger says %s',
                                    to_char(a.month, 'YYYY-MM'), a.monthly_used, d.monthly_used)
          FROM credits.accounts a JOIN derived d USING (account_id)
         WHERE a.monthly_used <> d.monthly_used
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
                            WHERE l.entry_id = ho.resolved_entry AND l.ref = ho.hold_id
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
          LEFT JOIN (SELECT gd.entry_id, sum(gd.amount) AS total
                       FROM credits.grant_draws gd GROUP BY gd.entry_id) dr ON dr.entry_id = l.entry_id
         WHERE l.kind IN ('D', 'R') AND coalesce(l.from_grants, 0) <> coalesce(abs(dr.total), 0)
        UNION ALL
        SELECT d.account_id, format('debit %s of %s has %s refunded', d.entry_id, d.amount, r.total)
          FROM credits.ledger d
          JOIN (SELECT l.ref, sum(l.amount) AS total FROM credits.ledger l
                 WHERE l.kind = 'R' GROUP BY l.ref) r ON r.ref = d.entry_id
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
    )
    SELECT p.account_id, p.problem FROM problems p ORDER BY p.account_id, p.problem;
END;

-- ledger_balance: an account's balance rebuilt from its ledger rows alone
-- (SPEC §1 "an append-only ledger from which every balance can be
-- recomputed"), as of `at`. An auditor's second opinion on balance(): it
-- shares no state with the tables that balance() reads (accounts, grants,
-- holds, grant_draws), only the plan catalog for the plan's limits.
--
-- It replays the entries in the order they were written (entry ids: every
-- write to an account holds its lock) by the rules of SPEC §1 and §4:
--   S  plan and purchases carried; a change restarts the monthly window at
--      the usage it recorded (0 for an upgrade);
--   P  purchase; one that recorded a usage set the window to it (§4.2);
--   G  a grant (amount, expiry in its metadata);
--   D  a charge: today's and this month's windows, or its hold's (§4.3); its
--      grant part drawn from the valid grants, soonest-expiring first;
--   R  a refund: back to the windows of its debit while they are current,
--      back to the grants drawn while they are valid (§4.5);
--   H  a hold; D or X with ref = the hold resolves it.
-- (E and F entries record what expired or was forfeited: no balance moves.)
CREATE OR REPLACE FUNCTION ledger_balance(account_id text, at timestamptz DEFAULT NULL)
RETURNS TABLE (plan text, purchased numeric, daily_used numeric, monthly_used numeric,
               granted_remaining numeric, reserved numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_account  text := ledger_balance.account_id;
    v_now      timestamptz := coalesce(ledger_balance.at, credits.now());
    l          credits.ledger;
    v_day      date;      -- the account's windows, as the entries move them
    v_month    date;
    v_daily    numeric := 0;
    v_monthly  numeric := 0;
    v_epoch    bigint := 0;
    v_plan     text;
    v_purchased numeric := 0;
    v_win      timestamptz;  -- the instant whose windows a charge counts in
    v_need     numeric;
    v_take     numeric;
    i          integer;
    -- grants: id, remaining, expiry, expired by an expiry entry
    g_id  bigint[] := '{}';  g_rem numeric[] := '{}';  g_exp timestamptz[] := '{}';  g_gone boolean[] := '{}';
    -- holds: id, amount, expiry, placed at, open
    h_id  bigint[] := '{}';  h_amt numeric[] := '{}';  h_exp timestamptz[] := '{}';  h_at timestamptz[] := '{}';
    h_open boolean[] := '{}';
    -- grant draws of each charge (refunds subtract): entry, grant, amount
    d_entry bigint[] := '{}';  d_grant bigint[] := '{}';  d_amt numeric[] := '{}';
    -- charges: entry, the instant whose windows it counted in
    c_entry bigint[] := '{}';  c_win timestamptz[] := '{}';
BEGIN
    PERFORM credits_internal._check_text(p_account, 'account_id');
    FOR l IN SELECT * FROM credits.ledger le WHERE le.account_id = p_account ORDER BY le.entry_id LOOP
        -- Windows only move forward (§4.6): entries stamped at an earlier
        -- deadline or boundary (E, X, F) do not move them back.
        IF v_day IS NULL OR credits_internal._utc_day(l.at) > v_day THEN
            v_day := credits_internal._utc_day(l.at);
            v_daily := 0;
        END IF;
        IF v_month IS NULL OR credits_internal._utc_month(l.at) > v_month THEN
            v_month := credits_internal._utc_month(l.at);
            v_monthly := 0;
            v_epoch := 0;
        END IF;
        CASE l.kind
        WHEN 'S' THEN
            v_plan := l.metadata ->> 'plan';
            v_purchased := (l.metadata ->> 'purchased')::numeric;
            IF l.metadata ? 'monthly_used' OR (l.metadata ->> 'upgrade')::boolean THEN
                v_monthly := coalesce((l.metadata ->> 'monthly_used')::numeric, 0);
                v_epoch := l.entry_id;
            END IF;
        WHEN 'P' THEN
            v_purchased := v_purchased + l.amount;
            IF l.metadata ? 'monthly_used' THEN
                v_monthly := (l.metadata ->> 'monthly_used')::numeric;
                v_epoch := l.entry_id;
            END IF;
        WHEN 'G' THEN
            g_id := g_id || l.entry_id;
            g_rem := g_rem || l.amount;
            g_exp := g_exp || (l.metadata ->> 'expires_at')::timestamptz;
            g_gone := g_gone || false;
        WHEN 'E' THEN
            IF NOT l.metadata ? 'refund' THEN
                g_gone[array_position(g_id, l.ref)] := true;
            END IF;
        WHEN 'H' THEN
            h_id := h_id || l.entry_id;
            h_amt := h_amt || l.amount;
            h_exp := h_exp || (l.metadata ->> 'expires_at')::timestamptz;
            h_at := h_at || l.at;
            h_open := h_open || true;
        WHEN 'X' THEN
            h_open[array_position(h_id, l.ref)] := false;
        WHEN 'D' THEN
            v_win := l.at;
            IF l.ref IS NOT NULL THEN
                i := array_position(h_id, l.ref);
                h_open[i] := false;
                v_win := h_at[i];
            END IF;
            c_entry := c_entry || l.entry_id;
            c_win := c_win || v_win;
            IF credits_internal._utc_day(v_win) = v_day THEN
                v_daily := v_daily + l.amount;
            END IF;
            IF credits_internal._utc_month(v_win) = v_month THEN
                v_monthly := v_monthly + l.amount - coalesce(l.from_grants, 0);
            END IF;
            -- its grant part, soonest-expiring first
            v_need := coalesce(l.from_grants, 0);
            CONTINUE WHEN v_need = 0;
            FOR i IN SELECT k FROM generate_subscripts(g_id, 1) k
                      WHERE g_rem[k] > 0 AND NOT g_gone[k] AND (g_exp[k] IS NULL OR g_exp[k] > l.at)
                      ORDER BY g_exp[k] NULLS LAST, g_id[k] LOOP
                EXIT WHEN v_need = 0;
                v_take := least(v_need, g_rem[i]);
                g_rem[i] := g_rem[i] - v_take;
                d_entry := d_entry || l.entry_id;  d_grant := d_grant || g_id[i];  d_amt := d_amt || v_take;
                v_need := v_need - v_take;
            END LOOP;
        WHEN 'R' THEN
            v_win := c_win[array_position(c_entry, l.ref)];
            IF credits_internal._utc_day(v_win) = v_day THEN
                v_daily := v_daily - l.amount;
            END IF;
            IF credits_internal._utc_month(v_win) = v_month AND l.ref > v_epoch THEN
                v_monthly := v_monthly - (l.amount - coalesce(l.from_grants, 0));
            END IF;
            -- back to the grants its debit drew, latest-expiring first, while valid
            v_need := coalesce(l.from_grants, 0);
            CONTINUE WHEN v_need = 0;
            FOR i IN SELECT k FROM generate_subscripts(g_id, 1) k
                      WHERE (SELECT coalesce(sum(d_amt[m]), 0) FROM generate_subscripts(d_entry, 1) m
                              WHERE d_entry[m] = l.ref AND d_grant[m] = g_id[k]) > 0
                      ORDER BY g_exp[k] DESC NULLS FIRST, g_id[k] DESC LOOP
                EXIT WHEN v_need = 0;
                SELECT least(v_need, sum(d_amt[m])) INTO v_take FROM generate_subscripts(d_entry, 1) m
                 WHERE d_entry[m] = l.ref AND d_grant[m] = g_id[i];
                d_entry := d_entry || l.ref;  d_grant := d_grant || g_id[i];  d_amt := d_amt || -v_take;
                IF NOT g_gone[i] AND (g_exp[i] IS NULL OR g_exp[i] > l.at) THEN
                    g_rem[i] := g_rem[i] + v_take;
                END IF;
                v_need := v_need - v_take;
            END LOOP;
        ELSE
            NULL;  -- F: forfeited, nothing moves
        END CASE;
    END LOOP;
    IF v_plan IS NULL THEN
        PERFORM credits_internal._raise_unknown_account(p_account);
    END IF;

    -- As of `at`, or the account's own time if that is later.
    v_now := greatest(v_now, (SELECT max(le.at) FROM credits.ledger le WHERE le.account_id = p_account));
    plan := v_plan;
    purchased := v_purchased;
    daily_used := CASE WHEN credits_internal._utc_day(v_now) = v_day THEN v_daily ELSE 0 END;
    monthly_used := CASE WHEN credits_internal._utc_month(v_now) = v_month THEN v_monthly ELSE 0 END;
    granted_remaining := coalesce((SELECT sum(g_rem[k]) FROM generate_subscripts(g_id, 1) k
                                    WHERE NOT g_gone[k] AND (g_exp[k] IS NULL OR g_exp[k] > v_now)), 0);
    reserved := coalesce((SELECT sum(h_amt[k]) FROM generate_subscripts(h_id, 1) k
                           WHERE h_open[k] AND h_exp[k] > v_now), 0);
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
    v_total numeric := s.allowance_available + s.grants_available;
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
    available := trim_scale(least(coalesce(s.daily_available, v_total), v_total));
    next_daily_reset := credits_internal._resets_at('daily', v_now);
    next_monthly_reset := credits_internal._resets_at('monthly', v_now);
    RETURN NEXT;
END
$$;

-- balance: the usage display of one account now (see _display).
CREATE OR REPLACE FUNCTION balance(account_id text)
RETURNS TABLE (plan text, daily_limit numeric, daily_used numeric, daily_remaining numeric,
               monthly_limit numeric, monthly_used numeric, monthly_remaining numeric,
               granted_remaining numeric, reserved numeric, available numeric,
               next_daily_reset timestamptz, next_monthly_reset timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT d.* FROM credits_internal._display(credits_internal._account(balance.account_id)) d;
END;

-- The plan an account was on at the end of `month` (now, for the current
-- month): its last plan change before the month ended. (Security definer:
-- the views call it with the reader's rights, who reads no table.)
CREATE OR REPLACE FUNCTION credits_internal._plan_in(p_account text, p_month date) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
RETURN (SELECT l.metadata ->> 'plan' FROM credits.ledger l
         WHERE l.account_id = p_account AND l.kind = 'S'
           AND l.at < (p_month + interval '1 month')::timestamp AT TIME ZONE 'UTC'
         ORDER BY l.entry_id DESC LIMIT 1);

CREATE OR REPLACE VIEW usage_display AS
SELECT a.account_id, d.*
  FROM credits.accounts a
 CROSS JOIN LATERAL credits_internal._display(a) d;

CREATE OR REPLACE VIEW usage_monthly AS
SELECT u.account_id,
       u.month,
       f.product,
       f.feature,
       coalesce(sum(u.amount) FILTER (WHERE u.kind = 'D'), 0) AS debited,
       coalesce(sum(u.amount) FILTER (WHERE u.kind = 'R'), 0) AS refunded,
       coalesce(sum(CASE u.kind WHEN 'D' THEN u.amount ELSE -u.amount END), 0) AS net,
       coalesce(sum(u.entries) FILTER (WHERE u.kind = 'D'), 0) AS debits,
       coalesce(sum(u.entries) FILTER (WHERE u.kind = 'R'), 0) AS refunds,
       credits_internal._plan_in(u.account_id, u.month) AS plan
  FROM credits_internal._ledger_months u
  JOIN credits.features f ON f.feature_id = u.feature_id
 WHERE u.kind IN ('D', 'R')
 GROUP BY u.account_id, u.month, f.product, f.feature;

CREATE OR REPLACE VIEW account_months AS
SELECT u.account_id,
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
       coalesce(sum(u.amount) FILTER (WHERE u.kind = 'E'), 0) AS expired,
       credits_internal._plan_in(u.account_id, u.month) AS plan
  FROM credits_internal._ledger_months u
 GROUP BY u.account_id, u.month;

CREATE OR REPLACE VIEW account_plans AS
SELECT a.account_id, a.plan, p.daily_limit, p.monthly_allowance, a.purchased,
       p.monthly_allowance + a.purchased AS monthly_limit, a.created_at
  FROM credits.accounts a
  JOIN credits.plans p ON p.plan = a.plan;

-- Month-end forfeits are recorded per window (closed_windows, with the plan
-- the month ended on), upgrade forfeits name the plan left; a hold of a
-- closed month forfeits what it did not use when it resolves.
CREATE OR REPLACE VIEW forfeits_monthly AS
SELECT credits_internal._report_month(l.kind, l.at, l.metadata) AS month,
       coalesce(l.metadata ->> 'plan', c.plan) AS plan,
       l.metadata ->> 'reason' AS cause,
       count(DISTINCT l.account_id) AS accounts,
       sum(l.amount) AS forfeited
  FROM credits.ledger l
  LEFT JOIN credits.closed_windows c
         ON c.account_id = l.account_id AND c.window_kind = 'monthly'
        AND c.window_start = credits_internal._report_month(l.kind, l.at, l.metadata)
 WHERE l.kind = 'F'
 GROUP BY 1, 2, 3;

-- A hold resolved by entry `p_entry` at `p_at`, of which `p_charged` was
-- charged (0 when freed): its windows that have closed get what they kept
-- aside for it; an allowance an upgrade replaced since it was placed loses
-- what the hold kept of it and did not use. Its month, if closed: `p_charged_allowance` is used, the rest
-- of what it held on the allowance is forfeited ('F', reason hold). Its day,
-- if closed (settles only): the charge is used there.
CREATE OR REPLACE FUNCTION credits_internal._hold_resolved(p_hold credits.holds, p_entry bigint, p_charged numeric,
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

-- Expire, for locked accounts, the holds and grants whose deadline is at or
-- before `at`: holds are freed ('X', reason expired), grants with credits
-- left are closed by an 'E' entry, both stamped at their deadline whoever
-- sees it first. Each resolves once. An account a grant's expiry leaves
-- with nothing available gets an exhausted event. Returns how many.
CREATE OR REPLACE FUNCTION credits_internal._expire_due(p_accounts text[], p_at timestamptz) RETURNS integer
LANGUAGE plpgsql SET jit = off SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_holds    integer;
    v_grants   integer;
    v_accounts text[];
    v_entries  bigint[];
    v_freed    bigint[];
    v_acct     credits.accounts;
    v_state    credits_internal._account_state;
BEGIN
    WITH due AS (
        SELECT h.account_id, h.hold_id, h.feature_id, h.amount, h.expires_at, h.month
          FROM credits.holds h
         WHERE h.account_id = ANY (p_accounts) AND h.resolved_entry IS NULL AND h.expires_at <= p_at
    ), freed AS (
        INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, ref, metadata)
        SELECT d.account_id, d.expires_at, 'X', d.feature_id, d.amount, d.hold_id, '{"reason": "expired"}'
          FROM due d
         ORDER BY d.account_id, d.hold_id
        RETURNING entry_id, account_id, ref, amount
    ), resolved AS (
        UPDATE credits.holds h SET resolved_entry = f.entry_id
          FROM freed f
         WHERE h.account_id = f.account_id AND h.hold_id = f.ref
    ), unreserved AS (
        UPDATE credits.accounts a SET reserved = a.reserved - f.total
          FROM (SELECT account_id, sum(amount) AS total FROM freed GROUP BY account_id) f
         WHERE a.account_id = f.account_id
    )
    SELECT count(*), array_agg(f.ref), array_agg(f.entry_id)
      INTO v_holds, v_freed, v_entries
      FROM freed f;
    -- What a hold kept aside of a month that has closed, or of an allowance an
    -- upgrade has replaced since, is forfeited (_hold_resolved).
    FOR i IN 1 .. coalesce(array_length(v_freed, 1), 0) LOOP
        PERFORM credits_internal._hold_resolved(h, v_entries[i], 0, 0, p_at)
           FROM credits.holds h WHERE h.hold_id = v_freed[i];
    END LOOP;

    WITH due AS (
        SELECT g.account_id, g.grant_id, g.kind, g.remaining, g.expires_at
          FROM credits.grants g
         WHERE g.account_id = ANY (p_accounts) AND g.expired_entry IS NULL AND g.expires_at <= p_at
    ), expired AS (
        INSERT INTO credits.ledger (account_id, at, kind, amount, ref, metadata)
        SELECT d.account_id, d.expires_at, 'E', d.remaining, d.grant_id, jsonb_build_object('grant_kind', d.kind)
          FROM due d
         WHERE d.remaining > 0
         ORDER BY d.account_id, d.expires_at, d.grant_id
        RETURNING entry_id, account_id, ref
    ), marked AS (
        UPDATE credits.grants g SET expired_entry = coalesce(e.entry_id, 0)
          FROM due d
          LEFT JOIN expired e ON e.account_id = d.account_id AND e.ref = d.grant_id
         WHERE g.account_id = d.account_id AND g.grant_id = d.grant_id
    )
    -- (per account, its last expiry entry: the one that may have run it out)
    SELECT (SELECT count(*) FROM due), array_agg(l.account_id ORDER BY l.account_id),
           array_agg(l.entry_id ORDER BY l.account_id)
      INTO v_grants, v_accounts, v_entries
      FROM (SELECT e.account_id, max(e.entry_id) AS entry_id FROM expired e GROUP BY e.account_id) l;
    FOR i IN 1 .. coalesce(array_length(v_accounts, 1), 0) LOOP
        SELECT * INTO v_acct FROM credits.accounts ac WHERE ac.account_id = v_accounts[i];
        v_state := credits_internal._state(v_acct, p_at);
        IF v_state.allowance_available + v_state.grants_available = 0 THEN
            PERFORM credits_internal._emit(v_acct, 'exhausted', 'monthly', NULL, p_at, v_state, v_entries[i]);
        END IF;
    END LOOP;
    RETURN v_holds + v_grants;
END
$$;

COMMENT ON VIEW account_plans IS 'Every account''s plan and limits now (no balance computed).';
COMMENT ON VIEW forfeits_monthly IS 'Forfeited allowance per UTC month, plan and cause (month_end, upgrade, hold).';
-- Reports: each account's plan in a month (its plan changes), forfeits
-- (src/schema/schema.sql). Built while the ledger is locked: on a large
-- ledger, minutes (docs/upgrade.md).
CREATE INDEX ledger_plans_idx ON ledger (account_id, entry_id) WHERE kind = 'S';
CREATE INDEX ledger_forfeits_idx ON ledger (account_id, entry_id) WHERE kind = 'F';

-------------------------------------------------------------------------------
-- Amounts as double precision (src/metering/float_amounts.sql).
-------------------------------------------------------------------------------

-- Amounts and quantities passed as double precision (a Python float, a
-- JavaScript number; an untyped string resolves here too, as PostgreSQL
-- prefers double precision among numeric types): without these a call
-- fails with 42883 ("function does not exist"), as there is no implicit
-- cast from double precision to numeric. Each converts the value
-- (credits_internal._from_float8: exact below 10^11 or whole, UC004 for a
-- fraction on a larger value) and calls the numeric form, which checks it
-- like any other amount (UC004 beyond 4 decimal places, NaN, infinities).
-- Each is inlined into the calling statement, so a debit this way takes
-- the same fast path. The quantity has no default here, so a call without
-- one is not ambiguous.

CREATE FUNCTION debit(account_id text, feature text, quantity double precision,
                      idempotency_key text DEFAULT NULL, metadata jsonb DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.debit(account_id, feature, credits_internal._from_float8(quantity, 'quantity'),
                     idempotency_key, metadata);

CREATE FUNCTION try_debit(account_id text, feature text, quantity double precision,
                          idempotency_key text DEFAULT NULL, metadata jsonb DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.try_debit(account_id, feature, credits_internal._from_float8(quantity, 'quantity'),
                         idempotency_key, metadata);

CREATE FUNCTION "check"(account_id text, feature text, quantity double precision)
RETURNS TABLE (allowed boolean, cost numeric, available numeric, limiting_window text, resets_at timestamptz)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM credits."check"(account_id, feature, credits_internal._from_float8(quantity, 'quantity'));
END;

CREATE FUNCTION reserve(account_id text, feature text, amount double precision,
                        ttl interval DEFAULT '15 minutes', idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.reserve(account_id, feature, credits_internal._from_float8(amount, 'amount'), ttl, idempotency_key);

CREATE FUNCTION try_reserve(account_id text, feature text, amount double precision,
                            ttl interval DEFAULT '15 minutes', idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.try_reserve(account_id, feature, credits_internal._from_float8(amount, 'amount'), ttl,
                           idempotency_key);

CREATE FUNCTION settle(hold_id bigint, amount double precision)
RETURNS bigint LANGUAGE sql
RETURN credits.settle(hold_id, credits_internal._from_float8(amount, 'amount'));

CREATE FUNCTION refund(entry_id bigint, amount double precision, reason text DEFAULT NULL,
                       idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.refund(entry_id, credits_internal._from_float8(amount, 'amount'), reason, idempotency_key);

CREATE FUNCTION purchase(account_id text, credits double precision, idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.purchase(account_id, credits_internal._from_float8(credits, 'credits'), idempotency_key);

CREATE FUNCTION reduce_purchase(account_id text, credits double precision, idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.reduce_purchase(account_id, credits_internal._from_float8(credits, 'credits'), idempotency_key);

CREATE FUNCTION "grant"(account_id text, amount double precision, kind text DEFAULT 'promotional',
                        expires_at timestamptz DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits."grant"(account_id, credits_internal._from_float8(amount, 'amount'), kind, expires_at,
                       idempotency_key);

-------------------------------------------------------------------------------
-- Privileges (src/security/privileges.sql) and comments (src/schema/comments.sql).
-------------------------------------------------------------------------------

REVOKE ALL ON ALL ROUTINES IN SCHEMA credits, credits_internal FROM PUBLIC;
GRANT USAGE ON SCHEMA credits TO credits_billing;
GRANT EXECUTE ON FUNCTION
    credits.debit(text, text, numeric, text, jsonb),
    credits.debit(text, text, double precision, text, jsonb),
    credits.try_debit(text, text, numeric, text, jsonb),
    credits.try_debit(text, text, double precision, text, jsonb),
    credits.refund(bigint, numeric, text, text),
    credits.refund(bigint, double precision, text, text),
    credits.reserve(text, text, numeric, interval, text),
    credits.reserve(text, text, double precision, interval, text),
    credits.try_reserve(text, text, numeric, interval, text),
    credits.try_reserve(text, text, double precision, interval, text),
    credits.settle(bigint, numeric),
    credits.settle(bigint, double precision),
    credits.release(bigint)
TO credits_app, credits_admin;
-- Amounts as double precision (src/metering/float_amounts.sql): the
-- conversion, inlined into each caller's statement, runs with its rights.
GRANT EXECUTE ON FUNCTION
    credits_internal._from_float8(double precision, text),
    credits_internal._float8_refused(double precision, text)
TO credits_app, credits_billing, credits_admin;
-- What the application and the billing system read, for any account.
GRANT EXECUTE ON FUNCTION
    credits."check"(text, text, numeric),
    credits."check"(text, text, double precision),
    credits.balance(text),
    credits.history(text, bigint, integer),
    credits.grants(text),
    credits.bandwidth_allowance(text)
TO credits_app, credits_billing, credits_admin;
GRANT SELECT ON credits.plans, credits.features TO credits_app, credits_billing;
-- The application's event feed: a listener reads back what a notification
-- names (any role can pg_notify on the channel).
GRANT SELECT ON credits.events TO credits_app;
-- The account lifecycle, for billing webhooks (and operators).
GRANT EXECUTE ON FUNCTION
    credits.subscribe(text, text, boolean, text),
    credits.purchase(text, numeric, text),
    credits.purchase(text, double precision, text),
    credits.reduce_purchase(text, numeric, text),
    credits.reduce_purchase(text, double precision, text),
    credits."grant"(text, numeric, text, timestamptz, text),
    credits."grant"(text, double precision, text, timestamptz, text),
    credits.void_grant(bigint, text)
TO credits_billing, credits_admin;
GRANT SELECT ON credits.account_plans, credits.forfeits_monthly TO credits_reader, credits_admin;
GRANT EXECUTE ON FUNCTION credits_internal._display(credits.accounts), credits_internal._plan_in(text, date)
TO credits_reader, credits_admin;

COMMENT ON FUNCTION credits.subscribe(text, text, boolean, text) IS
'Create the account on a plan, or change its plan: an upgrade (above every limit held this month) starts a fresh allowance and forfeits the rest; any other move keeps the month''s usage. fresh_allowance overrides; an idempotency key makes a retry take effect once. Billing, admin.';
COMMENT ON FUNCTION credits.purchase(text, numeric, text) IS
'Raise the recurring monthly limit by the credits bought, at once and in full; UC006 on plans that may not buy. Returns the ledger entry id; an idempotency key replays it. Billing, admin.';
COMMENT ON FUNCTION credits.purchase(text, double precision, text) IS
'purchase with the credits as double precision (checked for 4 decimal places).';
COMMENT ON FUNCTION credits.reduce_purchase(text, numeric, text) IS
'Lower the recurring purchase from the next month on; what is available this month stays (an adjustment grant until the month ends). Returns the ledger entry id; UC013 beyond what is purchased. Billing, admin.';
COMMENT ON FUNCTION credits.reduce_purchase(text, double precision, text) IS
'reduce_purchase with the credits as double precision.';
COMMENT ON FUNCTION credits.void_grant(bigint, text) IS
'Remove what is left of a grant (an expiry entry with the reason); voiding it again returns the same entry; UC012 if it has expired. Billing, admin.';
COMMENT ON FUNCTION credits."grant"(text, double precision, text, timestamptz, text) IS
'grant with the amount as double precision.';
COMMENT ON FUNCTION credits.debit(text, text, double precision, text, jsonb) IS
'debit with the quantity as double precision (a Python float; checked for 4 decimal places).';
COMMENT ON FUNCTION credits.try_debit(text, text, double precision, text, jsonb) IS
'try_debit with the quantity as double precision.';
COMMENT ON FUNCTION credits."check"(text, text, numeric) IS
'What a debit would do now, writing nothing: allowed, cost, available, the limiting window and when it resets.';
COMMENT ON FUNCTION credits."check"(text, text, double precision) IS
'check with the quantity as double precision.';
COMMENT ON FUNCTION credits.refund(bigint, numeric, text, text) IS
'Give back (part of) a debit: to the grants it drew while they are valid, then to its window while current. NULL amount = what is left; repeating it returns the same entry; an idempotency key makes a partial refund safe to retry.';
COMMENT ON FUNCTION credits.refund(bigint, double precision, text, text) IS
'refund with the amount as double precision.';
COMMENT ON FUNCTION credits.reserve(text, text, double precision, interval, text) IS
'reserve with the amount as double precision.';
COMMENT ON FUNCTION credits.try_reserve(text, text, double precision, interval, text) IS
'try_reserve with the amount as double precision.';
COMMENT ON FUNCTION credits.settle(bigint, numeric) IS
'Charge the actual amount of a hold and free the rest; up to the hold''s amount it always succeeds; 0 releases it. Returns the resolving ledger entry id; settling again for the same amount returns it again; UC008 if the hold was resolved otherwise.';
COMMENT ON FUNCTION credits.settle(bigint, double precision) IS
'settle with the amount as double precision.';
COMMENT ON FUNCTION credits.release(bigint) IS
'Free a hold without charge; releasing it again changes nothing; UC008 if it was settled or expired.';
COMMENT ON FUNCTION credits.history(text, bigint, integer) IS
'An account''s transactions newest first, kinds as words, features by name, the windows each counted in; keyset-paginated by before_entry.';
COMMENT ON FUNCTION credits.grants(text) IS
'Each grant of an account: kind, amount, remaining, expiry, status (active, used, expired, void).';
