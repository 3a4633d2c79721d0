-- credits 0.1.0 -> 0.2.0
--
-- Every schema change made after 0.1.0 goes here as well as into the code
-- that creates a fresh install, so that an upgraded database and a fresh
-- one are identical (tests/client/tests/upgrade.rs compares them).

-- The roles are cluster-wide and may have been dropped since 0.1.0 was
-- installed; the grants below need them (as in src/security/privileges.sql).
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['credits_app', 'credits_reader', 'credits_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;

-------------------------------------------------------------------------------
-- Reporting views (src/reporting/views.sql) and their privileges
-- (src/security/privileges.sql).
-------------------------------------------------------------------------------

-- Reporting views for analysts (the credits_reader role). All amounts are
-- credits; all periods are UTC calendar days and months. They read the
-- ledger, so they are exact and include everything committed.
--   usage_daily / usage_monthly  usage per account and period by product
--                                and feature: debited, refunded, net;
--   account_months               per account and month: usage, refunds,
--                                forfeited allowance, grants, purchases,
--                                expired grant credits;
--   tenant_months                the same summed over all accounts;
--   usage_display                every account's balance() as of now.

CREATE VIEW usage_daily AS
SELECT l.account_id,
       credits._utc_day(l.at) AS day,
       f.product,
       f.feature,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'D'), 0) AS debited,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'R'), 0) AS refunded,
       coalesce(sum(CASE l.kind WHEN 'D' THEN l.amount ELSE -l.amount END), 0) AS net,
       count(*) FILTER (WHERE l.kind = 'D') AS debits,
       count(*) FILTER (WHERE l.kind = 'R') AS refunds
  FROM credits.ledger l
  JOIN credits.features f ON f.feature_id = l.feature_id
 WHERE l.kind IN ('D', 'R')
 GROUP BY l.account_id, credits._utc_day(l.at), f.product, f.feature;
COMMENT ON VIEW usage_daily IS 'Usage per account, UTC day, product and feature: debited, refunded (on the day of the refund), net.';

CREATE VIEW usage_monthly AS
SELECT u.account_id,
       date_trunc('month', u.day)::date AS month,
       u.product,
       u.feature,
       sum(u.debited) AS debited,
       sum(u.refunded) AS refunded,
       sum(u.net) AS net,
       sum(u.debits) AS debits,
       sum(u.refunds) AS refunds
  FROM credits.usage_daily u
 GROUP BY u.account_id, date_trunc('month', u.day), u.product, u.feature;
COMMENT ON VIEW usage_monthly IS 'Usage per account, UTC month, product and feature.';

CREATE VIEW account_months AS
SELECT l.account_id,
       -- a month-end forfeit is stamped at the next month's first instant; it belongs to the month it ends
       CASE WHEN l.kind = 'F' AND l.metadata ->> 'reason' = 'month_end'
            THEN to_date(l.metadata ->> 'month', 'YYYY-MM') ELSE credits._utc_month(l.at) END AS month,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'D'), 0) AS debited,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'R'), 0) AS refunded,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'D'), 0)
         - coalesce(sum(l.amount) FILTER (WHERE l.kind = 'R'), 0) AS net_usage,
       coalesce(sum(l.from_grants) FILTER (WHERE l.kind = 'D'), 0)
         - coalesce(sum(l.from_grants) FILTER (WHERE l.kind = 'R'), 0) AS net_from_grants,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'F'), 0) AS forfeited,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'G'), 0) AS granted,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'P'), 0) AS purchased,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'E'), 0) AS expired
  FROM credits.ledger l
 GROUP BY 1, 2;
COMMENT ON VIEW account_months IS 'Per account and UTC month: usage, refunds, forfeited allowance, grants, purchases, expired grant credits.';

CREATE VIEW tenant_months AS
SELECT m.month,
       count(*) FILTER (WHERE m.debited > 0) AS active_accounts,
       sum(m.debited) AS debited,
       sum(m.refunded) AS refunded,
       sum(m.net_usage) AS net_usage,
       sum(m.forfeited) AS forfeited,
       sum(m.granted) AS granted,
       sum(m.purchased) AS purchased,
       sum(m.expired) AS expired
  FROM credits.account_months m
 GROUP BY m.month;
COMMENT ON VIEW tenant_months IS 'All accounts per UTC month: active accounts, usage, refunds, forfeits, grants, purchases, expiries.';

CREATE VIEW usage_display AS
SELECT a.account_id, b.*
  FROM credits.accounts a
 CROSS JOIN LATERAL credits.balance(a.account_id) b;
