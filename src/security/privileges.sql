-- Least privilege (SPEC §3). Nothing in schemas credits and credits_internal
-- is usable by PUBLIC.
-- Four NOLOGIN roles carry the rights; a DBA grants them to login roles:
--   credits_app     the application backend: charge, refund, hold, check;
--                   read any account's balance, history and grants, and the
--                   plans and features (the application authorizes its users);
--   credits_billing the billing system's webhooks: the account lifecycle
--                   (subscribe, purchase, reduce_purchase, grant, void_grant)
--                   and what the application may read; no catalog edits or
--                   maintenance;
--   credits_reader  analysts: read the reporting views, nothing else;
--   credits_admin   operators: everything above, plans, features,
--                   maintenance, the audit; reads every table.
-- No role can write a table directly: every change goes through a
-- SECURITY DEFINER function with a pinned search_path (debit and try_debit,
-- in Rust, resolve nothing through one), which checks it.
-- Roles are cluster-wide, so they are created only if missing (another
-- database may have created them) and are not dropped with the extension.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['credits_app', 'credits_billing', 'credits_reader', 'credits_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;

REVOKE ALL ON ALL ROUTINES IN SCHEMA credits, credits_internal FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA credits FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA credits FROM PUBLIC;
GRANT USAGE ON SCHEMA credits TO credits_app, credits_billing, credits_reader, credits_admin;
-- The internal helpers run inside public functions, as their owner; only
-- run_maintenance and refresh_rollups, which run as their caller, name some.
GRANT USAGE ON SCHEMA credits_internal TO credits_admin;

GRANT EXECUTE ON FUNCTION
    credits.debit(text, text, numeric, text, jsonb),
    credits.debit(text, text, double precision, text, jsonb),
    credits.try_debit(text, text, numeric, text, jsonb),
    credits.try_debit(text, text, double precision, text, jsonb),
    credits.debit_many(text[], text[], numeric[], text[], jsonb[]),
    credits.refund(bigint, numeric, text, text),
    credits.refund(bigint, double precision, text, text),
    credits.refund_for(text, bigint, numeric, text, text),
    credits.refund_for(text, bigint, double precision, text, text),
    credits.reserve(text, text, numeric, interval, text),
    credits.reserve(text, text, double precision, interval, text),
    credits.try_reserve(text, text, numeric, interval, text),
    credits.try_reserve(text, text, double precision, interval, text),
    credits.settle(bigint, numeric),
    credits.settle(bigint, double precision),
    credits.settle_for(text, bigint, numeric),
    credits.settle_for(text, bigint, double precision),
    credits.release(bigint),
    credits.release_for(text, bigint)
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
GRANT EXECUTE ON FUNCTION credits.read_events(bigint, integer) TO credits_app, credits_reader, credits_admin;
-- Activity counters (src/metering/stats.rs): read like the reports, reset by operators.
GRANT SELECT ON credits.stats TO credits_reader, credits_admin;
GRANT EXECUTE ON FUNCTION credits_internal._stats() TO credits_reader, credits_admin;
GRANT EXECUTE ON FUNCTION credits.stats_reset() TO credits_admin;
-- Per-account alerts: the application's (its users choose them) and billing's.
GRANT EXECUTE ON FUNCTION credits.set_alert(text, numeric, numeric) TO credits_app, credits_billing, credits_admin;
-- Striping a hot account is an operator's decision.
GRANT EXECUTE ON FUNCTION credits.set_stripes(text, integer) TO credits_admin;
-- The account lifecycle, for billing webhooks (and operators).
GRANT EXECUTE ON FUNCTION
    credits.subscribe(text, text, boolean, text),
    credits.purchase(text, numeric, text),
    credits.purchase(text, double precision, text),
    credits.reduce_purchase(text, numeric, text),
    credits.reduce_purchase(text, double precision, text),
    credits."grant"(text, numeric, text, timestamptz, text),
    credits."grant"(text, double precision, text, timestamptz, text),
    credits.void_grant(bigint, text),
    credits.void_grant_for(text, bigint, text)
TO credits_billing, credits_admin;

-- What analysts read: the reporting views, closed window totals, events, the
-- maintenance status (a view's functions are called with the reader's
-- rights, hence the read-only functions they use).
GRANT SELECT ON credits.closed_windows, credits.events, credits.maintenance_status,
                credits.usage_daily, credits.usage_monthly, credits.account_months,
                credits.tenant_months, credits.usage_display, credits.rollup_status,
                credits.account_plans, credits.forfeits_monthly
TO credits_reader, credits_admin;
GRANT EXECUTE ON FUNCTION credits.now(), credits_internal._next_due(timestamptz), credits_internal._worker_pid(),
                          credits_internal._display(credits.accounts), credits_internal._display_of(text),
                          credits_internal._utc_day(timestamptz), credits_internal._utc_month(timestamptz),
                          credits_internal._report_month("char", timestamptz, jsonb), credits_internal._rolled_through(),
                          credits.balance(text)
TO credits_reader, credits_admin;

GRANT EXECUTE ON FUNCTION
    credits.verify(),
    credits.ledger_balance(text, timestamptz)
TO credits_admin;
GRANT EXECUTE ON PROCEDURE credits.run_maintenance(timestamptz) TO credits_admin;
-- run_maintenance runs as its caller (a procedure that COMMITs cannot be
-- SECURITY DEFINER); the two functions it calls are.
GRANT EXECUTE ON FUNCTION credits_internal._maintenance_step(timestamptz, integer), credits_internal._maintenance_progress()
TO credits_admin;
-- likewise refresh_rollups
GRANT EXECUTE ON PROCEDURE credits.refresh_rollups(bigint, interval) TO credits_admin;
GRANT EXECUTE ON FUNCTION credits_internal._refresh_rollups(bigint, interval) TO credits_admin;
-- (both refuse to run on a distributed install: docs/citus.md)
GRANT EXECUTE ON FUNCTION credits_internal._refuse_distributed(text), credits_internal._distributed() TO credits_admin;
-- Catalogs are data the operator edits; everything else is read-only to them.
GRANT SELECT ON ALL TABLES IN SCHEMA credits TO credits_admin;
GRANT INSERT, UPDATE ON credits.plans, credits.features TO credits_admin;
GRANT USAGE ON SEQUENCE credits.features_feature_id_seq TO credits_admin;
