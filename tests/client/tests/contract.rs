//! The SQL contract as a client sees it: SQLSTATEs on the wire, UTC windows
//! whatever the session TimeZone, rollback leaving nothing behind.

mod common;

use common::*;

#[test]
fn every_error_reaches_the_client_with_its_sqlstate() {
    let mut c = connect_at("2026-02-10 12:00:00+00");
    subscribe(&mut c, "wire_free", "free");
    subscribe(&mut c, "wire_pro", "pro");
    let debit = "SELECT credits.debit($1, $2, $3::text::numeric)";
    assert_eq!(
        sqlstate(c.query_one(debit, &[&"wire_free", &"agent", &"11"])),
        "UC001"
    );
    assert_eq!(
        sqlstate(c.query_one(debit, &[&"nobody", &"agent", &"1"])),
        "UC002"
    );
    assert_eq!(
        sqlstate(c.query_one(debit, &[&"wire_free", &"nothing", &"1"])),
        "UC003"
    );
    assert_eq!(
        sqlstate(c.execute("SELECT credits.subscribe('wire_free', 'gold')", &[])),
        "UC003"
    );
    for bad in ["0", "-1", "NaN", "Infinity", "1.00001"] {
        assert_eq!(
            sqlstate(c.query_one(debit, &[&"wire_free", &"agent", &bad])),
            "UC004",
            "quantity {bad}"
        );
    }
    c.query_one("SELECT credits.debit('wire_pro', 'agent', 1, 'k')", &[])
        .unwrap();
    assert_eq!(
        sqlstate(c.query_one("SELECT credits.debit('wire_pro', 'agent', 2, 'k')", &[])),
        "UC005"
    );
    assert_eq!(
        sqlstate(c.execute("SELECT credits.purchase('wire_free', 10)", &[])),
        "UC006"
    );
    let entry: i64 = c
        .query_one("SELECT credits.debit('wire_pro', 'agent', 2)", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        sqlstate(c.query_one("SELECT credits.refund($1, 3)", &[&entry])),
        "UC007"
    );
    assert_eq!(
        sqlstate(c.query_one("SELECT credits.refund(-5)", &[])),
        "UC011"
    );
    assert_eq!(
        sqlstate(c.execute("DELETE FROM credits.ledger", &[])),
        "UC010"
    );
    // try_debit turns only UC001 into NULL.
    let denied: Option<i64> = c
        .query_one("SELECT credits.try_debit('wire_free', 'agent', 11)", &[])
        .unwrap()
        .get(0);
    assert_eq!(denied, None);
    assert_eq!(
        sqlstate(c.query_one("SELECT credits.try_debit('nobody', 'agent')", &[])),
        "UC002"
    );
    assert_verified(&mut c);
}