COMMENT ON VIEW usage_display IS 'balance() of every account as of credits.now(): the usage display.';

GRANT SELECT ON credits.usage_daily, credits.usage_monthly, credits.account_months,
                credits.tenant_months, credits.usage_display
TO credits_reader, credits_admin;
GRANT EXECUTE ON FUNCTION credits._utc_day(timestamptz), credits._utc_month(timestamptz),
                          credits.balance(text)
TO credits_reader, credits_admin;

-------------------------------------------------------------------------------
-- Keyed debits take the fast path (src/metering/metering.sql).
-------------------------------------------------------------------------------

-- The fingerprint a debit's idempotency key is stored with (UC005 on a mismatch).
CREATE OR REPLACE FUNCTION _debit_request(p_feature text, p_quantity numeric, p_metadata jsonb) RETURNS uuid
LANGUAGE sql IMMUTABLE
RETURN credits._fingerprint('debit', p_feature, trim_scale(p_quantity)::text, p_metadata::text);

-- The slow path: full validation, grants, precise errors.
CREATE OR REPLACE FUNCTION _debit_slow(p_account text, p_feature text, p_quantity numeric, p_key text,
                            p_metadata jsonb, p_raise boolean, p_now timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_feature credits.features;
    v_amount  numeric;
    v_acct    credits.accounts;
    v_state   credits._account_state;
    v_request uuid;
    v_entry   bigint;
BEGIN
    PERFORM credits._check_text(p_account, 'account_id');
    v_feature := credits._feature(p_feature);
    PERFORM credits._check_amount(p_quantity, 'quantity');
    v_amount := trim_scale(v_feature.cost * p_quantity);
    IF scale(v_amount) > 4 THEN
        RAISE EXCEPTION 'invalid amount: % (cost % x quantity %)', v_amount, v_feature.cost, p_quantity
            USING ERRCODE = 'UC004', DETAIL = 'the charge must be exact to 4 decimal places';
    END IF;
    PERFORM credits._check_metadata(p_metadata);
    IF p_key IS NOT NULL THEN
        PERFORM credits._check_text(p_key, 'idempotency_key');
    END IF;

    v_acct := credits._lock_account(p_account, p_now);
    IF p_key IS NOT NULL THEN
        v_request := credits._debit_request(p_feature, p_quantity, p_metadata);
        v_entry := credits._replay(p_account, p_key, v_request);
        IF v_entry IS NOT NULL THEN
            RETURN v_entry;
        END IF;
    END IF;

    v_state := credits._state(v_acct, p_now);
    IF credits._lacking_window(v_state, v_amount) IS NOT NULL THEN
        IF NOT p_raise THEN
            PERFORM credits._denied(p_account, v_amount, p_now);
            RETURN NULL;
        END IF;
        PERFORM credits._raise_insufficient(p_account, v_amount, p_feature, v_state, p_now);
    END IF;
    v_entry := credits._charge(p_account, v_state, v_feature.feature_id, v_amount, p_metadata, NULL, p_now);
    PERFORM credits._after_write(p_account, p_now);

    IF p_key IS NOT NULL THEN
        PERFORM credits._remember_key(p_account, p_key, v_entry, v_request);
    END IF;
    RETURN v_entry;
END
$$;

CREATE OR REPLACE FUNCTION _debit(p_account text, p_feature text, p_quantity numeric, p_key text,
                       p_metadata jsonb, p_raise boolean)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_now   timestamptz := credits.now();
    v_day   date := credits._utc_day(v_now);
    v_month date := credits._utc_month(v_now);
    v_entry bigint;
    v_used  numeric;
    v_limit numeric;
    v_day_full boolean;
    v_request uuid;
    v_fast  boolean := true;
    v_try   integer;
BEGIN
    IF p_key IS NOT NULL THEN
        -- A keyed debit takes the fast path too when its key is new. The
        -- account is locked first: every writer of keys holds that lock, so
        -- the lookup cannot race, and locks are taken in the slow path's
        -- order (account, then key). Replays and UC005 are the slow path's.
        IF octet_length(p_key) BETWEEN 1 AND 255 THEN
            PERFORM FROM credits.accounts a WHERE a.account_id = p_account FOR UPDATE;
            v_fast := FOUND AND NOT EXISTS (SELECT FROM credits.idempotency i
                                             WHERE i.account_id = p_account AND i.idempotency_key = p_key);
            v_request := credits._debit_request(p_feature, p_quantity, p_metadata);
        ELSE
            v_fast := false;
        END IF;
    END IF;
    -- Fast path: everything from the monthly allowance, no error to report.
    -- An account with a window to close (the first call of a day or month)
    -- or a deadline passed is brought up to date once, then tried again.
    FOR v_try IN 1..2 LOOP
        EXIT WHEN NOT v_fast;
        WITH f AS (
            SELECT f.feature_id, trim_scale(f.cost * p_quantity) AS amount
              FROM credits.features f
             WHERE f.feature = p_feature
               AND p_quantity > 0 AND p_quantity < 1e15
               AND round(f.cost * p_quantity, 4) = f.cost * p_quantity
               AND credits._metadata_ok(p_metadata)
        ), u AS (
            UPDATE credits.accounts a
               SET day = v_day,
                   daily_used = credits._in_window(a.day, v_day, a.daily_used) + f.amount,
                   month = v_month,
                   monthly_used = credits._in_window(a.month, v_month, a.monthly_used) + f.amount,
                   monthly_epoch = CASE WHEN a.month = v_month THEN a.monthly_epoch ELSE 0 END
              FROM f, credits.plans p
             WHERE a.account_id = p_account
               AND p.plan = a.plan
               AND NOT credits._windows_passed(a, v_now)  -- closing a window is the slow path's work
               AND (p.daily_limit IS NULL
                    OR credits._in_window(a.day, v_day, a.daily_used) + a.reserved + f.amount <= p.daily_limit)
               AND credits._in_window(a.month, v_month, a.monthly_used) + a.reserved + f.amount
                   <= p.monthly_allowance + a.purchased
            RETURNING a.account_id, f.feature_id, f.amount,
                      a.monthly_used + a.reserved AS committed,
                      p.monthly_allowance + a.purchased AS monthly_limit,
                      coalesce(a.daily_used + a.reserved >= p.daily_limit, false) AS day_full
        ), l AS (
            INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, metadata)
            SELECT u.account_id, v_now, 'D', u.feature_id, u.amount, p_metadata FROM u
            RETURNING entry_id, account_id
        ), k AS (
            INSERT INTO credits.idempotency (account_id, idempotency_key, entry_id, request)
            SELECT l.account_id, p_key, l.entry_id, v_request FROM l WHERE p_key IS NOT NULL
        )
        SELECT l.entry_id, u.committed, u.monthly_limit, u.day_full FROM l, u
          INTO v_entry, v_used, v_limit, v_day_full;
        IF v_entry IS NOT NULL THEN
            -- Events are checked only near a threshold or a full window.
            IF v_day_full OR v_used * 100 >= v_limit * (credits._thresholds())[1] THEN
                PERFORM credits._after_write(p_account, v_now);
            END IF;
            RETURN v_entry;
        END IF;
        v_fast := v_try = 1 AND EXISTS (SELECT FROM credits.accounts a WHERE a.account_id = p_account
                                          AND (credits._windows_passed(a, v_now) OR credits._expiry_due(a, v_now)));
        IF v_fast THEN
            PERFORM credits._lock_account(p_account, v_now);
        END IF;
    END LOOP;
    RETURN credits._debit_slow(p_account, p_feature, p_quantity, p_key, p_metadata, p_raise, v_now);
