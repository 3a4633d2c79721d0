-- Internal helpers shared by every public function. Not part of the API
-- (names start with an underscore); kept here so each rule has one copy.

-- A window counter counts only while its window is the current one: a counter
-- stored for an earlier day or month reads as zero. (One stored for a later
-- window than `current_window` is the current one: see _account_now.)
-- Inlined by the planner.
CREATE FUNCTION credits_internal._in_window(stored_window date, current_window date, used numeric)
RETURNS numeric LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN stored_window >= current_window THEN used ELSE 0 END;

-- UTC calendar windows. AT TIME ZONE 'UTC' makes them independent of the
-- session's TimeZone.
CREATE FUNCTION credits_internal._utc_day(at timestamptz) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (at AT TIME ZONE 'UTC')::date;

CREATE FUNCTION credits_internal._utc_month(at timestamptz) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN date_trunc('month', at AT TIME ZONE 'UTC')::date;

-- Time only moves forward per account (SPEC §4.6): a call whose clock is
-- behind the account (a transaction that began before 00:00 UTC and reaches
-- an account another session already rolled over, or one that began before
-- the last write to the account; a clock set back) is counted at the
-- account's time: the start of its windows or its last write, whichever is
-- later, and its ledger entry is stamped there. So no call reopens a closed
-- window or un-expires a hold, and an account's entries are in time order.
-- Every call that locks an account (_lock_account) and the debit fast path
-- set last_at to the time they decide at.
CREATE FUNCTION credits_internal._time_of(p_last_at timestamptz, p_day date, p_month date, p_now timestamptz)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN greatest(p_now, p_last_at, p_day::timestamp AT TIME ZONE 'UTC', p_month::timestamp AT TIME ZONE 'UTC');

