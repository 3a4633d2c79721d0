//! Least privilege, seen from real client connections as each role: what
//! is allowed, what is refused (SQLSTATE 42501), and that a hostile
//! search_path cannot change what a SECURITY DEFINER function does.

mod common;

use common::*;
use postgres::Client;

const REFUSED: &str = "42501"; // insufficient_privilege

/// Login roles t_app, t_billing, t_reader, t_admin, members of the extension's roles (recreated each run).
fn login_roles() {
    let mut admin = connect();
    admin
        .batch_execute(
            "DO $$
             DECLARE r text;
             BEGIN
                 FOREACH r IN ARRAY ARRAY['t_app', 't_billing', 't_reader', 't_admin'] LOOP
                     IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
                         EXECUTE format('DROP OWNED BY %I CASCADE', r);
                         EXECUTE format('DROP ROLE %I', r);
                     END IF;
                 END LOOP;
             END $$;
             CREATE ROLE t_app LOGIN IN ROLE credits_app;
             CREATE ROLE t_billing LOGIN IN ROLE credits_billing;
             CREATE ROLE t_reader LOGIN IN ROLE credits_reader;
             CREATE ROLE t_admin LOGIN IN ROLE credits_admin;",
        )
        .unwrap();
}

fn connect_as(role: &str) -> Client {
    connect(); // the test database exists
    connect_db_as(&test_database(), role)
}

fn check(client: &mut Client, sql: &str) -> Result<(), String> {
    client.batch_execute(sql).map_err(|e| {
        e.code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| e.to_string())
    })
}

/// Every statement of `allowed` succeeds and every one of `refused` fails with 42501.
fn assert_rights(role: &str, allowed: &[&str], refused: &[&str]) {
    let mut client = connect_as(role);
    for sql in allowed {
        assert_eq!(check(&mut client, sql), Ok(()), "{role} may run: {sql}");
    }
    for sql in refused {
        assert_eq!(
            check(&mut client, sql),
            Err(REFUSED.to_string()),
            "{role} may not run: {sql}"
        );
    }
}