END
$$;

REVOKE ALL ON FUNCTION credits._debit_request(text, numeric, jsonb) FROM PUBLIC;

-------------------------------------------------------------------------------
-- credits._thresholds() is Rust now (src/metering/thresholds.rs): the debit
-- fast path calls it on every debit.
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION _thresholds() RETURNS numeric[]
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'thresholds_wrapper';

-------------------------------------------------------------------------------
-- _close_windows computes each window's end once (src/maintenance/maintenance.sql).
-------------------------------------------------------------------------------

-- Close the ended windows of locked accounts: one closed_windows row per
-- window (every missed month, in order, each once), an 'F' entry for the
-- monthly allowance it forfeits, a reset event where the window had run out,
-- and the counters moved to the window of `at`. Returns the windows closed.
CREATE OR REPLACE FUNCTION _close_windows(p_accounts text[], p_at timestamptz) RETURNS integer
-- A generic plan, planned once per session: the statement is large and the
-- lazy path runs it for one account, where planning it each time would cost
-- more than running it (likewise JIT, which generate_series's estimates
-- would otherwise trigger for big batches).
LANGUAGE plpgsql SET jit = off SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_day     date := credits._utc_day(p_at);
    v_month   date := credits._utc_month(p_at);
    v_closed  integer;
    v_resets  jsonb;
    r         record;
    v_acct    credits.accounts;