#[test]
fn windows_are_utc_whatever_the_session_time_zone() {
    for (i, tz) in ["Pacific/Kiritimati", "Pacific/Pago_Pago", "Asia/Kathmandu"]
        .iter()
        .enumerate()
    {
        let account = format!("tz_{i}");
        let mut c = connect();
        c.batch_execute(&format!("SET TimeZone = '{tz}'")).unwrap();
        // Last millisecond of January (UTC): spend the whole day.
        set_clock(&mut c, "2026-01-31 23:59:59.999+00");
        subscribe(&mut c, &account, "free");
        c.query_one("SELECT credits.debit($1, 'agent', 10)", &[&account])
            .unwrap();
        let denied: Option<i64> = c
            .query_one("SELECT credits.try_debit($1, 'agent')", &[&account])
            .unwrap()
            .get(0);
        assert_eq!(denied, None, "{tz}: the day is spent");
        // First millisecond of February (UTC): new day and new month.
        set_clock(&mut c, "2026-02-01 00:00:00.001+00");
        let row = c
            .query_one(
                "SELECT daily_used::text, monthly_used::text,
                        to_char(next_daily_reset AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'),
                        to_char(next_monthly_reset AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')
                   FROM credits.balance($1)",
                &[&account],
            )
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "0", "{tz}");
        assert_eq!(row.get::<_, String>(1), "0", "{tz}");
        assert_eq!(row.get::<_, String>(2), "2026-02-02 00:00", "{tz}");
        assert_eq!(row.get::<_, String>(3), "2026-03-01 00:00", "{tz}");
        c.query_one("SELECT credits.debit($1, 'agent', 10)", &[&account])
            .unwrap();
        assert_verified(&mut c);
    }
}

#[test]
fn a_rolled_back_transaction_leaves_nothing() {
    let mut c = connect_at("2026-02-11 08:00:00+00");
    subscribe(&mut c, "rollback", "pro");
    let before: i64 = c
        .query_one("SELECT count(*) FROM credits.ledger", &[])
        .unwrap()
        .get(0);
    let mut tx = c.transaction().unwrap();
    tx.query_one(
        "SELECT credits.debit('rollback', 'agent', 40, 'rb-key')",
        &[],
    )
    .unwrap();
    tx.execute("SELECT credits.purchase('rollback', 10)", &[])
        .unwrap();
    tx.query_one("SELECT credits.grant('rollback', 10)", &[])
        .unwrap();
    tx.rollback().unwrap();
    let after: i64 = c
        .query_one("SELECT count(*) FROM credits.ledger", &[])
        .unwrap()
        .get(0);
    assert_eq!(before, after);
    let row = c
        .query_one("SELECT monthly_used::text, monthly_limit::text, granted_remaining::text FROM credits.balance('rollback')", &[])
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2)
        ),
        ("0".into(), "100".into(), "0".into())
    );
    // The key was rolled back with the debit: using it again is a first use.
    c.query_one(
        "SELECT credits.debit('rollback', 'agent', 1, 'rb-key')",
        &[],
    )
    .unwrap();
    assert_verified(&mut c);
}

/// Errors PostgreSQL raises under the Rust code reach the client as
/// PostgreSQL raised them: a write in a read-only transaction fails with
/// 25006, a lock wait past lock_timeout with 55P03, and no message, detail
/// or hint carries a Rust backtrace (SPEC §4.10).
#[test]
fn errors_raised_below_rust_reach_the_client_clean() {
    let mut c = connect_at("2026-02-10 12:00:00+00");
    subscribe(&mut c, "clean_ro", "pro");
    let clean = |e: &postgres::Error| {
        let db = e.as_db_error().expect("a server error");
        let text = format!("{} {:?} {:?}", db.message(), db.detail(), db.hint());
        assert!(
            !text.contains("rust_begin_unwind")
                && !text.contains("panicking")
                && !text.contains("   0: "),
            "a Rust backtrace reached the client: {text}"
        );
        db.code().code().to_string()
    };
    let debits = [
        "SELECT credits.debit('clean_ro', 'agent', 1)",
        "SELECT credits.debit('clean_ro', 'agent', 1, 'ro-key')",
        "SELECT credits.try_debit('clean_ro', 'agent', 1)",
        "SELECT credits.reserve('clean_ro', 'agent', 1)",
        "SELECT credits.subscribe('clean_ro', 'free')::text",
    ];
    c.batch_execute("SET default_transaction_read_only = on")
        .unwrap();
    for sql in debits {
        let e = c.query_one(sql, &[]).unwrap_err();
        assert_eq!(clean(&e), "25006", "{sql}");
    }
    c.batch_execute("SET default_transaction_read_only = off")
        .unwrap();

    // Another session holds the account: a debit waits until lock_timeout.
    let mut holder = connect_at("2026-02-10 12:00:00+00");
    holder
        .batch_execute(
            "BEGIN; SELECT FROM credits.accounts WHERE account_id = 'clean_ro' FOR UPDATE",
        )
        .unwrap();
    c.batch_execute("SET lock_timeout = '100ms'").unwrap();
    for sql in debits {
        let e = c.query_one(sql, &[]).unwrap_err();
        assert_eq!(clean(&e), "55P03", "{sql}");
    }
    holder.batch_execute("ROLLBACK").unwrap();
    c.batch_execute("RESET lock_timeout").unwrap();
    assert_eq!(balance_of(&mut c, "clean_ro", "monthly_used"), "0");
}