#[test]
fn each_role_can_do_its_job_and_nothing_else() {
    login_roles();
    // Accounts are made by the admin role; the clock is the real one here
    // (only superusers may set credits.clock_override).
    assert_rights(
        "t_admin",
        &[
            "SELECT credits.subscribe('r_pro', 'pro')",
            "SELECT credits.purchase('r_pro', 50)",
            "SELECT credits.grant('r_pro', 5)",
            "UPDATE credits.plans SET description = 'Pro (edited)' WHERE plan = 'pro'",
            "INSERT INTO credits.features (feature, product, cost) VALUES ('r_image', 'fusion', 2)",
            "SELECT count(*) FROM credits.ledger",
            "SELECT * FROM credits.verify()",
            "CALL credits.run_maintenance()",
            "CALL credits.refresh_rollups()",
            "SELECT * FROM credits.balance('r_pro')",
        ],
        &[
            "UPDATE credits.ledger SET amount = 0",
            "DELETE FROM credits.ledger",
            "TRUNCATE credits.ledger",
            "INSERT INTO credits.ledger (account_id, at, kind, amount) VALUES ('r_pro', now(), 'G', 1000)",
            "UPDATE credits.accounts SET purchased = 1000000",
            "DELETE FROM credits.accounts",
            "UPDATE credits.grants SET remaining = 1000",
            "SELECT credits_internal._charge('r_pro', NULL, 1::smallint, 1, NULL, NULL, now())",
        ],
    );
    assert_rights(
        "t_app",
        &[
            "SELECT credits.debit('r_pro', 'agent', 2)",
            "SELECT credits.try_debit('r_pro', 'agent', 1)",
            "SELECT credits.refund(credits.debit('r_pro', 'agent', 1))",
            "SELECT credits.settle(credits.reserve('r_pro', 'agent', 3), 2.5)",
            "SELECT credits.release(credits.try_reserve('r_pro', 'agent', 3))",
            "SELECT * FROM credits.balance('r_pro')",
            "SELECT credits.bandwidth_allowance('r_pro')",
            "SELECT * FROM credits.check('r_pro', 'agent', 2)",
            "SELECT * FROM credits.check('r_pro', 'agent', 0.5::float8)",
            "SELECT credits.debit('r_pro', 'agent', 0.5::float8)",
            "SELECT * FROM credits.history('r_pro')",
            "SELECT * FROM credits.grants('r_pro')",
            "SELECT * FROM credits.plans",
            "SELECT * FROM credits.features",
            "SELECT * FROM credits.events",
            "SELECT * FROM credits.read_events(0)",
            "SELECT credits.set_alert('r_pro', remaining => 10)",
            "SELECT credits.set_alert('r_pro')",
            "LISTEN credits",
        ],
        &[
            "SELECT credits.subscribe('r_new', 'pro')",
            "SELECT credits.purchase('r_pro', 1000)",
            "SELECT credits.grant('r_pro', 1000)",
            "SELECT * FROM credits.verify()",
            "CALL credits.run_maintenance()",
            "SELECT * FROM credits.ledger",
            "SELECT * FROM credits.accounts",
            "SELECT * FROM credits.maintenance_status",
            "SELECT credits.reduce_purchase('r_pro', 1)",
            "SELECT credits.void_grant(1)",
            "SELECT * FROM credits.usage_daily",
            "UPDATE credits.ledger SET amount = 0",
            "DELETE FROM credits.ledger",
            "TRUNCATE credits.ledger",
            "UPDATE credits.accounts SET purchased = 1000000",
            "UPDATE credits.plans SET monthly_allowance = 1000000",
            "INSERT INTO credits.ledger (account_id, at, kind, amount) VALUES ('r_pro', now(), 'G', 1000)",
            "SELECT credits_internal._lock_account('r_pro', now())",
            "SELECT credits_internal._charge('r_pro', NULL, 1::smallint, 1, NULL, NULL, now())",
            "SET credits.clock_override = '2020-01-01 00:00:00+00'",
        ],
    );
    assert_rights(
        "t_billing",
        &[
            "SELECT credits.subscribe('r_bill', 'pro', idempotency_key => 'b1')",
            "SELECT credits.purchase('r_bill', 10, 'b2')",
            "SELECT credits.reduce_purchase('r_bill', 10, 'b3')",
            "SELECT credits.void_grant(credits.grant('r_bill', 5))",
            "SELECT credits.grant('r_bill', 2.5::float8)",
            "SELECT * FROM credits.balance('r_bill')",
            "SELECT * FROM credits.check('r_bill', 'agent')",
            "SELECT * FROM credits.history('r_bill')",
            "SELECT * FROM credits.grants('r_bill')",
            "SELECT * FROM credits.plans",
        ],
        &[
            "SELECT credits.debit('r_bill', 'agent', 1)",
            "SELECT credits.reserve('r_bill', 'agent', 1)",
            "SELECT credits.refund(1)",
            "SELECT * FROM credits.verify()",
            "CALL credits.run_maintenance()",
            "SELECT * FROM credits.ledger",
            "SELECT * FROM credits.accounts",
            "SELECT * FROM credits.events",
            "SELECT * FROM credits.usage_daily",
            "UPDATE credits.plans SET monthly_allowance = 1000000",
            "INSERT INTO credits.features (feature, product, cost) VALUES ('r_free_lunch', 'fusion', 0)",
            "SELECT credits_internal._lock_account('r_bill', now())",
        ],
    );
    assert_rights(
        "t_reader",
        &[
            "SELECT * FROM credits.closed_windows",
            "SELECT * FROM credits.events",
            "SELECT * FROM credits.maintenance_status",
            "SELECT * FROM credits.usage_daily",
            "SELECT * FROM credits.usage_monthly",
            "SELECT * FROM credits.account_months",
            "SELECT * FROM credits.tenant_months",
            "SELECT * FROM credits.usage_display",
            "SELECT * FROM credits.account_plans",
            "SELECT * FROM credits.forfeits_monthly",
            "SELECT * FROM credits.read_events(0)",
            "SELECT * FROM credits.rollup_status",
            "SELECT * FROM credits.balance('r_pro')",
        ],
        &[
            "SELECT credits.debit('r_pro', 'agent', 1)",
            "SELECT * FROM credits.usage_rollup",
            "SELECT * FROM credits_internal._ledger_months",
            "CALL credits.refresh_rollups()",
            "SELECT * FROM credits.ledger",
            "SELECT * FROM credits.accounts",
            "SELECT * FROM credits.plans",
            "UPDATE credits.closed_windows SET used = 0",
            "UPDATE credits.ledger SET amount = 0",
            "DELETE FROM credits.ledger",
            "TRUNCATE credits.ledger",
            "INSERT INTO credits.ledger (account_id, at, kind, amount) VALUES ('r_pro', now(), 'G', 1000)",
            "SELECT credits.subscribe('r_new', 'pro')",
            "SELECT credits.set_alert('r_pro', remaining => 10)",
            "SET credits.notify_payload = 'full'",
        ],
    );
    // The superuser is refused too: the ledger is append-only for everyone.
    let mut root = connect();
    assert_eq!(
        check(&mut root, "UPDATE credits.ledger SET amount = 0"),
        Err("UC010".into())
    );
    assert_eq!(
        check(&mut root, "DELETE FROM credits.ledger"),
        Err("UC010".into())
    );
    assert_eq!(
        check(&mut root, "TRUNCATE credits.ledger"),
        Err("UC010".into())
    );
    assert_eq!(balance_of(&mut root, "r_pro", "monthly_used"), "6");
    assert_verified(&mut root);
}

