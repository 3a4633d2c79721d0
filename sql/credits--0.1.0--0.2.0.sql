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
-- The catalog shows the contract (src/schema/schema.sql): the helpers move
-- from schema credits to credits_internal, so `\df credits.*` lists only the
-- public API. Moved, not dropped and created again: every grant, comment and
-- dependency moves with them, and whatever the rest of this script replaces
-- is replaced in its new place.
-------------------------------------------------------------------------------

CREATE SCHEMA credits_internal;
COMMENT ON SCHEMA credits_internal IS
'Internal helpers of the credits extension: not an API, may change in any release.';
REVOKE ALL ON SCHEMA credits_internal FROM PUBLIC;
GRANT USAGE ON SCHEMA credits_internal TO credits_admin;
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'credits'::regnamespace
                AND (p.proname LIKE '\_%' OR p.proname = 'ledger_refuse_change')
    LOOP
        EXECUTE format('ALTER ROUTINE %s SET SCHEMA credits_internal', f);
    END LOOP;
END
$$;
ALTER TYPE credits._account_state SET SCHEMA credits_internal;

-------------------------------------------------------------------------------
-- Faster column types (src/schema/schema.sql):
-- * checks as domains: a table CHECK constraint is parsed and planned again
--   by every INSERT or UPDATE statement, a domain's check once per session;
-- * account ids and idempotency keys in the "C" collation: byte-wise
--   comparison in every index lookup instead of the locale's strcoll.
-- This rebuilds the indexes on those columns (the ledger's too): on a large
-- ledger the upgrade takes minutes and locks the tables meanwhile. The
-- functions whose SQL bodies use these columns or the tables' row types are
-- dropped first and created again, unchanged (verify() further down, with
-- the rollup check).
-------------------------------------------------------------------------------

DROP FUNCTION verify();
DROP FUNCTION credits_internal._expiry_due(accounts, timestamptz);
DROP FUNCTION credits_internal._state(accounts, timestamptz);
DROP FUNCTION credits_internal._window_key(accounts, text, timestamptz);
DROP FUNCTION credits_internal._windows_passed(accounts, timestamptz);
DROP FUNCTION credits_internal._remember_key(text, text, bigint, uuid);
-- DOMAINS BEGIN
CREATE DOMAIN nonnegative AS numeric CHECK (VALUE >= 0);
CREATE DOMAIN ledger_kind AS "char" CHECK (VALUE IN ('S', 'F', 'P', 'G', 'D', 'R', 'H', 'X', 'E'));
-- DOMAINS END
ALTER TABLE ledger DROP CONSTRAINT ledger_kind_check, ALTER COLUMN kind TYPE ledger_kind,
    ALTER COLUMN account_id TYPE text COLLATE "C";
ALTER TABLE accounts DROP CONSTRAINT accounts_purchased_check, DROP CONSTRAINT accounts_reserved_check,
    ALTER COLUMN purchased TYPE nonnegative, ALTER COLUMN reserved TYPE nonnegative,
    ALTER COLUMN account_id TYPE text COLLATE "C";
ALTER TABLE grants ALTER COLUMN account_id TYPE text COLLATE "C";
ALTER TABLE grant_draws ALTER COLUMN account_id TYPE text COLLATE "C";
ALTER TABLE holds ALTER COLUMN account_id TYPE text COLLATE "C";
ALTER TABLE events ALTER COLUMN account_id TYPE text COLLATE "C";
ALTER TABLE closed_windows ALTER COLUMN account_id TYPE text COLLATE "C";
ALTER TABLE idempotency ALTER COLUMN account_id TYPE text COLLATE "C",
    ALTER COLUMN idempotency_key TYPE text COLLATE "C";

-- Fewer account rows per page (src/schema/schema.sql): cheaper pruning on
-- every debit. Applies to pages filled from now on; VACUUM FULL
-- credits.accounts applies it to the existing ones (docs/upgrade.md).
ALTER TABLE accounts SET (fillfactor = 40);

-- The latest instant a write to the account was stamped with: time only
-- moves forward per account (_account_now, SPEC §4.6).
ALTER TABLE accounts ADD COLUMN last_at timestamptz NOT NULL DEFAULT '-infinity';

-- STATE BEGIN
CREATE FUNCTION credits_internal._state(a credits.accounts, p_now timestamptz) RETURNS credits_internal._account_state
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v         credits_internal._account_state;
    v_today   numeric := 0;  -- held by holds placed today
BEGIN
    SELECT p.plan, p.daily_limit,
           credits_internal._in_window(a.day, credits_internal._utc_day(p_now), a.daily_used),
           p.monthly_allowance + a.purchased,
           credits_internal._in_window(a.month, credits_internal._utc_month(p_now), a.monthly_used),
           coalesce((SELECT sum(g.remaining) FROM credits.grants g
                      WHERE g.account_id = a.account_id AND g.remaining > 0 AND g.expired_entry IS NULL
                        AND (g.expires_at IS NULL OR g.expires_at > p_now)), 0),
           0, 0, 0
      INTO v.plan, v.daily_limit, v.daily_used, v.monthly_limit, v.monthly_used, v.granted_remaining,
           v.reserved, v.reserved_allowance, v.reserved_grants
      FROM credits.plans p
     WHERE p.plan = a.plan;
    IF a.reserved > 0 THEN
        -- (holds past their deadline no longer count, even before they are freed)
        SELECT coalesce(sum(h.amount), 0),
               coalesce(sum(h.amount) FILTER (WHERE h.day >= credits_internal._utc_day(p_now)), 0),
               coalesce(sum(h.amount - h.from_grants) FILTER (WHERE h.month >= credits_internal._utc_month(p_now)), 0),
               coalesce(sum(h.from_grants), 0)
          INTO v.reserved, v_today, v.reserved_allowance, v.reserved_grants
          FROM credits.holds h
         WHERE h.account_id = a.account_id AND h.resolved_entry IS NULL AND h.expires_at > p_now;
    END IF;
    v.daily_available := CASE WHEN v.daily_limit IS NOT NULL
                              THEN greatest(0, v.daily_limit - v.daily_used - v_today) END;
    v.allowance_available := greatest(0, v.monthly_limit - v.monthly_used - v.reserved_allowance);
    v.grants_available := greatest(0, v.granted_remaining - v.reserved_grants);
    RETURN v;
END
$$;

CREATE FUNCTION credits_internal._expiry_due(a credits.accounts, p_at timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (a.reserved > 0 AND EXISTS (SELECT 1 FROM credits.holds h
                                        WHERE h.account_id = a.account_id AND h.resolved_entry IS NULL
                                          AND h.expires_at <= p_at))
        OR EXISTS (SELECT 1 FROM credits.grants g
                    WHERE g.account_id = a.account_id AND g.expired_entry IS NULL AND g.expires_at <= p_at);
END
$$;

CREATE FUNCTION credits_internal._window_key(a credits.accounts, p_window text, p_now timestamptz) RETURNS text
LANGUAGE sql STABLE
RETURN CASE p_window
    WHEN 'daily' THEN to_char(credits_internal._utc_day(p_now), 'YYYY-MM-DD')
    ELSE to_char(credits_internal._utc_month(p_now), 'YYYY-MM')
         || CASE WHEN a.month = credits_internal._utc_month(p_now) AND a.monthly_epoch > 0
                 THEN '#' || a.monthly_epoch ELSE '' END
END;

CREATE FUNCTION credits_internal._windows_passed(a credits.accounts, p_at timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE
RETURN (a.day < credits_internal._utc_day(p_at) AND a.daily_used > 0) OR a.month < credits_internal._utc_month(p_at);

CREATE FUNCTION credits_internal._remember_key(p_account text, p_key text, p_entry bigint, p_request uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO credits.idempotency (account_id, idempotency_key, entry_id, request)
    VALUES (p_account, p_key, p_entry, p_request);
END
$$;
-- STATE END

-------------------------------------------------------------------------------
-- Usage rollups (tables in src/schema/schema.sql, src/reporting/rollups.sql),
-- reporting views (src/reporting/views.sql) and their privileges
-- (src/security/privileges.sql).
-------------------------------------------------------------------------------

CREATE TABLE usage_rollup (
    account_id  text COLLATE "C" NOT NULL,
    month       date NOT NULL,      -- the reporting month (a month-end forfeit: the month it ends)
    kind        "char" NOT NULL,
    feature_id  smallint,           -- NULL for entries without a feature
    amount      numeric NOT NULL,
    from_grants numeric NOT NULL,
    entries     bigint NOT NULL,
    UNIQUE NULLS NOT DISTINCT (account_id, month, kind, feature_id)
);
CREATE INDEX usage_rollup_month_idx ON usage_rollup (month);

CREATE TABLE rollup_state (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    rolled_through bigint NOT NULL DEFAULT 0,  -- every entry_id at or below is in usage_rollup
    candidate      bigint,       -- the next rolled_through, once no older transaction is open ...
    candidate_at   timestamptz,  -- ... than this instant (see _refresh_rollups)
    refreshed_at   timestamptz,
    last_error     text,
    last_error_at  timestamptz
);
INSERT INTO rollup_state DEFAULT VALUES;

-- Usage rollups: the ledger summed per account, reporting month, kind and
-- feature (credits.usage_rollup), so that reports read a few rows per account
-- and month. The views add the entries after rolled_through from the ledger
-- itself, so a report is exact whatever the rollups' lag.
--
-- The one hard part: entry ids are taken before their transaction commits,
-- so a higher id can be visible while a lower one is still in flight.
-- Rolling up to "the highest visible id" could skip the lower one forever.
-- So each refresh picks a candidate (the highest visible id) and stamps it;
-- only once every transaction that was open at the stamp has ended, which
-- includes every one that took an id at or below the candidate, are the
-- entries up to the candidate final and rolled up.

-- The month an entry is reported in: its UTC month, except a month-end
-- forfeit (stamped at the next month's first instant), which belongs to the
-- month it ends.
CREATE FUNCTION credits_internal._report_month(kind "char", at timestamptz, metadata jsonb) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN kind = 'F' AND metadata ->> 'reason' IN ('month_end', 'hold')
            THEN make_date(substr(metadata ->> 'month', 1, 4)::integer,
                           substr(metadata ->> 'month', 6, 2)::integer, 1)
            ELSE credits_internal._utc_month(at) END;

-- The ledger's totals per account, reporting month, kind and feature for
-- the entries after `p_after` up to `p_upto`: what usage_rollup adds up
-- (_refresh_rollups) and what verify() checks it against.
CREATE FUNCTION credits_internal._ledger_totals(p_after bigint, p_upto bigint)
RETURNS TABLE (account_id text, month date, kind "char", feature_id smallint,
               amount numeric, from_grants numeric, entries bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT l.account_id, credits_internal._report_month(l.kind, l.at, l.metadata), l.kind, l.feature_id,
           sum(l.amount), coalesce(sum(l.from_grants), 0), count(*)
      FROM credits.ledger l
     WHERE l.entry_id > p_after AND l.entry_id <= p_upto
     GROUP BY 1, 2, 3, 4;
END;

-- Whether a transaction that began before `since` may still add ledger
-- entries. An entry's id is taken by the statement that inserts it, which
-- also gives its transaction an xid: a transaction idle without an xid has
-- no entry in flight (a psql session left open after a SELECT does not hold
-- the rollups back). (pg_stat_activity is cached per transaction, hence the
-- clear.) Without track_activities there is no telling: assume one is.
CREATE FUNCTION credits_internal._older_transactions_open(since timestamptz) RETURNS boolean
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
                      AND (a.backend_xid IS NOT NULL OR a.state NOT LIKE 'idle in transaction%'))
           -- a prepared transaction may hold ids of any age
           OR EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_xacts p WHERE p.database = current_database());
END
$$;

-- One refresh, in the caller's transaction (READ COMMITTED: the rollup
-- statement must see what committed after the check before it). Rolls up to
-- the stored candidate once it is final, then picks a new candidate and, if
-- the transactions older than it end within p_wait (typically milliseconds),
-- rolls up to it at once. At most p_max entry ids per call. Returns the
-- entry ids rolled up (0: nothing was final).
CREATE FUNCTION credits_internal._refresh_rollups(p_max bigint, p_wait interval DEFAULT '0') RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    st       credits.rollup_state;
    v_upto   bigint;
    v_n      bigint := 0;
    v_until  timestamptz;
    v_picked boolean := false;
    v_open   boolean;
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
            v_until := clock_timestamp() + CASE WHEN v_picked THEN p_wait ELSE interval '0' END;
            LOOP
                v_open := credits_internal._older_transactions_open(st.candidate_at);
                EXIT WHEN NOT v_open OR clock_timestamp() >= v_until;
                PERFORM pg_catalog.pg_sleep(0.002);
            END LOOP;
            EXIT WHEN v_open;
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

-- The watermark, for the views: a stable function, so the planner reads its
-- value when it estimates how many ledger entries a report must add.
CREATE FUNCTION credits_internal._rolled_through() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
RETURN (SELECT s.rolled_through FROM credits.rollup_state s);

-- The worker's rollup step: like _refresh_rollups, but an error is recorded
-- in rollup_state (and the server log) instead of ending the worker.
CREATE FUNCTION credits_internal._worker_rollups(p_max bigint, p_wait interval) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._refresh_rollups(p_max, p_wait);
EXCEPTION WHEN OTHERS THEN
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
CREATE PROCEDURE refresh_rollups(batch bigint DEFAULT 1000000, wait interval DEFAULT '1 minute')
-- (No SET search_path: a procedure with one cannot COMMIT. Every name is qualified.)
LANGUAGE plpgsql AS $$
DECLARE
    v_target  bigint := coalesce((SELECT max(l.entry_id) FROM credits.ledger l), 0);
    v_start   timestamptz := pg_catalog.clock_timestamp();
    v_done    bigint;
    v_batches integer := 0;
    v_n       bigint;
BEGIN
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

-- Reporting views for analysts (the credits_reader role). All amounts are
-- credits; all periods are UTC calendar days and months. They are exact and
-- include everything committed: the monthly ones read the usage rollups
-- (src/reporting/rollups.sql) plus the ledger entries not rolled up yet.
--   usage_daily / usage_monthly  usage per account and period by product
--                                and feature: debited, refunded, net;
--   account_months               per account and month: usage, refunds,
--                                forfeited allowance, grants, purchases,
--                                expired grant credits;
--   tenant_months                the same summed over all accounts;
--   usage_display                every account's balance() as of now;
--   rollup_status                how far the rollups have come.

CREATE VIEW usage_daily AS
SELECT l.account_id,
       credits_internal._utc_day(l.at) AS day,
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
 GROUP BY l.account_id, credits_internal._utc_day(l.at), f.product, f.feature;
COMMENT ON VIEW usage_daily IS 'Usage per account, UTC day, product and feature: debited, refunded (on the day of the refund), net.';

-- Ledger totals per account, reporting month, kind and feature: the rollups
-- plus the entries after them. A filter on account_id or month reaches both
-- branches (an index each), so one account's month reads a few rows.
CREATE VIEW credits_internal._ledger_months AS
SELECT r.account_id, r.month, r.kind, r.feature_id, r.amount, r.from_grants, r.entries
  FROM credits.usage_rollup r
UNION ALL
SELECT l.account_id, credits_internal._report_month(l.kind, l.at, l.metadata), l.kind, l.feature_id,
       l.amount, coalesce(l.from_grants, 0), 1::bigint
  FROM credits.ledger l
 WHERE l.entry_id > credits_internal._rolled_through();
COMMENT ON VIEW credits_internal._ledger_months IS 'Internal: usage_rollup plus the ledger entries not rolled up yet.';

CREATE VIEW usage_monthly AS
SELECT u.account_id,
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
 GROUP BY u.account_id, u.month, f.product, f.feature;
COMMENT ON VIEW usage_monthly IS 'Usage per account, UTC month, product and feature (refunds in the month of the refund).';

CREATE VIEW account_months AS
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
       coalesce(sum(u.amount) FILTER (WHERE u.kind = 'E'), 0) AS expired
  FROM credits_internal._ledger_months u
 GROUP BY u.account_id, u.month;
COMMENT ON VIEW account_months IS 'Per account and UTC month: usage, refunds, forfeited allowance, grants, purchases, expired grant credits.';

-- Summed directly, not over account_months: one group per month instead of
-- one per account and month (and a plain join, which the planner costs low
-- enough to leave JIT out of a one-month report).
CREATE VIEW tenant_months AS
SELECT t.month,
       coalesce(a.active_accounts, 0) AS active_accounts,
       t.debited, t.refunded, t.debited - t.refunded AS net_usage,
       t.forfeited, t.granted, t.purchased, t.expired
  FROM (SELECT u.month,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'D'), 0) AS debited,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'R'), 0) AS refunded,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'F'), 0) AS forfeited,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'G'), 0) AS granted,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'P'), 0) AS purchased,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'E'), 0) AS expired
          FROM credits_internal._ledger_months u
         GROUP BY u.month) t
  LEFT JOIN (SELECT d.month, count(*) AS active_accounts
               FROM (SELECT u.month, u.account_id FROM credits_internal._ledger_months u
                      WHERE u.kind = 'D' GROUP BY u.month, u.account_id) d
              GROUP BY d.month) a ON a.month = t.month;