BEGIN
    WITH due AS (
        SELECT a.account_id, a.plan, a.day, a.daily_used, a.month, a.monthly_used, a.monthly_epoch,
               p.daily_limit, p.monthly_allowance + a.purchased AS monthly_limit
          FROM credits.accounts a
          JOIN credits.plans p ON p.plan = a.plan
         WHERE a.account_id = ANY (p_accounts) AND credits._windows_passed(a, p_at)
    ), windows AS (
        SELECT d.account_id, 'daily' AS window_kind, d.day AS window_start, d.plan,
               d.daily_limit AS window_limit, d.daily_used AS used, NULL::numeric AS forfeited,
               to_char(d.day, 'YYYY-MM-DD') AS window_key,
               (d.day + 1)::timestamp AT TIME ZONE 'UTC' AS closes_at
          FROM due d
         WHERE d.day < v_day AND d.daily_used > 0
        UNION ALL
        SELECT d.account_id, 'monthly', m.start::date, d.plan, d.monthly_limit, u.used,
               greatest(0, d.monthly_limit - u.used),
               to_char(m.start, 'YYYY-MM')
                 || CASE WHEN m.start = d.month AND d.monthly_epoch > 0 THEN '#' || d.monthly_epoch ELSE '' END,
               (m.start + interval '1 month') AT TIME ZONE 'UTC'
          FROM due d
         CROSS JOIN LATERAL generate_series(d.month::timestamp, v_month - interval '1 month',
                                            interval '1 month') AS m(start)
         CROSS JOIN LATERAL (SELECT CASE WHEN m.start = d.month THEN d.monthly_used ELSE 0 END AS used) u
    ), closing AS (
        -- joined, not probed per row: most batches have few exhausted windows
        SELECT w.*, e.account_id IS NOT NULL AS exhausted
          FROM windows w
          LEFT JOIN (SELECT DISTINCT ev.account_id, ev.window_kind, ev.window_key
                       FROM credits.events ev
                      WHERE ev.account_id = ANY (p_accounts) AND ev.kind = 'exhausted') e
                 ON e.account_id = w.account_id AND e.window_kind = w.window_kind
                AND e.window_key = w.window_key
    ), closed AS (
        INSERT INTO credits.closed_windows AS c
               (account_id, window_kind, window_start, plan, window_limit, used, forfeited, closed_at)
        SELECT w.account_id, w.window_kind, w.window_start, w.plan, w.window_limit, w.used, w.forfeited,
               w.closes_at
          FROM closing w
        ON CONFLICT DO NOTHING
        RETURNING c.account_id, c.window_kind, c.window_start, c.forfeited, c.closed_at
    ), forfeits AS (
        INSERT INTO credits.ledger (account_id, at, kind, amount, metadata)
        SELECT c.account_id, c.closed_at, 'F', c.forfeited,
               jsonb_build_object('reason', 'month_end', 'month', to_char(c.window_start, 'YYYY-MM'))
          FROM closed c
         WHERE c.window_kind = 'monthly' AND c.forfeited > 0
         ORDER BY c.account_id, c.window_start
    ), rolled AS (
        UPDATE credits.accounts a
           SET day = CASE WHEN a.day < v_day THEN v_day ELSE a.day END,
               daily_used = CASE WHEN a.day < v_day THEN 0 ELSE a.daily_used END,
               month = CASE WHEN a.month < v_month THEN v_month ELSE a.month END,
               monthly_used = CASE WHEN a.month < v_month THEN 0 ELSE a.monthly_used END,
               monthly_epoch = CASE WHEN a.month < v_month THEN 0 ELSE a.monthly_epoch END
         WHERE a.account_id = ANY (p_accounts) AND credits._windows_passed(a, p_at)
    )
    -- A window that had run out opens again: a reset event, stamped at the
    -- boundary (the events table keeps it to one per window).
    SELECT (SELECT count(*) FROM closed),
           (SELECT jsonb_agg(jsonb_build_object('account_id', w.account_id, 'window', w.window_kind,
                                                'at', w.closes_at))
              FROM closing w WHERE w.exhausted)
      INTO v_closed, v_resets;

    FOR r IN SELECT x.account_id, x."window", x.at
               FROM jsonb_to_recordset(coalesce(v_resets, '[]')) AS x(account_id text, "window" text, at timestamptz)
              ORDER BY x.at, x.account_id
    LOOP
        SELECT * INTO v_acct FROM credits.accounts ac WHERE ac.account_id = r.account_id;
        PERFORM credits._emit(v_acct, 'reset', r."window", NULL, r.at, credits._state(v_acct, r.at));
    END LOOP;
    RETURN v_closed;
END
$$;