-- (of a row; _time_of for a statement that writes the row: Citus cannot
-- ship a whole row of a distributed table to a function)
CREATE FUNCTION credits_internal._account_now(a credits.accounts, p_now timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN credits_internal._time_of(a.last_at, a.day, a.month, p_now);

-- The instant a reader sees an account at: _account_now, moved on by the
-- latest debit of its stripes (src/metering/stripes.rs), which a striped
-- debit records on its stripe, not on the account row (_lock_account folds
-- it into last_at). balance(), check() and grants() read at this instant.
CREATE FUNCTION credits_internal._reader_now(a credits.accounts, p_now timestamptz) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF a.stripes > 0 OR a.stripe_budget > 0 THEN
        RETURN greatest(credits_internal._account_now(a, p_now),
                        (SELECT max(s.last_at) FROM credits.stripes s WHERE s.account_id = a.account_id));
    END IF;
    RETURN credits_internal._account_now(a, p_now);
END
$$;

-- Instants in messages: UTC, whatever the session's TimeZone and DateStyle.

CREATE FUNCTION credits_internal._utc_text(at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN isfinite(at) THEN to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS "UTC"') ELSE at::text END;

-- Instants in JSON (error details, check(), events): ISO 8601 in UTC,
-- '2026-12-01T00:00:00Z', whatever the session's settings (jsonb writes a
-- timestamp in ISO form and drops a zero fraction).
CREATE FUNCTION credits_internal._iso(at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN isfinite(at) THEN (to_jsonb(at AT TIME ZONE 'UTC') #>> '{}') || 'Z' ELSE at::text END;

-- When the window of `p_window` kind that holds `p_now` resets: the next
-- 00:00 UTC, or the next 1st of a month at 00:00 UTC.
CREATE FUNCTION credits_internal._resets_at(p_window text, p_now timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE p_window
    WHEN 'daily' THEN (credits_internal._utc_day(p_now) + 1)::timestamp AT TIME ZONE 'UTC'
    WHEN 'monthly' THEN (credits_internal._utc_month(p_now) + interval '1 month') AT TIME ZONE 'UTC'
END;

-- UC004: amounts are positive, finite and exact to 4 decimal places.
CREATE FUNCTION credits_internal._check_amount(value numeric, what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION 'invalid %: NULL', what USING ERRCODE = 'UC004',
            DETAIL = format('%s must be a positive number with at most 4 decimal places', what);
    ELSIF value = 'NaN'::numeric OR value IN ('Infinity'::numeric, '-Infinity'::numeric) THEN
        RAISE EXCEPTION 'invalid %: %', what, value USING ERRCODE = 'UC004',
            DETAIL = format('%s must be a finite number', what);
    ELSIF value <= 0 THEN
        RAISE EXCEPTION 'invalid %: %', what, value USING ERRCODE = 'UC004',
            DETAIL = format('%s must be greater than zero', what);
    ELSIF scale(trim_scale(value)) > 4 THEN
        RAISE EXCEPTION 'invalid %: %', what, value USING ERRCODE = 'UC004',
            DETAIL = format('%s has more than 4 decimal places', what);
    ELSIF value >= 1e15 THEN
        RAISE EXCEPTION 'invalid %: %', what, value USING ERRCODE = 'UC004',
            DETAIL = format('%s must be below 10^15', what);
    END IF;
END
$$;

-- An amount passed as double precision (a Python float, a JavaScript
-- number or an untyped string, which PostgreSQL reads as double precision
-- when a function has both forms), as numeric. Below 10^11, or whole, a
-- double converts to exactly the decimal it was written as (it carries 15
-- significant digits); a fraction on a larger value may already be lost,
-- so it is refused (UC004) rather than charged rounded. Inlined into its
-- caller: the check costs nothing on the way to the fast path.
CREATE FUNCTION credits_internal._float8_refused(value double precision, what text) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION 'invalid %: % as double precision', what, value USING ERRCODE = 'UC004',
        DETAIL = format('a double precision %s of 10^11 or more must be whole: pass a fraction that large as numeric', what);
END
$$;

CREATE FUNCTION credits_internal._from_float8(value double precision, what text) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN abs(value) >= 1e11::double precision AND value <> trunc(value)
            THEN credits_internal._float8_refused(value, what)
            ELSE value::numeric END;

-- UC009: identifiers and other text arguments.
CREATE FUNCTION credits_internal._check_text(value text, what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL OR value = '' THEN
        RAISE EXCEPTION 'invalid %: %', what, coalesce(quote_literal(value), 'NULL')
            USING ERRCODE = 'UC009', DETAIL = format('%s must be a non-empty string', what);
    ELSIF octet_length(value) > 255 THEN
        RAISE EXCEPTION 'invalid %: % bytes long', what, octet_length(value)
            USING ERRCODE = 'UC009', DETAIL = format('%s must be at most 255 bytes', what);
    END IF;
END
$$;

-- UC009: metadata is a JSON object (or NULL) of at most 4 kB as JSON text,
-- however it is stored or compressed: it is stored on the ledger row it
-- comes with. The predicate is shared with the debit fast path, which
-- cannot raise (both in src/metering/requests.rs).
CREATE FUNCTION credits_internal._metadata_ok(value jsonb) RETURNS boolean
LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'credits_metadata_ok';

CREATE FUNCTION credits_internal._check_metadata(value jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF NOT credits_internal._metadata_ok(value) THEN
        RAISE EXCEPTION 'invalid metadata: a JSON % of % bytes', jsonb_typeof(value), octet_length(value::text)
            USING ERRCODE = 'UC009', DETAIL = 'metadata must be a JSON object of at most 4096 bytes, or NULL';
    END IF;
END
$$;

-- credits.thresholds as a sorted numeric array (src/metering/thresholds.rs:
-- in Rust, as the debit fast path reads it on every call).
CREATE FUNCTION credits_internal._thresholds() RETURNS numeric[]
LANGUAGE c STRICT STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'thresholds_wrapper';

-- Fingerprint of a request, stored with its idempotency key (UC005):
-- md5 of the parts joined by chr(31), NULL as chr(30), as a uuid
-- (src/metering/requests.rs, shared with the debit fast path).
CREATE FUNCTION credits_internal._fingerprint(VARIADIC parts text[]) RETURNS uuid
LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'credits_fingerprint';

-- The replay half of idempotency: the entry a key already produced, NULL if
-- the key is new, UC005 if the key was used for a different request.
-- Callers hold the account lock, so a concurrent twin has committed or not.
CREATE FUNCTION credits_internal._replay(p_account text, p_key text, p_request uuid) RETURNS bigint
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

-- A ledger entry's kind as a word (history, errors): what a customer or a
-- client reads instead of the one-letter code.
CREATE FUNCTION credits_internal._kind_word(kind "char", metadata jsonb) RETURNS text
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

-- UC011: the entry a call names is not of the kind it acts on (or, with
-- an account, not one of its entries).
CREATE FUNCTION credits_internal._raise_wrong_entry(p_entry bigint, p_wanted text, p_account text DEFAULT NULL)
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

-- UC002, the one message for an account that does not exist.
CREATE FUNCTION credits_internal._raise_unknown_account(p_account text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'unknown account: %', quote_literal(p_account)
        USING ERRCODE = 'UC002', HINT = 'Create it with credits.subscribe(account_id, plan).';
END
$$;

-- Read an account for reporting (no lock): UC009 / UC002 when there is none.
CREATE FUNCTION credits_internal._account(p_account text) RETURNS credits.accounts
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v credits.accounts;
BEGIN
    PERFORM credits_internal._check_text(p_account, 'account_id');
    SELECT * INTO v FROM credits.accounts a WHERE a.account_id = p_account;
    IF NOT FOUND THEN
        PERFORM credits_internal._raise_unknown_account(p_account);
    END IF;
    RETURN v;
END
$$;

-- Record an idempotency key with the entry it produced (same transaction).
-- Helpers called on every request are plpgsql, not SQL functions: PostgreSQL
-- parses and plans a SQL function's statement again in every transaction
-- (_state's was 75% of a reserve), a plpgsql one keeps its plan.
CREATE FUNCTION credits_internal._remember_key(p_account text, p_key text, p_entry bigint, p_request uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO credits.idempotency (account_id, idempotency_key, entry_id, request)
    VALUES (p_account, p_key, p_entry, p_request);
END
$$;

-- The state of one account at an instant, windows rolled: what balance()
-- shows and what the slow debit path decides on. A daily limit caps all
-- spending. Open holds (before their deadline) are promises, not earmarks
-- (SPEC §4.3, §4.4): today's count against the daily limit, this month's
-- against the allowance for what they do not hold on grants, every hold's
-- grant part against grants; a hold larger than a new, smaller limit keeps
-- what it reserved without making anything negative, so credits granted or
-- bought later are usable at once.
CREATE TYPE credits_internal._account_state AS (
    plan              text,
    daily_limit       numeric,
    daily_used        numeric,
    monthly_limit     numeric,
    monthly_used      numeric,
    granted_remaining numeric,
    reserved          numeric,
    daily_available   numeric,  -- NULL when the plan has no daily limit
    allowance_available numeric,
    grants_available  numeric,
    reserved_allowance numeric, -- this month's open holds, on the allowance
    reserved_grants   numeric,  -- every open hold's part on grants
    reserved_today    numeric   -- today's open holds (against the daily limit)
);

CREATE FUNCTION credits_internal._state(a credits.accounts, p_now timestamptz) RETURNS credits_internal._account_state
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

-- What a debit could take in state `s`: every window applies, grants count
-- after the allowance, open holds are subtracted.
CREATE FUNCTION credits_internal._available(s credits_internal._account_state) RETURNS numeric
LANGUAGE sql IMMUTABLE
RETURN least(coalesce(s.daily_available, s.allowance_available + s.grants_available),
             s.allowance_available + s.grants_available);

-- The window that caps what is available in state `s`.
CREATE FUNCTION credits_internal._limiting_window(s credits_internal._account_state) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN s.daily_available < s.allowance_available + s.grants_available THEN 'daily' ELSE 'monthly' END;

-- An account's alert level (credits.set_alert) in state `s`: the higher of
-- its credits and its percentage of the monthly limit; NULL: no alert.
CREATE FUNCTION credits_internal._alert_level(a credits.accounts, s credits_internal._account_state) RETURNS numeric
LANGUAGE sql IMMUTABLE
RETURN greatest(a.alert_remaining, trim_scale(s.monthly_limit * a.alert_percent / 100));

-- The window that refuses `p_amount` in state `s` (NULL = it fits): the
-- monthly one when it lacks it (waiting for tomorrow would not help), else
-- the daily one. What UC001, check() and denied events name.
CREATE FUNCTION credits_internal._lacking_window(s credits_internal._account_state, p_amount numeric) RETURNS text
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
CREATE FUNCTION credits_internal._window_facts(s credits_internal._account_state, p_window text,
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
CREATE FUNCTION credits_internal._raise_insufficient(p_amount numeric, p_what text,
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