COMMENT ON VIEW tenant_months IS 'All accounts per UTC month: active accounts, usage, refunds, forfeits, grants, purchases, expiries.';

CREATE VIEW usage_display AS
SELECT a.account_id, b.*
  FROM credits.accounts a
 CROSS JOIN LATERAL credits.balance(a.account_id) b;
COMMENT ON VIEW usage_display IS 'balance() of every account as of credits.now(): the usage display.';

CREATE VIEW rollup_status AS
SELECT s.rolled_through,
       (SELECT max(l.entry_id) FROM credits.ledger l) - s.rolled_through AS pending_entries,
       s.refreshed_at,
       s.candidate,
       s.candidate_at,
       s.last_error,
       s.last_error_at
  FROM credits.rollup_state s;
COMMENT ON VIEW rollup_status IS 'Usage rollups: entries rolled up, entries the views still read from the ledger, last refresh.';

-- verify() (src/reporting/reporting.sql), now also checking the usage rollups.
-- VERIFY BEGIN
-- verify: recompute every account's balances from the ledger and report
-- each difference. No rows = every stored balance is what the ledger implies.
-- Each window counter is checked against the window it says it counts
-- (accounts.day / accounts.month), so the result does not depend on the clock.
CREATE FUNCTION verify() RETURNS TABLE (account_id text, problem text)
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
               + coalesce((SELECT sum(p.amount) FROM credits.ledger p
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
-- VERIFY END

REVOKE ALL ON ALL ROUTINES IN SCHEMA credits, credits_internal FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA credits FROM PUBLIC;
GRANT SELECT ON credits.usage_daily, credits.usage_monthly, credits.account_months,
                credits.tenant_months, credits.usage_display, credits.rollup_status
TO credits_reader, credits_admin;
GRANT EXECUTE ON FUNCTION credits_internal._utc_day(timestamptz), credits_internal._utc_month(timestamptz),
                          credits_internal._report_month("char", timestamptz, jsonb), credits_internal._rolled_through(),
                          credits.balance(text)
TO credits_reader, credits_admin;
GRANT EXECUTE ON PROCEDURE credits.refresh_rollups(bigint, interval) TO credits_admin;
GRANT EXECUTE ON FUNCTION credits_internal._refresh_rollups(bigint, interval) TO credits_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA credits TO credits_admin;
GRANT EXECUTE ON FUNCTION credits.verify() TO credits_admin;


-------------------------------------------------------------------------------
-- debit and try_debit try a fast path below SQL first (_debit_fast,
-- src/metering/fast_path.rs) for the common debit, keyed or not, then
-- credits_internal._debit. Request checks and fingerprints are C too
-- (src/metering/requests.rs), one copy for both paths; fingerprints are
-- computed as before, so recorded keys match.
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION credits_internal._debit_request(p_feature text, p_quantity numeric, p_metadata jsonb) RETURNS uuid
LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'credits_debit_request';

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
    PERFORM credits_internal._check_amount(p_quantity, 'quantity');
    v_amount := trim_scale(v_feature.cost * p_quantity);
    IF scale(v_amount) > 4 THEN
        RAISE EXCEPTION 'invalid amount: % (cost % x quantity %)', v_amount, v_feature.cost, p_quantity
            USING ERRCODE = 'UC004', DETAIL = 'the charge must be exact to 4 decimal places';
    END IF;
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
        PERFORM credits_internal._raise_insufficient(p_account, v_amount, p_feature, v_state, p_now);
    END IF;
    v_entry := credits_internal._charge(p_account, v_state, v_feature.feature_id, v_amount, p_metadata, NULL, p_now);
    PERFORM credits_internal._after_write(p_account, p_now, v_entry, v_state);

    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._remember_key(p_account, p_key, v_entry, v_request);
    END IF;
    RETURN v_entry;
END
$$;

-- The fast path, below SQL (src/metering/fast_path.rs): the common debit
-- (allowance enough, key new, arguments valid; windows that ended are
-- closed in the same writes) decided and written without executing a
-- statement; NULL, with nothing written, for anything else.
CREATE FUNCTION credits_internal._debit_fast(p_account text, p_feature text, p_quantity numeric, p_key text,
                            p_metadata jsonb, p_now timestamptz)
RETURNS bigint
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'credits_debit_fast';

-- A debit the fast path declined (debit and try_debit try it first). An
-- account with a hold or grant past its deadline, or a window to close that
-- had run out (whose reset event is emitted in SQL), is brought up to date,
-- and the fast path tried once more;
-- anything else is the slow path's. The search_path is pinned here because
-- debit and try_debit, in C, do not need it.
CREATE OR REPLACE FUNCTION credits_internal._debit(p_account text, p_feature text, p_quantity numeric, p_key text,
                       p_metadata jsonb, p_raise boolean)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now   timestamptz := credits.now();
    v_entry bigint;
BEGIN
    IF EXISTS (SELECT FROM credits.accounts a WHERE a.account_id = p_account
                  AND (credits_internal._windows_passed(a, v_now) OR credits_internal._expiry_due(a, v_now))) THEN
        PERFORM credits_internal._lock_account(p_account, v_now);
        v_entry := credits_internal._debit_fast(p_account, p_feature, p_quantity, p_key, p_metadata, v_now);
        IF v_entry IS NOT NULL THEN
            RETURN v_entry;
        END IF;
    END IF;
    RETURN credits_internal._debit_slow(p_account, p_feature, p_quantity, p_key, p_metadata, p_raise, v_now);
END
$$;

CREATE OR REPLACE FUNCTION debit(account_id text, feature text, quantity numeric DEFAULT 1,
                      idempotency_key text DEFAULT NULL, metadata jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE SECURITY DEFINER AS 'MODULE_PATHNAME', 'credits_debit';

CREATE OR REPLACE FUNCTION try_debit(account_id text, feature text, quantity numeric DEFAULT 1,
                          idempotency_key text DEFAULT NULL, metadata jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE SECURITY DEFINER AS 'MODULE_PATHNAME', 'credits_try_debit';

REVOKE ALL ON FUNCTION credits_internal._debit_request(text, numeric, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION credits_internal._debit_fast(text, text, numeric, text, jsonb, timestamptz) FROM PUBLIC;

-- Sessions cache plans and features for the debit fast path
-- (src/metering/catalog_cache.rs); any change to either tells every session
-- to read them again, when it commits.
CREATE FUNCTION credits_internal._catalog_changed() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'credits_catalog_changed';

CREATE TRIGGER plans_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON plans
    FOR EACH STATEMENT EXECUTE FUNCTION credits_internal._catalog_changed();
CREATE TRIGGER features_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON features
    FOR EACH STATEMENT EXECUTE FUNCTION credits_internal._catalog_changed();
REVOKE ALL ON FUNCTION credits_internal._catalog_changed() FROM PUBLIC;

-------------------------------------------------------------------------------
-- credits_internal._thresholds() is Rust now (src/metering/thresholds.rs): the debit
-- fast path calls it on every debit.
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION credits_internal._thresholds() RETURNS numeric[]
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'thresholds_wrapper';

-------------------------------------------------------------------------------
-- _close_windows is Rust (src/maintenance/close.rs), one copy with the debit
-- fast path, which closes an account's windows in the same writes as its
-- debit.
-------------------------------------------------------------------------------

-- Close the ended windows of locked accounts: one closed_windows row per
-- window (every missed month, in order, each once), an 'F' entry for the
-- monthly allowance it forfeits, a reset event where the window had run out,
-- and the counters moved to the window of `at`. Returns the windows closed.
-- In Rust (src/maintenance/close.rs), one copy with the debit fast path,
-- which closes an account's windows in the same writes as its debit.
CREATE OR REPLACE FUNCTION credits_internal._close_windows(p_accounts text[], p_at timestamptz) RETURNS integer
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'credits_close_windows';

-------------------------------------------------------------------------------
-- Maintenance batches close windows in Rust too: one scan that locks each
-- account as it reaches it, instead of a locking query and a lookup each.
-------------------------------------------------------------------------------

-- A maintenance batch: the ended windows of up to `p_accounts` accounts that
-- have one, the first after `p_after` in key order (NULL: from the first),
-- each locked as the scan reaches it, so locks are taken in key order.
-- Returns the last account closed (NULL: none was left), how many, and the
-- windows recorded. Rust (src/maintenance/close.rs), as _close_windows.
CREATE FUNCTION credits_internal._close_windows_after(p_after text, p_at timestamptz, p_accounts integer,
                                     OUT last_account text, OUT accounts integer, OUT windows integer,
                                     OUT skipped text[])
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'credits_close_windows_after';
REVOKE ALL ON FUNCTION credits_internal._close_windows_after(text, timestamptz, integer) FROM PUBLIC;

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
BEGIN
    IF p_at IS NULL OR NOT isfinite(p_at) THEN
        RAISE EXCEPTION 'invalid maintenance instant: %', coalesce(p_at::text, 'NULL') USING ERRCODE = 'UC009';
    END IF;
    IF p_batch IS NULL OR p_batch < 1 THEN
        RAISE EXCEPTION 'invalid batch size: %', coalesce(p_batch::text, 'NULL') USING ERRCODE = 'UC009';
    END IF;
    -- One maintenance step at a time: the worker and a manual run interleave safely.
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
    SELECT array_agg(x.account_id ORDER BY x.account_id) INTO v_ids
      FROM (SELECT a.account_id FROM credits.accounts a
             WHERE a.account_id IN (
                   (SELECT h.account_id FROM credits.holds h
                     WHERE h.resolved_entry IS NULL AND h.expires_at <= run.run_at
                     ORDER BY h.expires_at LIMIT p_batch)
                   UNION
                   (SELECT g.account_id FROM credits.grants g
                     WHERE g.expired_entry IS NULL AND g.expires_at <= run.run_at
                     ORDER BY g.expires_at LIMIT p_batch))
             ORDER BY a.account_id
               FOR UPDATE SKIP LOCKED) x;
    IF v_ids IS NOT NULL THEN
        v_n := credits_internal._expire_due(v_ids, run.run_at);
        UPDATE credits.maintenance_runs r SET batches = r.batches + 1, expired = r.expired + v_n
         WHERE r.run_id = run.run_id;
        RETURN 0;
    END IF;

    -- The accounts skipped because a transaction held them, once free.
    SELECT array_agg(x.account_id ORDER BY x.account_id) INTO v_ids
      FROM (SELECT a.account_id FROM credits.accounts a
             WHERE a.account_id IN (SELECT w.account_id FROM credits.maintenance_waiting w
                                     WHERE w.run_id = run.run_id)
             ORDER BY a.account_id
               FOR UPDATE SKIP LOCKED) x;
    IF v_ids IS NOT NULL THEN
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
       OR EXISTS (SELECT FROM credits.holds h WHERE h.resolved_entry IS NULL AND h.expires_at <= run.run_at)
       OR EXISTS (SELECT FROM credits.grants g WHERE g.expired_entry IS NULL AND g.expires_at <= run.run_at) THEN
        RETURN 1;
    END IF;

    UPDATE credits.maintenance_runs r SET phase = 'done', finished_at = clock_timestamp()
     WHERE r.run_id = run.run_id;
    UPDATE credits.maintenance_state
       SET run_id = NULL, done_through = greatest(done_through, run.run_at);
    RETURN greatest(0, extract(epoch FROM credits_internal._next_due(greatest(st.done_through, run.run_at)) - p_at));
END
$$;

-------------------------------------------------------------------------------
-- The metadata check and request fingerprints are C (src/metering/requests.rs),
-- shared with the debit fast path; a fingerprint is the same md5 as before.
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION credits_internal._metadata_ok(value jsonb) RETURNS boolean
LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'credits_metadata_ok';

CREATE OR REPLACE FUNCTION credits_internal._fingerprint(VARIADIC parts text[]) RETURNS uuid
LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'credits_fingerprint';

-------------------------------------------------------------------------------
-- Trustworthy money (SPEC §4, revision 2): plan changes within a month,
-- purchases after a downgrade, refunds of expired grant draws, time that only
-- moves forward per account, events for every window that runs out.
-------------------------------------------------------------------------------

CREATE TABLE month_allowances (
    account_id  text COLLATE "C" PRIMARY KEY,
    month       date NOT NULL,
    peak_limit  numeric NOT NULL,
    used_before numeric NOT NULL
);
COMMENT ON TABLE month_allowances IS 'Per account: the largest monthly limit held this month and the allowance used before the current window (plan changes, SPEC 4.1).';
SELECT pg_catalog.pg_extension_config_dump('month_allowances', '');
GRANT SELECT ON month_allowances TO credits_admin;

ALTER TABLE events ADD COLUMN cause_entry bigint NOT NULL DEFAULT 0,
    DROP CONSTRAINT events_kind_check,
    ADD CONSTRAINT events_kind_check CHECK (kind IN ('exhausted', 'threshold', 'reset', 'denied')),
    DROP CONSTRAINT events_account_id_kind_window_kind_window_key_threshold_key,
    ADD CONSTRAINT events_once UNIQUE NULLS NOT DISTINCT (account_id, kind, window_kind, window_key, threshold, cause_entry);

-- Holds belong to the windows they were placed in (SPEC §4.3) and are
-- backed by the allowance first, then by grants (from_grants).
ALTER TABLE holds ADD COLUMN from_grants numeric NOT NULL DEFAULT 0, ADD COLUMN day date, ADD COLUMN month date;
UPDATE holds h SET day = credits_internal._utc_day(l.at), month = credits_internal._utc_month(l.at)
  FROM ledger l WHERE l.entry_id = h.hold_id;
ALTER TABLE holds ALTER COLUMN day SET NOT NULL, ALTER COLUMN month SET NOT NULL;
ALTER TABLE closed_windows ADD COLUMN held numeric NOT NULL DEFAULT 0;
ALTER TYPE credits_internal._account_state ADD ATTRIBUTE reserved_allowance numeric, ADD ATTRIBUTE reserved_grants numeric;
DROP FUNCTION credits_internal._charge(text, credits_internal._account_state, smallint, numeric, jsonb, bigint, timestamptz);

DROP FUNCTION subscribe(text, text);
DROP FUNCTION credits_internal._emit(accounts, text, text, numeric, timestamptz, credits_internal._account_state);
DROP FUNCTION credits_internal._after_write(text, timestamptz);

CREATE OR REPLACE FUNCTION credits_internal._in_window(stored_window date, current_window date, used numeric)
RETURNS numeric LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN stored_window >= current_window THEN used ELSE 0 END;

CREATE OR REPLACE FUNCTION credits_internal._account_now(a credits.accounts, p_now timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN greatest(p_now, a.last_at, a.day::timestamp AT TIME ZONE 'UTC', a.month::timestamp AT TIME ZONE 'UTC');

CREATE OR REPLACE FUNCTION credits_internal._check_metadata(value jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF NOT credits_internal._metadata_ok(value) THEN
        RAISE EXCEPTION 'invalid metadata: a JSON % of % bytes', jsonb_typeof(value), octet_length(value::text)
            USING ERRCODE = 'UC009', DETAIL = 'metadata must be a JSON object of at most 4096 bytes, or NULL';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION subscribe(account_id text, plan text, fresh_allowance boolean DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_account   text := subscribe.account_id;
    p_plan      text := subscribe.plan;
    p_fresh     boolean := subscribe.fresh_allowance;
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

    INSERT INTO credits.accounts AS a (account_id, plan, created_at, day, month, last_at)
    VALUES (p_account, p_plan, v_now, credits_internal._utc_day(v_now), credits_internal._utc_month(v_now), v_now)
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        INSERT INTO credits.ledger (account_id, at, kind, amount, metadata)
        VALUES (p_account, v_now, 'S', 0,
                jsonb_build_object('plan', p_plan, 'purchased', 0, 'limit', v_new.monthly_allowance));
        RETURN;
    END IF;

    v_acct := credits_internal._lock_account(p_account, v_now);
    v_now := v_acct.last_at;  -- the account's time (_lock_account)
    v_month := credits_internal._utc_month(v_now);
    IF v_acct.plan = p_plan THEN
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
        v_forfeit := greatest(0, v_old.monthly_limit - v_old.monthly_used);
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
END
$$;

CREATE OR REPLACE FUNCTION purchase(account_id text, credits numeric) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_account text := purchase.account_id;
    p_credits numeric := purchase.credits;
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
    v_acct := credits_internal._lock_account(p_account, v_now);
    v_now := v_acct.last_at;  -- the account's time (_lock_account)
    SELECT p.may_purchase INTO v_may FROM credits.plans p WHERE p.plan = v_acct.plan;
    IF NOT v_may THEN
        RAISE EXCEPTION 'plan % may not buy credits (account %)', quote_literal(v_acct.plan), quote_literal(p_account)
            USING ERRCODE = 'UC006', HINT = 'Upgrade to a plan that allows purchases first.';
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
END
$$;

CREATE OR REPLACE FUNCTION "grant"(account_id text, amount numeric, kind text DEFAULT 'promotional',
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

CREATE OR REPLACE FUNCTION refund(entry_id bigint, amount numeric DEFAULT NULL, reason text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_entry   bigint := refund.entry_id;
    p_amount  numeric := refund.amount;
    p_reason  text := refund.reason;
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
    SELECT * INTO v_debit FROM credits.ledger l WHERE l.entry_id = p_entry;
    IF NOT FOUND OR v_debit.kind <> 'D' THEN
        RAISE EXCEPTION 'entry % is not a debit', p_entry USING ERRCODE = 'UC011',
            DETAIL = CASE WHEN FOUND THEN format('entry %s is of kind %s', p_entry, v_debit.kind)
                          ELSE 'no ledger entry has that id' END;
    END IF;
    v_acct := credits_internal._lock_account(v_debit.account_id, v_now);
    v_now := v_acct.last_at;  -- the account's time (_lock_account)
    -- (a settle counted in the windows of its hold, SPEC §4.3)
    v_debit_at := coalesce((SELECT h.at FROM credits.ledger h WHERE h.entry_id = v_debit.ref AND h.kind = 'H'),
                           v_debit.at);

    SELECT coalesce(sum(r.amount), 0), coalesce(sum(r.from_grants), 0), max(r.entry_id)
      INTO v_done, v_grants_done, v_last
      FROM credits.ledger r WHERE r.ref = p_entry AND r.kind = 'R';
    v_left := v_debit.amount - v_done;
    IF p_amount IS NULL THEN
        IF v_left = 0 THEN
            RETURN v_last;
        END IF;
        p_amount := v_left;
    ELSIF p_amount > v_left THEN
        RAISE EXCEPTION 'refund of % exceeds what is left of debit %: %', p_amount, p_entry, trim_scale(v_left)
            USING ERRCODE = 'UC007',
                  DETAIL = format('debited %s, already refunded %s', v_debit.amount, trim_scale(v_done));
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
    RETURN v_entry;
END
$$;

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
        PERFORM credits_internal._raise_insufficient(p_account, p_amount, p_feature, v_state, v_now);
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
    PERFORM credits_internal._check_amount(p_amount, 'amount');
    p_amount := trim_scale(p_amount);
    v_hold := credits_internal._take_hold(settle.hold_id, v_now);
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
            PERFORM credits_internal._raise_insufficient(v_hold.account_id, p_amount,
                                                format('hold %s', v_hold.hold_id), v_state, v_now);
        END IF;
        v_entry := credits_internal._charge(v_hold.account_id, v_state, v_hold.feature_id, p_amount, NULL, v_hold.hold_id, v_now);
        PERFORM credits_internal._hold_resolved(v_hold, v_entry, p_amount, 0, v_now);
        PERFORM credits_internal._after_write(v_hold.account_id, v_now, v_entry, v_state);
        RETURN v_entry;
    END IF;

    -- Its day (and perhaps its month) has closed: at most its amount.
    IF p_amount > v_hold.amount THEN
        RAISE EXCEPTION 'hold % was placed on %, a window that has closed: it settles for at most %',
                        v_hold.hold_id, to_char(v_hold.day, 'YYYY-MM-DD'), trim_scale(v_hold.amount)
            USING ERRCODE = 'UC001',
                  DETAIL = format('window=daily day=%s hold=%s amount=%s', to_char(v_hold.day, 'YYYY-MM-DD'),
                                  v_hold.hold_id, p_amount),
                  HINT = 'Settle the hold for at most its amount and debit the rest.';
    END IF;
    v_alloc := least(p_amount, v_own);
    IF v_hold.month >= credits_internal._utc_month(v_now) THEN
        -- The month is current: the monthly allowance counts it now.
        v_state.allowance_available := greatest(v_state.allowance_available, v_alloc);
        IF p_amount > v_state.allowance_available + v_state.grants_available THEN
            PERFORM credits_internal._raise_insufficient(v_hold.account_id, p_amount,
                                                format('hold %s', v_hold.hold_id), v_state, v_now);
        END IF;
        v_entry := credits_internal._charge(v_hold.account_id, v_state, v_hold.feature_id, p_amount, NULL, v_hold.hold_id,
                                   v_now, p_today => false);
        PERFORM credits_internal._hold_resolved(v_hold, v_entry, p_amount, 0, v_now);
    ELSE
        -- The month has closed too: its allowance part is charged there.
        IF p_amount - v_alloc > v_state.grants_available THEN
            RAISE EXCEPTION 'insufficient credits: hold % needs % from grants, % are available',
                            v_hold.hold_id, p_amount - v_alloc, v_state.grants_available
                USING ERRCODE = 'UC001',
                      DETAIL = format('window=monthly month=%s hold=%s granted=%s', to_char(v_hold.month, 'YYYY-MM'),
                                      v_hold.hold_id, v_state.granted_remaining),
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

CREATE OR REPLACE FUNCTION release(hold_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now   timestamptz := credits.now();
    v_hold  credits.holds;
    v_entry bigint;
BEGIN
    v_hold := credits_internal._take_hold(release.hold_id, v_now);
    v_now := (SELECT a.last_at FROM credits.accounts a WHERE a.account_id = v_hold.account_id);
    INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, ref, metadata)
    VALUES (v_hold.account_id, v_now, 'X', v_hold.feature_id, v_hold.amount, v_hold.hold_id, '{"reason": "release"}')
    RETURNING entry_id INTO v_entry;
    PERFORM credits_internal._hold_resolved(v_hold, v_entry, 0, 0, v_now);
END
$$;

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
        'threshold', p_threshold, 'at', credits_internal._utc_text(p_now), 'plan', s.plan,
        'monthly_limit', s.monthly_limit, 'monthly_used', s.monthly_used,
        'daily_limit', s.daily_limit, 'daily_used', CASE WHEN s.daily_limit IS NOT NULL THEN s.daily_used END,
        'available', v_available));
    INSERT INTO credits.events (account_id, at, kind, window_kind, window_key, threshold, payload, cause_entry)
    VALUES (a.account_id, p_now, p_kind, p_window, v_key, p_threshold, v_event, p_cause)
    ON CONFLICT DO NOTHING
    RETURNING event_id INTO v_id;
    IF v_id IS NOT NULL THEN
        PERFORM pg_notify('credits', (v_event || jsonb_build_object('event_id', v_id))::text);
    END IF;
END
$$;

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
    IF s.daily_available = 0 AND p_before.daily_available > 0 THEN
        PERFORM credits_internal._emit(a, 'exhausted', 'daily', NULL, p_now, s, p_entry);
    END IF;
    IF s.allowance_available + s.grants_available = 0
       AND p_before.allowance_available + p_before.grants_available > 0 THEN
        PERFORM credits_internal._emit(a, 'exhausted', 'monthly', NULL, p_now, s, p_entry);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION credits_internal._denied(p_account text, p_amount numeric, p_now timestamptz) RETURNS void
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

CREATE OR REPLACE FUNCTION credits_internal._expire_due(p_accounts text[], p_at timestamptz) RETURNS integer
LANGUAGE plpgsql SET jit = off SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_holds    integer;
    v_grants   integer;
    v_accounts text[];
    v_entries  bigint[];
    v_old_holds bigint[];
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
    SELECT count(*), array_agg(f.ref) FILTER (WHERE d.month < credits_internal._utc_month(p_at)),
           array_agg(f.entry_id) FILTER (WHERE d.month < credits_internal._utc_month(p_at))
      INTO v_holds, v_old_holds, v_entries
      FROM freed f JOIN due d ON d.account_id = f.account_id AND d.hold_id = f.ref;
    -- A hold of a month that has closed: what it kept aside there is forfeited.
    FOR i IN 1 .. coalesce(array_length(v_old_holds, 1), 0) LOOP
        PERFORM credits_internal._hold_resolved(h, v_entries[i], 0, 0, p_at)
           FROM credits.holds h WHERE h.hold_id = v_old_holds[i];
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

CREATE OR REPLACE FUNCTION balance(account_id text)
RETURNS TABLE (plan text, daily_limit numeric, daily_used numeric, daily_remaining numeric,
               monthly_limit numeric, monthly_used numeric, monthly_remaining numeric,
               granted_remaining numeric, reserved numeric, available numeric,
               next_daily_reset timestamptz, next_monthly_reset timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now   timestamptz := credits.now();
    v_acct  credits.accounts;
    s       credits_internal._account_state;
    v_total numeric;
BEGIN
    v_acct := credits_internal._account($1);
    v_now := credits_internal._account_now(v_acct, v_now);
    s := credits_internal._state(v_acct, v_now);
    v_total := s.allowance_available + s.grants_available;
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
    next_daily_reset := (credits_internal._utc_day(v_now) + 1)::timestamp AT TIME ZONE 'UTC';
    next_monthly_reset := (credits_internal._utc_month(v_now) + interval '1 month') AT TIME ZONE 'UTC';
    RETURN NEXT;
END
$$;

REVOKE ALL ON FUNCTION credits.subscribe(text, text, boolean), credits_internal._account_now(accounts, timestamptz),
    credits_internal._emit(accounts, text, text, numeric, timestamptz, credits_internal._account_state, bigint),
    credits_internal._after_write(text, timestamptz, bigint, credits_internal._account_state) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits.subscribe(text, text, boolean) TO credits_admin;

CREATE OR REPLACE FUNCTION credits_internal._lock_account(p_account text, p_now timestamptz) RETURNS credits.accounts
LANGUAGE plpgsql AS $$
DECLARE
    v credits.accounts;
BEGIN
    -- Locked by moving its time on: the account's time is the latest any
    -- call decided at, including one that writes nothing else (a denial),
    -- so what it expires or closes now stays expired and closed for a call
    -- whose clock is behind. (Callers decide at last_at, and write no other.)
    UPDATE credits.accounts a SET last_at = credits_internal._account_now(a, p_now)
     WHERE a.account_id = p_account
    RETURNING * INTO v;
    IF NOT FOUND THEN
        PERFORM credits_internal._raise_unknown_account(p_account);
    END IF;
    p_now := v.last_at;
    IF credits_internal._windows_passed(v, p_now) THEN
        PERFORM credits_internal._close_windows(ARRAY[p_account], p_now);
        SELECT * INTO v FROM credits.accounts a WHERE a.account_id = p_account;
    END IF;
    IF credits_internal._expiry_due(v, p_now) THEN
        PERFORM credits_internal._expire_due(ARRAY[p_account], p_now);
        SELECT * INTO v FROM credits.accounts a WHERE a.account_id = p_account;
    END IF;
    RETURN v;
END
$$;

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

CREATE OR REPLACE FUNCTION credits_internal._take_hold(p_hold bigint, p_now timestamptz) RETURNS credits.holds
LANGUAGE plpgsql AS $$
DECLARE
    v_hold credits.holds;
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
    PERFORM credits_internal._lock_account(v_hold.account_id, p_now);  -- may expire it
    SELECT * INTO v_hold FROM credits.holds h WHERE h.hold_id = p_hold;
    IF v_hold.resolved_entry IS NOT NULL THEN
        SELECT CASE WHEN l.kind = 'D' THEN 'settled'
                    WHEN l.metadata ->> 'reason' = 'expired' THEN 'expired'
                    ELSE 'released' END
          INTO v_how FROM credits.ledger l WHERE l.entry_id = v_hold.resolved_entry;
        RAISE EXCEPTION 'hold % is not active: already %', p_hold, v_how
            USING ERRCODE = 'UC008', DETAIL = format('resolved by ledger entry %s', v_hold.resolved_entry);
    END IF;
    UPDATE credits.accounts a SET reserved = a.reserved - v_hold.amount WHERE a.account_id = v_hold.account_id;
    UPDATE credits.holds h SET resolved_entry = 0 WHERE h.account_id = v_hold.account_id AND h.hold_id = p_hold;
    RETURN v_hold;
END
$$;

CREATE OR REPLACE FUNCTION credits_internal._draw_grants(p_account text, p_entry bigint, p_need numeric, p_now timestamptz)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_need numeric := p_need;
    v_take numeric;
    g      record;
BEGIN
    FOR g IN SELECT gr.grant_id, gr.remaining FROM credits.grants gr
              WHERE gr.account_id = p_account AND gr.remaining > 0 AND gr.expired_entry IS NULL
                AND (gr.expires_at IS NULL OR gr.expires_at > p_now)
              ORDER BY gr.expires_at NULLS LAST, gr.grant_id
              FOR UPDATE
    LOOP
        EXIT WHEN v_need = 0;
        v_take := least(v_need, g.remaining);
        UPDATE credits.grants gr SET remaining = gr.remaining - v_take
         WHERE gr.account_id = p_account AND gr.grant_id = g.grant_id;
        INSERT INTO credits.grant_draws (account_id, entry_id, grant_id, amount)
        VALUES (p_account, p_entry, g.grant_id, v_take);
        v_need := v_need - v_take;
    END LOOP;
END
$$;

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
REVOKE ALL ON FUNCTION credits_internal._draw_grants(text, bigint, numeric, timestamptz),
    credits_internal._charge(text, credits_internal._account_state, smallint, numeric, jsonb, bigint, timestamptz, boolean),
    credits_internal._hold_resolved(holds, bigint, numeric, numeric, timestamptz) FROM PUBLIC;

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
                      WHERE g_rem[k] > 0 AND (g_exp[k] IS NULL OR g_exp[k] > l.at)
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
REVOKE ALL ON FUNCTION credits.ledger_balance(text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits.ledger_balance(text, timestamptz) TO credits_admin;

-- The ledger is append-only for superusers too, session_replication_role = replica included.
ALTER TABLE ledger ENABLE ALWAYS TRIGGER ledger_append_only;
ALTER TABLE ledger ENABLE ALWAYS TRIGGER ledger_no_truncate;

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

CREATE OR REPLACE FUNCTION credits_internal._worker_pid() RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
RETURN (SELECT a.pid FROM pg_catalog.pg_stat_activity a
         WHERE a.backend_type = 'credits maintenance' AND a.datname = pg_catalog.current_database()
         LIMIT 1);

-- Maintenance never waits on one account: accounts a transaction holds are
-- skipped and closed once free (maintenance_status.waiting_accounts).
CREATE TABLE maintenance_waiting (
    run_id     bigint NOT NULL,
    account_id text COLLATE "C" NOT NULL,
    since      timestamptz NOT NULL,
    PRIMARY KEY (run_id, account_id)
);
CREATE OR REPLACE VIEW maintenance_status AS
SELECT credits_internal._worker_pid() AS worker_pid,
       s.done_through,
       s.run_id IS NOT NULL AS running,
       r.run_id AS last_run_id,
       r.run_at AS last_run_at,
       r.started_at AS last_run_started,
       r.finished_at AS last_run_finished,
       r.accounts AS last_run_accounts,
       r.windows AS last_run_windows,
       r.expired AS last_run_expired,
       greatest(d.next_due, credits.now()) AS next_run,
       -- NULL until the first run: nothing has been done to be late with
       CASE WHEN isfinite(d.next_due) THEN greatest(interval '0', credits.now() - d.next_due) END AS lag,
       s.last_error,
       s.last_error_at,
       -- accounts the current run skipped because a transaction held them
       w.accounts AS waiting_accounts,
       w.since AS waiting_since,
       -- the database the worker serves (credits.database; NULL when the
       -- library is not preloaded): another one's worker_pid is NULL
       pg_catalog.current_setting('credits.database', true) AS worker_database
  FROM credits.maintenance_state s
  CROSS JOIN LATERAL (SELECT credits_internal._next_due(s.done_through) AS next_due) d
  LEFT JOIN LATERAL (SELECT * FROM credits.maintenance_runs mr ORDER BY mr.run_id DESC LIMIT 1) r ON true
  CROSS JOIN LATERAL (SELECT count(*) AS accounts, min(mw.since) AS since FROM credits.maintenance_waiting mw
                       WHERE mw.run_id = s.run_id) w;
REVOKE ALL ON FUNCTION credits_internal._worker_pid() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_internal._worker_pid() TO credits_reader, credits_admin;
GRANT SELECT ON maintenance_waiting TO credits_admin;

-- The catalog documents the contract: \df+ credits.* and \d+ credits.<name>
-- describe every public function, table, view and column. (Internal helpers,
-- named with a leading underscore, are documented beside their code.)

-------------------------------------------------------------------------------
-- Functions and procedures
-------------------------------------------------------------------------------

COMMENT ON FUNCTION credits.subscribe(text, text, boolean) IS
'Create the account on a plan, or change its plan: an upgrade (above every limit held this month) starts a fresh allowance and forfeits the rest; any other move keeps the month''s usage. fresh_allowance overrides. Admin.';
COMMENT ON FUNCTION credits.purchase(text, numeric) IS
'Raise the recurring monthly limit by the credits bought, at once and in full; UC006 on plans that may not buy. Admin.';
COMMENT ON FUNCTION credits."grant"(text, numeric, text, timestamptz, text) IS
'One-off credits (promotional, purchased, adjustment), optionally expiring, used after the monthly allowance, soonest-expiring first. Returns the ledger entry id. Admin.';
COMMENT ON FUNCTION credits.debit(text, text, numeric, text, jsonb) IS
'Charge cost x quantity of a feature inside the caller''s transaction; every window must have it (UC001 otherwise). Returns the ledger entry id; an idempotency key replays the first result.';
COMMENT ON FUNCTION credits.try_debit(text, text, numeric, text, jsonb) IS
'As debit, but NULL instead of UC001 (and a denied or exhausted event that commits).';
COMMENT ON FUNCTION credits.refund(bigint, numeric, text) IS
'Give back (part of) a debit: to the grants it drew while they are valid, then to its window while current. NULL amount = what is left; repeating it returns the same entry.';
COMMENT ON FUNCTION credits.reserve(text, text, numeric, interval, text) IS
'Hold credits for work whose cost is known at the end; UC001 when a window lacks them. Returns the hold id. The hold belongs to the window it was placed in.';
COMMENT ON FUNCTION credits.try_reserve(text, text, numeric, interval, text) IS
'As reserve, but NULL instead of UC001.';
COMMENT ON FUNCTION credits.settle(bigint, numeric) IS
'Charge the actual amount of a hold and free the rest; up to the hold''s amount it always succeeds. Returns the debit''s ledger entry id; UC008 if the hold is not active.';
COMMENT ON FUNCTION credits.release(bigint) IS
'Free a hold without charge; UC008 if it is not active.';
COMMENT ON FUNCTION credits.balance(text) IS
'The usage display of one account now: plan, daily and monthly limits, used and remaining, grants, holds, what a debit could take, and when the windows reset.';
COMMENT ON FUNCTION credits.bandwidth_allowance(text) IS
'Fusion bandwidth in GB derived from credits (rule 10): 20 GB per 100 credits of monthly limit, or 25 per 100 purchased for accounts created before credits.bandwidth_cutoff.';
COMMENT ON FUNCTION credits.verify() IS
'The audit: no rows when every stored balance is what the ledger implies; else one row per account and problem.';
COMMENT ON FUNCTION credits.ledger_balance(text, timestamptz) IS
'An account''s plan, purchases, window usage, grants and holds rebuilt from its ledger rows alone, as of an instant (default now): an auditor''s second opinion on balance().';
COMMENT ON FUNCTION credits.now() IS
'The extension''s clock: credits.clock_override if set (superuser-only, for tests), else the transaction''s start.';
COMMENT ON FUNCTION credits_internal.ledger_refuse_change() IS
'Trigger function: the ledger is append-only (UC010), for every role.';
COMMENT ON PROCEDURE credits.run_maintenance(timestamptz) IS
'Do everything due at an instant (default now): window resets, expiries, events; committing per batch, with progress NOTICEs. What the worker runs; idempotent. Admin.';
COMMENT ON PROCEDURE credits.refresh_rollups(bigint, interval) IS
'Bring the usage rollups up to every entry committed before the call, committing per batch. The worker does this by itself. Admin.';

-------------------------------------------------------------------------------
-- Tables (plans, features, accounts, ledger, grants and closed_windows are
-- described where they are created: schema.sql)
-------------------------------------------------------------------------------

COMMENT ON TABLE credits.grant_draws IS 'What each debit drew from each grant (positive) and each refund or expiry gave back (negative).';
COMMENT ON TABLE credits.holds IS 'Open and resolved reservations; accounts.reserved is the sum of the open ones.';
COMMENT ON TABLE credits.events IS 'Events (exhausted, denied, threshold, reset), also sent as NOTIFY credits when their transaction commits.';
COMMENT ON TABLE credits.idempotency IS 'Idempotency keys, per account, never expiring, with the entry they produced and a fingerprint of the request.';
COMMENT ON TABLE credits.maintenance_state IS 'The maintenance worker''s progress: everything due at or before done_through is done.';
COMMENT ON TABLE credits.maintenance_runs IS 'One row per maintenance run: its instant, phase, cursor and counts.';
COMMENT ON TABLE credits.maintenance_waiting IS 'Accounts a maintenance run skipped because a transaction held them, closed once free.';
COMMENT ON TABLE credits.usage_rollup IS 'Ledger totals per account, reporting month, kind and feature up to rollup_state.rolled_through (derived, not dumped).';
COMMENT ON TABLE credits.rollup_state IS 'How far the usage rollups reach, and the next candidate.';
COMMENT ON VIEW credits.maintenance_status IS 'What the maintenance worker did last, what is due next, how late, and what waits.';

-------------------------------------------------------------------------------
-- Columns
-------------------------------------------------------------------------------

COMMENT ON COLUMN credits.plans.plan IS 'Plan key.';
COMMENT ON COLUMN credits.plans.daily_limit IS 'Credits a day (UTC); NULL = no daily limit.';
COMMENT ON COLUMN credits.plans.monthly_allowance IS 'Credits a calendar month (UTC), before purchases.';
COMMENT ON COLUMN credits.plans.may_purchase IS 'Whether accounts on the plan may buy credits.';
COMMENT ON COLUMN credits.plans.description IS 'Free text.';
COMMENT ON COLUMN credits.plans.seeded IS 'A row the extension created (recreated by CREATE EXTENSION, not dumped until edited).';

COMMENT ON COLUMN credits.features.feature_id IS 'Feature id, as ledger entries store it.';
COMMENT ON COLUMN credits.features.feature IS 'Feature key, as debit() takes it.';
COMMENT ON COLUMN credits.features.product IS 'fusion, publish, or any (drawn by either).';
COMMENT ON COLUMN credits.features.cost IS 'Credits per unit, exact to 4 places.';
COMMENT ON COLUMN credits.features.unit IS 'What a unit is (generation, prompt, ...).';
COMMENT ON COLUMN credits.features.seeded IS 'A row the extension created (recreated by CREATE EXTENSION, not dumped until edited).';

COMMENT ON COLUMN credits.accounts.account_id IS 'Account key (the application''s), compared byte-wise.';
COMMENT ON COLUMN credits.accounts.plan IS 'Current plan.';
COMMENT ON COLUMN credits.accounts.created_at IS 'When it was created (bandwidth rule 10).';
COMMENT ON COLUMN credits.accounts.purchased IS 'Recurring monthly credits bought, on top of the plan''s allowance.';
COMMENT ON COLUMN credits.accounts.day IS 'The UTC day daily_used counts.';
COMMENT ON COLUMN credits.accounts.daily_used IS 'Credits charged on that day (grants included).';
COMMENT ON COLUMN credits.accounts.month IS 'The first day of the UTC month monthly_used counts.';
COMMENT ON COLUMN credits.accounts.monthly_used IS 'Allowance used in the current monthly window (grants are separate).';
COMMENT ON COLUMN credits.accounts.monthly_epoch IS 'Ledger entry that restarted the monthly window (a plan change or a purchase that set its usage); 0 = the 1st.';
COMMENT ON COLUMN credits.accounts.reserved IS 'Credits held by open holds.';
COMMENT ON COLUMN credits.accounts.last_at IS 'The latest instant a call decided at for this account: time only moves forward per account.';

COMMENT ON COLUMN credits.ledger.entry_id IS 'Entry id: the order in which the account''s entries were written.';
COMMENT ON COLUMN credits.ledger.account_id IS 'The account.';
COMMENT ON COLUMN credits.ledger.at IS 'The instant it counts at (the account''s time; a deadline or boundary for expiries and month ends).';
COMMENT ON COLUMN credits.ledger.kind IS 'S plan, F forfeit, P purchase, G grant, D debit, R refund, H hold, X hold freed, E grant expired.';
COMMENT ON COLUMN credits.ledger.feature_id IS 'The feature of a debit, refund or hold.';
COMMENT ON COLUMN credits.ledger.amount IS 'Credits (positive).';
COMMENT ON COLUMN credits.ledger.from_grants IS 'Debit, refund, hold: the part drawn from (or given back to, or held on) grants.';
COMMENT ON COLUMN credits.ledger.ref IS 'Refund: its debit; settle D and X: the hold; E: the grant; F of a hold: the hold.';
COMMENT ON COLUMN credits.ledger.metadata IS 'The caller''s metadata (debit), or what the kind records (plan change, forfeit reason, expiry).';

COMMENT ON COLUMN credits.grants.account_id IS 'The account.';
COMMENT ON COLUMN credits.grants.grant_id IS 'The grant''s G ledger entry.';
COMMENT ON COLUMN credits.grants.kind IS 'promotional, purchased or adjustment.';
COMMENT ON COLUMN credits.grants.amount IS 'Credits granted.';
COMMENT ON COLUMN credits.grants.remaining IS 'Credits left (as of its expiry, once expired).';
COMMENT ON COLUMN credits.grants.expires_at IS 'Unusable from this instant; NULL = never expires.';
COMMENT ON COLUMN credits.grants.expired_entry IS 'The E entry that expired what was left; 0 = expired with nothing left; NULL = not expired.';

COMMENT ON COLUMN credits.grant_draws.account_id IS 'The account.';
COMMENT ON COLUMN credits.grant_draws.entry_id IS 'The debit, refund or expiry entry.';
COMMENT ON COLUMN credits.grant_draws.grant_id IS 'The grant.';
COMMENT ON COLUMN credits.grant_draws.amount IS 'Drawn (positive) or given back (negative).';

COMMENT ON COLUMN credits.holds.account_id IS 'The account.';
COMMENT ON COLUMN credits.holds.hold_id IS 'The hold''s H ledger entry.';
COMMENT ON COLUMN credits.holds.feature_id IS 'The feature it was placed for.';
COMMENT ON COLUMN credits.holds.amount IS 'Credits held.';
COMMENT ON COLUMN credits.holds.expires_at IS 'Freed at this instant if not settled or released.';
COMMENT ON COLUMN credits.holds.resolved_entry IS 'The settling D or freeing X entry; NULL = open.';
COMMENT ON COLUMN credits.holds.from_grants IS 'The part held on grants; the rest is on the allowance of its month.';
COMMENT ON COLUMN credits.holds.day IS 'The UTC day it was placed in (it counts against that day''s limit).';
COMMENT ON COLUMN credits.holds.month IS 'The UTC month it was placed in (it counts against that month''s allowance).';

COMMENT ON COLUMN credits.events.event_id IS 'Event id, in the order events were created.';
COMMENT ON COLUMN credits.events.account_id IS 'The account.';
COMMENT ON COLUMN credits.events.at IS 'When.';
COMMENT ON COLUMN credits.events.kind IS 'exhausted, denied, threshold or reset.';
COMMENT ON COLUMN credits.events.window_kind IS 'daily or monthly.';
COMMENT ON COLUMN credits.events.window_key IS 'The window: YYYY-MM-DD, YYYY-MM, or YYYY-MM#<entry> for a window restarted at that entry.';
COMMENT ON COLUMN credits.events.threshold IS 'threshold events: the percentage reached.';
COMMENT ON COLUMN credits.events.payload IS 'What was sent with NOTIFY credits.';
COMMENT ON COLUMN credits.events.cause_entry IS 'exhausted: the ledger entry that ran the window out (0 for the other kinds).';

COMMENT ON COLUMN credits.closed_windows.account_id IS 'The account.';
COMMENT ON COLUMN credits.closed_windows.window_kind IS 'daily or monthly.';
COMMENT ON COLUMN credits.closed_windows.window_start IS 'Its first day.';
COMMENT ON COLUMN credits.closed_windows.plan IS 'The plan when it closed.';
COMMENT ON COLUMN credits.closed_windows.window_limit IS 'Its limit when it closed; NULL = no daily limit.';
COMMENT ON COLUMN credits.closed_windows.used IS 'Used in it (monthly: of the allowance), holds settled after it closed included.';
COMMENT ON COLUMN credits.closed_windows.forfeited IS 'Monthly: allowance left unused, when it closed and as its holds resolved.';
COMMENT ON COLUMN credits.closed_windows.closed_at IS 'Its end (the next window''s first instant).';
COMMENT ON COLUMN credits.closed_windows.held IS 'Monthly: allowance still held by holds placed in it.';

COMMENT ON COLUMN credits.idempotency.account_id IS 'The account.';
COMMENT ON COLUMN credits.idempotency.idempotency_key IS 'The caller''s key.';
COMMENT ON COLUMN credits.idempotency.entry_id IS 'The entry the first call produced (what a replay returns).';
COMMENT ON COLUMN credits.idempotency.request IS 'Fingerprint of the first request (UC005 on a different one).';

COMMENT ON COLUMN credits.month_allowances.account_id IS 'The account.';
COMMENT ON COLUMN credits.month_allowances.month IS 'The month the row is about (an earlier month reads as none).';
COMMENT ON COLUMN credits.month_allowances.peak_limit IS 'The largest monthly limit held in it.';
COMMENT ON COLUMN credits.month_allowances.used_before IS 'Allowance used in it before the current window began.';

COMMENT ON COLUMN credits.maintenance_state.singleton IS 'Always true: one row.';
COMMENT ON COLUMN credits.maintenance_state.done_through IS 'Everything due at or before this instant is done; NULL = never ran.';
COMMENT ON COLUMN credits.maintenance_state.run_id IS 'The run in progress.';
COMMENT ON COLUMN credits.maintenance_state.last_error IS 'The latest error of a worker step.';
COMMENT ON COLUMN credits.maintenance_state.last_error_at IS 'When.';

COMMENT ON COLUMN credits.maintenance_runs.run_id IS 'Run id.';
COMMENT ON COLUMN credits.maintenance_runs.run_at IS 'The instant it processes.';
COMMENT ON COLUMN credits.maintenance_runs.previous IS 'done_through before it.';
COMMENT ON COLUMN credits.maintenance_runs.phase IS 'windows, expiries or done.';
COMMENT ON COLUMN credits.maintenance_runs.cursor IS 'windows phase: the last account done.';
COMMENT ON COLUMN credits.maintenance_runs.batches IS 'Batches (transactions) so far.';
COMMENT ON COLUMN credits.maintenance_runs.accounts IS 'Accounts whose windows it closed.';
COMMENT ON COLUMN credits.maintenance_runs.windows IS 'closed_windows rows it wrote.';
COMMENT ON COLUMN credits.maintenance_runs.expired IS 'Holds and grants it expired.';
COMMENT ON COLUMN credits.maintenance_runs.started_at IS 'When it started.';
COMMENT ON COLUMN credits.maintenance_runs.finished_at IS 'When it finished.';

COMMENT ON COLUMN credits.maintenance_waiting.run_id IS 'The run.';
COMMENT ON COLUMN credits.maintenance_waiting.account_id IS 'The account a transaction held.';
COMMENT ON COLUMN credits.maintenance_waiting.since IS 'When the run first found it held.';

COMMENT ON COLUMN credits.usage_rollup.account_id IS 'The account.';
COMMENT ON COLUMN credits.usage_rollup.month IS 'The reporting month.';
COMMENT ON COLUMN credits.usage_rollup.kind IS 'Ledger kind.';
COMMENT ON COLUMN credits.usage_rollup.feature_id IS 'Feature (NULL for kinds without one).';
COMMENT ON COLUMN credits.usage_rollup.amount IS 'Sum of amounts.';
COMMENT ON COLUMN credits.usage_rollup.from_grants IS 'Sum of the grant parts.';
COMMENT ON COLUMN credits.usage_rollup.entries IS 'Entries.';

COMMENT ON COLUMN credits.rollup_state.singleton IS 'Always true: one row.';
COMMENT ON COLUMN credits.rollup_state.rolled_through IS 'Every entry id at or below it is in usage_rollup.';
COMMENT ON COLUMN credits.rollup_state.candidate IS 'The next rolled_through, once no transaction older than candidate_at is open.';
COMMENT ON COLUMN credits.rollup_state.candidate_at IS 'When the candidate was taken.';
COMMENT ON COLUMN credits.rollup_state.refreshed_at IS 'Last refresh.';
COMMENT ON COLUMN credits.rollup_state.last_error IS 'The latest error of a refresh by the worker.';
COMMENT ON COLUMN credits.rollup_state.last_error_at IS 'When.';

COMMENT ON COLUMN credits.maintenance_status.worker_pid IS 'The pid of the worker serving this database; NULL when none does.';
COMMENT ON COLUMN credits.maintenance_status.done_through IS 'Everything due at or before this instant is done.';
COMMENT ON COLUMN credits.maintenance_status.running IS 'A run is in progress (or was cut short and not resumed yet).';
COMMENT ON COLUMN credits.maintenance_status.last_run_id IS 'The latest run.';
COMMENT ON COLUMN credits.maintenance_status.last_run_at IS 'The instant it processes.';
COMMENT ON COLUMN credits.maintenance_status.last_run_started IS 'When it started.';
COMMENT ON COLUMN credits.maintenance_status.last_run_finished IS 'When it finished.';
COMMENT ON COLUMN credits.maintenance_status.last_run_accounts IS 'Accounts whose windows it closed.';
COMMENT ON COLUMN credits.maintenance_status.last_run_windows IS 'Windows it closed.';
COMMENT ON COLUMN credits.maintenance_status.last_run_expired IS 'Holds and grants it expired.';
COMMENT ON COLUMN credits.maintenance_status.next_run IS 'When something is next due.';
COMMENT ON COLUMN credits.maintenance_status.lag IS 'How long something has been due without being done (NULL before the first run).';
COMMENT ON COLUMN credits.maintenance_status.last_error IS 'The latest error of a worker step.';
COMMENT ON COLUMN credits.maintenance_status.last_error_at IS 'When.';
COMMENT ON COLUMN credits.maintenance_status.waiting_accounts IS 'Accounts the current run skipped because a transaction held them.';
COMMENT ON COLUMN credits.maintenance_status.waiting_since IS 'Since when the oldest of them waits.';
COMMENT ON COLUMN credits.maintenance_status.worker_database IS 'credits.database: the databases workers serve (NULL when the library is not preloaded).';

COMMENT ON COLUMN credits.usage_daily.account_id IS 'The account.';
COMMENT ON COLUMN credits.usage_daily.day IS 'UTC day.';
COMMENT ON COLUMN credits.usage_daily.product IS 'fusion, publish or any.';
COMMENT ON COLUMN credits.usage_daily.feature IS 'Feature key.';
COMMENT ON COLUMN credits.usage_daily.debited IS 'Credits debited.';
COMMENT ON COLUMN credits.usage_daily.refunded IS 'Credits refunded.';
COMMENT ON COLUMN credits.usage_daily.net IS 'debited - refunded.';
COMMENT ON COLUMN credits.usage_daily.debits IS 'Debit entries.';
COMMENT ON COLUMN credits.usage_daily.refunds IS 'Refund entries.';

COMMENT ON COLUMN credits.usage_monthly.account_id IS 'The account.';
COMMENT ON COLUMN credits.usage_monthly.month IS 'UTC month.';
COMMENT ON COLUMN credits.usage_monthly.product IS 'fusion, publish or any.';
COMMENT ON COLUMN credits.usage_monthly.feature IS 'Feature key.';
COMMENT ON COLUMN credits.usage_monthly.debited IS 'Credits debited.';
COMMENT ON COLUMN credits.usage_monthly.refunded IS 'Credits refunded.';
COMMENT ON COLUMN credits.usage_monthly.net IS 'debited - refunded.';
COMMENT ON COLUMN credits.usage_monthly.debits IS 'Debit entries.';
COMMENT ON COLUMN credits.usage_monthly.refunds IS 'Refund entries.';

COMMENT ON COLUMN credits.account_months.account_id IS 'The account.';
COMMENT ON COLUMN credits.account_months.month IS 'UTC month.';
COMMENT ON COLUMN credits.account_months.debited IS 'Credits debited.';
COMMENT ON COLUMN credits.account_months.refunded IS 'Credits refunded.';
COMMENT ON COLUMN credits.account_months.net_usage IS 'debited - refunded.';
COMMENT ON COLUMN credits.account_months.net_from_grants IS 'The part of net_usage drawn from grants.';
COMMENT ON COLUMN credits.account_months.forfeited IS 'Allowance forfeited (month end, upgrades, holds of the month).';
COMMENT ON COLUMN credits.account_months.granted IS 'One-off credits granted.';
COMMENT ON COLUMN credits.account_months.purchased IS 'Recurring credits bought.';
COMMENT ON COLUMN credits.account_months.expired IS 'Grant credits expired.';

COMMENT ON COLUMN credits.tenant_months.month IS 'UTC month.';
COMMENT ON COLUMN credits.tenant_months.active_accounts IS 'Accounts with entries in the month.';
COMMENT ON COLUMN credits.tenant_months.debited IS 'Credits debited.';
COMMENT ON COLUMN credits.tenant_months.refunded IS 'Credits refunded.';
COMMENT ON COLUMN credits.tenant_months.net_usage IS 'debited - refunded.';
COMMENT ON COLUMN credits.tenant_months.forfeited IS 'Allowance forfeited.';
COMMENT ON COLUMN credits.tenant_months.granted IS 'One-off credits granted.';
COMMENT ON COLUMN credits.tenant_months.purchased IS 'Recurring credits bought.';
COMMENT ON COLUMN credits.tenant_months.expired IS 'Grant credits expired.';

COMMENT ON COLUMN credits.usage_display.account_id IS 'The account.';
COMMENT ON COLUMN credits.usage_display.plan IS 'Current plan.';
COMMENT ON COLUMN credits.usage_display.daily_limit IS 'Credits a day; NULL = no daily limit.';
COMMENT ON COLUMN credits.usage_display.daily_used IS 'Used today (UTC).';
COMMENT ON COLUMN credits.usage_display.daily_remaining IS 'daily_limit - daily_used.';
COMMENT ON COLUMN credits.usage_display.monthly_limit IS 'Allowance + purchases.';
COMMENT ON COLUMN credits.usage_display.monthly_used IS 'Allowance used this window.';
COMMENT ON COLUMN credits.usage_display.monthly_remaining IS 'monthly_limit - monthly_used, at least 0.';
COMMENT ON COLUMN credits.usage_display.granted_remaining IS 'Grant credits usable now.';
COMMENT ON COLUMN credits.usage_display.reserved IS 'Held by open holds.';
COMMENT ON COLUMN credits.usage_display.available IS 'What a debit could take now (every window, grants, holds).';
COMMENT ON COLUMN credits.usage_display.next_daily_reset IS 'Next 00:00 UTC.';
COMMENT ON COLUMN credits.usage_display.next_monthly_reset IS 'Next 1st of a month, 00:00 UTC.';

COMMENT ON COLUMN credits.rollup_status.rolled_through IS 'Every entry id at or below it is rolled up.';
COMMENT ON COLUMN credits.rollup_status.pending_entries IS 'Entries the views still read from the ledger.';
COMMENT ON COLUMN credits.rollup_status.refreshed_at IS 'Last refresh.';
COMMENT ON COLUMN credits.rollup_status.candidate IS 'The next rolled_through.';
COMMENT ON COLUMN credits.rollup_status.candidate_at IS 'When the candidate was taken.';
COMMENT ON COLUMN credits.rollup_status.last_error IS 'The latest refresh error.';
COMMENT ON COLUMN credits.rollup_status.last_error_at IS 'When.';

CREATE OR REPLACE FUNCTION credits_internal._record_month(p_account text, p_month date, p_peak numeric, p_used_before numeric)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO credits.month_allowances AS m (account_id, month, peak_limit, used_before)
    VALUES (p_account, p_month, p_peak, p_used_before)
    ON CONFLICT ON CONSTRAINT month_allowances_pkey DO UPDATE
       SET month = excluded.month, peak_limit = excluded.peak_limit, used_before = excluded.used_before;
END
$$;
REVOKE ALL ON FUNCTION credits_internal._record_month(text, date, numeric, numeric) FROM PUBLIC;


-------------------------------------------------------------------------------
-- Functions unchanged since 0.1.0 but for the helpers' new schema
-- (credits_internal, top of this script): their bodies name the helpers.
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION bandwidth_allowance(account_id text) RETURNS numeric
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_cutoff date := coalesce(nullif(current_setting('credits.bandwidth_cutoff', true), ''), '2025-08-14')::date;
    v_acct   credits.accounts;
    v_limit  numeric;
BEGIN
    v_acct := credits_internal._account($1);
    IF credits_internal._utc_day(v_acct.created_at) >= v_cutoff THEN
        SELECT p.monthly_allowance + v_acct.purchased INTO v_limit FROM credits.plans p WHERE p.plan = v_acct.plan;
        RETURN trim_scale(v_limit * 20 / 100);
    END IF;
    RETURN trim_scale(v_acct.purchased * 25 / 100);
END
$$;

CREATE OR REPLACE FUNCTION reserve(account_id text, feature text, amount numeric,
                        ttl interval DEFAULT '15 minutes', idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._reserve($1, $2, $3, $4, $5, true);
END
$$;

CREATE OR REPLACE FUNCTION try_reserve(account_id text, feature text, amount numeric,
                            ttl interval DEFAULT '15 minutes', idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._reserve($1, $2, $3, $4, $5, false);
END
$$;

CREATE OR REPLACE FUNCTION credits_internal._account(p_account text) RETURNS credits.accounts
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

CREATE OR REPLACE FUNCTION credits_internal._feature(p_feature text) RETURNS credits.features
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v credits.features;
BEGIN
    PERFORM credits_internal._check_text(p_feature, 'feature');
    SELECT * INTO v FROM credits.features f WHERE f.feature = p_feature;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown feature: %', quote_literal(p_feature) USING ERRCODE = 'UC003',
            HINT = 'Features are listed in credits.features.';
    END IF;
    RETURN v;
END
$$;

CREATE OR REPLACE FUNCTION credits_internal._raise_insufficient(p_account text, p_amount numeric, p_what text,
                                    s credits_internal._account_state, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_window text := credits_internal._lacking_window(s, p_amount);
BEGIN
    RAISE EXCEPTION 'insufficient credits: account % needs % for %, the % window has % available',
                    quote_literal(p_account), p_amount, p_what, v_window,
                    CASE v_window WHEN 'daily' THEN s.daily_available
                                  ELSE s.allowance_available + s.grants_available END
        USING ERRCODE = 'UC001',
              DETAIL = CASE v_window
                  WHEN 'daily' THEN format('window=daily day=%s limit=%s used=%s reserved=%s',
                                           to_char(credits_internal._utc_day(p_now), 'YYYY-MM-DD'), s.daily_limit,
                                           s.daily_used, s.reserved)
                  ELSE format('window=monthly month=%s limit=%s used=%s granted=%s reserved=%s',
                              to_char(credits_internal._utc_month(p_now), 'YYYY-MM'), s.monthly_limit,
                              s.monthly_used, s.granted_remaining, s.reserved)
              END;
END
$$;