#[test]
fn a_hostile_search_path_does_not_change_what_the_functions_do() {
    login_roles();
    let mut root = connect();
    let db: String = root
        .query_one("SELECT current_database()", &[])
        .unwrap()
        .get(0);
    root.batch_execute(&format!("GRANT CREATE ON DATABASE {db} TO t_app"))
        .unwrap();
    subscribe(&mut root, "h_victim", "free");
    subscribe(&mut root, "h_control", "free");

    // The application role shadows functions and operators the extension
    // uses, each of which would fail loudly if it were ever called.
    let mut app = connect_as("t_app");
    app.batch_execute(
        "CREATE SCHEMA hostile;
         CREATE FUNCTION hostile.hijacked_numeric(numeric, numeric) RETURNS numeric
             LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked operator'; END $$;
         CREATE OPERATOR hostile.+ (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = hostile.hijacked_numeric);
         CREATE OPERATOR hostile.<= (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = hostile.hijacked_numeric);
         CREATE FUNCTION hostile.trim_scale(numeric) RETURNS numeric
             LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked trim_scale'; END $$;
         CREATE FUNCTION hostile.greatest_of(numeric) RETURNS numeric
             LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
         CREATE FUNCTION hostile.now() RETURNS timestamptz
             LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked now'; END $$;
         CREATE FUNCTION hostile.md5(text) RETURNS text
             LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked md5'; END $$;
         CREATE TABLE hostile.accounts (LIKE pg_catalog.pg_class);
         SET search_path = hostile, pg_catalog, public;",
    )
    .unwrap();
    // The session really is hostile: its own arithmetic is hijacked.
    assert!(check(&mut app, "SELECT 1::numeric + 1::numeric").is_err());

    // Debits, an idempotent replay, a refund and a hold all behave as usual.
    for sql in [
        "SELECT credits.debit('h_victim', 'agent', 2.5)",
        "SELECT credits.debit('h_victim', 'agent', 1, 'key-1')",
        "SELECT credits.debit('h_victim', 'agent', 1, 'key-1')",
        "SELECT credits.refund(credits.debit('h_victim', 'agent', 1), 0.5)",
        "SELECT credits.settle(credits.reserve('h_victim', 'agent', 2), 1.25)",
    ] {
        assert_eq!(check(&mut app, sql), Ok(()), "{sql}");
    }
    // The same calls from a clean session, for comparison.
    for sql in [
        "SELECT credits.debit('h_control', 'agent', 2.5)",
        "SELECT credits.debit('h_control', 'agent', 1, 'key-1')",
        "SELECT credits.refund(credits.debit('h_control', 'agent', 1), 0.5)",
        "SELECT credits.settle(credits.reserve('h_control', 'agent', 2), 1.25)",
    ] {
        assert_eq!(check(&mut root, sql), Ok(()), "{sql}");
    }
    for column in ["daily_used", "monthly_used", "available", "reserved"] {
        assert_eq!(
            balance_of(&mut root, "h_victim", column),
            balance_of(&mut root, "h_control", column),
            "{column}"
        );
    }
    assert_eq!(balance_of(&mut root, "h_victim", "monthly_used"), "5.25");
    root.batch_execute(&format!("REVOKE CREATE ON DATABASE {db} FROM t_app"))
        .unwrap();
    assert_verified(&mut root);
}
