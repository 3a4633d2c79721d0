//! Hostile input to every public function: NULLs, empty and 1 MB strings,
//! numeric extremes, negative and absurd intervals, malformed or oversized
//! jsonb. Each call fails with its documented SQLSTATE (docs/sqlstates.md),
//! writes nothing, and leaves the backend alive.

mod common;

use common::*;
use postgres::Client;

const MB: &str = "repeat('x', 1048576)";

/// Row counts of every table a call could write.
fn written(client: &mut Client) -> Vec<i64> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM credits.ledger), (SELECT count(*) FROM credits.accounts),
                    (SELECT count(*) FROM credits.grants), (SELECT count(*) FROM credits.holds),
                    (SELECT count(*) FROM credits.idempotency), (SELECT count(*) FROM credits.events),
                    (SELECT count(*) FROM credits.grant_draws), (SELECT count(*) FROM credits.closed_windows),
                    (SELECT sum(reserved + monthly_used + daily_used + purchased)::bigint FROM credits.accounts)",
            &[],
        )
        .unwrap();
    (0..9)
        .map(|i| row.get::<_, Option<i64>>(i).unwrap_or(0))
        .collect()
}

#[test]
fn every_public_function_refuses_hostile_input_with_its_sqlstate_and_writes_nothing() {
    let mut client = connect();
    subscribe(&mut client, "hx", "pro");
    let debit: i64 = client
        .query_one("SELECT credits.debit('hx', 'agent', 2)", &[])
        .unwrap()
        .get(0);
    let hold: i64 = client
        .query_one("SELECT credits.reserve('hx', 'agent', 3)", &[])
        .unwrap()
        .get(0);

    let cases: Vec<(String, &str)> = vec![
        // subscribe
        ("SELECT credits.subscribe(NULL, 'pro')".into(), "UC009"),
        ("SELECT credits.subscribe('', 'pro')".into(), "UC009"),
        (format!("SELECT credits.subscribe({MB}, 'pro')"), "UC009"),
        ("SELECT credits.subscribe('hx_new', NULL)".into(), "UC009"),
        (
            "SELECT credits.subscribe('hx_new', 'no_such_plan')".into(),
            "UC003",
        ),
        (format!("SELECT credits.subscribe('hx_new', {MB})"), "UC009"),
        // purchase
        ("SELECT credits.purchase('hx', NULL)".into(), "UC004"),
        ("SELECT credits.purchase('hx', 0)".into(), "UC004"),
        ("SELECT credits.purchase('hx', -1)".into(), "UC004"),
        ("SELECT credits.purchase('hx', 'NaN')".into(), "UC004"),
        ("SELECT credits.purchase('hx', 'Infinity')".into(), "UC004"),
        ("SELECT credits.purchase('hx', '-Infinity')".into(), "UC004"),
        ("SELECT credits.purchase('hx', 1e15)".into(), "UC004"),
        ("SELECT credits.purchase('hx', 1e1000)".into(), "UC004"),
        ("SELECT credits.purchase('hx', 0.00001)".into(), "UC004"),
        ("SELECT credits.purchase('hx', 1e-1000)".into(), "UC004"),
        ("SELECT credits.purchase('nobody', 1)".into(), "UC002"),
        ("SELECT credits.purchase(NULL, 1)".into(), "UC009"),
        // grant
        ("SELECT credits.grant('hx', 1, 'bogus')".into(), "UC009"),
        ("SELECT credits.grant('hx', 1, NULL)".into(), "UC009"),
        (
            "SELECT credits.grant('hx', 1, 'promotional', '-infinity')".into(),
            "UC009",
        ),
        (
            "SELECT credits.grant('hx', 1, 'promotional', '2000-01-01 00:00:00+00')".into(),
            "UC009",
        ),
        (
            format!("SELECT credits.grant('hx', 1, 'promotional', NULL, {MB})"),
            "UC009",
        ),
        ("SELECT credits.grant('hx', 'NaN')".into(), "UC004"),
        ("SELECT credits.grant('hx', -5)".into(), "UC004"),
        // debit and try_debit
        ("SELECT credits.debit('hx', 'agent', NULL)".into(), "UC004"),
        ("SELECT credits.debit('hx', 'agent', 0)".into(), "UC004"),
        ("SELECT credits.debit('hx', 'agent', -1)".into(), "UC004"),
        ("SELECT credits.debit('hx', 'agent', 'NaN')".into(), "UC004"),
        (
            "SELECT credits.debit('hx', 'agent', 'Infinity')".into(),
            "UC004",
        ),
        ("SELECT credits.debit('hx', 'agent', 1e15)".into(), "UC004"),
        (
            "SELECT credits.debit('hx', 'agent', 0.00001)".into(),
            "UC004",
        ),
        ("SELECT credits.debit('hx', NULL, 1)".into(), "UC009"),
        (
            "SELECT credits.debit('hx', 'no_such_feature', 1)".into(),
            "UC003",
        ),
        (format!("SELECT credits.debit('hx', {MB}, 1)"), "UC009"),
        ("SELECT credits.debit(NULL, 'agent', 1)".into(), "UC009"),
        ("SELECT credits.debit('nobody', 'agent', 1)".into(), "UC002"),
        (
            format!("SELECT credits.debit('hx', 'agent', 1, {MB})"),
            "UC009",
        ),
        ("SELECT credits.debit('hx', 'agent', 1, '')".into(), "UC009"),
        (
            "SELECT credits.debit('hx', 'agent', 1, NULL, '[1, 2]')".into(),
            "UC009",
        ),
        (
            "SELECT credits.debit('hx', 'agent', 1, NULL, '\"text\"')".into(),
            "UC009",
        ),
        (
            format!("SELECT credits.debit('hx', 'agent', 1, NULL, jsonb_build_object('x', {MB}))"),
            "UC009",
        ),
        (
            "SELECT credits.debit('hx', 'agent', 1, NULL, '{bad')".into(),
            "22P02",
        ),
        (
            "SELECT credits.try_debit('hx', 'agent', NULL)".into(),
            "UC004",
        ),
        (
            "SELECT credits.try_debit('hx', 'agent', 1, 'k', '[]')".into(),
            "UC009",
        ),
        ("SELECT credits.try_debit('', 'agent', 1)".into(), "UC009"),
        // refund
        ("SELECT credits.refund(NULL)".into(), "UC009"),
        (format!("SELECT credits.refund({debit}, 0)"), "UC004"),
        (format!("SELECT credits.refund({debit}, 'NaN')"), "UC004"),
        (format!("SELECT credits.refund({debit}, -1)"), "UC004"),
        (format!("SELECT credits.refund({debit}, 1e15)"), "UC004"),
        (format!("SELECT credits.refund({debit}, 5)"), "UC007"),
        (
            format!("SELECT credits.refund({debit}, NULL, {MB})"),
            "UC009",
        ),
        ("SELECT credits.refund(-5)".into(), "UC011"),
        (format!("SELECT credits.refund({hold})"), "UC011"),
        // reserve, try_reserve, settle, release
        (
            "SELECT credits.reserve('hx', 'agent', 1, NULL)".into(),
            "UC009",
        ),
        (
            "SELECT credits.reserve('hx', 'agent', 1, '0')".into(),
            "UC009",
        ),
        (
            "SELECT credits.reserve('hx', 'agent', 1, '-1 second')".into(),
            "UC009",
        ),
        (
            "SELECT credits.reserve('hx', 'agent', 1, '1000 years')".into(),
            "UC009",
        ),
        (
            "SELECT credits.reserve('hx', 'agent', 1, '31 days 1 second')".into(),
            "UC009",
        ),
        (
            "SELECT credits.reserve('hx', 'agent', 'NaN')".into(),
            "UC004",
        ),
        (
            "SELECT credits.reserve('hx', 'agent', 1e15)".into(),
            "UC004",
        ),
        (
            format!("SELECT credits.reserve('hx', 'agent', 1, '1 hour', {MB})"),
            "UC009",
        ),
        ("SELECT credits.try_reserve('hx', NULL, 1)".into(), "UC009"),
        ("SELECT credits.settle(NULL, 1)".into(), "UC009"),
        ("SELECT credits.settle(-1, 1)".into(), "UC008"),
        (format!("SELECT credits.settle({hold}, 'NaN')"), "UC004"),
        (format!("SELECT credits.settle({hold}, -1)"), "UC004"),
        (format!("SELECT credits.settle({hold}, 1e15)"), "UC004"),
        (format!("SELECT credits.settle({debit}, 1)"), "UC008"),
        ("SELECT credits.release(NULL)".into(), "UC009"),
        ("SELECT credits.release(-1)".into(), "UC008"),
        // reads
        ("SELECT * FROM credits.balance(NULL)".into(), "UC009"),
        (format!("SELECT * FROM credits.balance({MB})"), "UC009"),
        ("SELECT * FROM credits.balance('nobody')".into(), "UC002"),
        ("SELECT credits.bandwidth_allowance(NULL)".into(), "UC009"),
        (
            "SELECT credits.bandwidth_allowance('nobody')".into(),
            "UC002",
        ),
        ("SELECT * FROM credits.check(NULL, 'agent')".into(), "UC009"),
        (
            "SELECT * FROM credits.check('nobody', 'agent')".into(),
            "UC002",
        ),
        (
            "SELECT * FROM credits.check('hx', 'nothing')".into(),
            "UC003",
        ),
        (
            "SELECT * FROM credits.check('hx', 'agent', 0)".into(),
            "UC004",
        ),
        (
            "SELECT * FROM credits.check('hx', 'agent', 'NaN'::float8)".into(),
            "UC004",
        ),
        (
            "SELECT * FROM credits.check('hx', 'agent', 0.00001::float8)".into(),
            "UC004",
        ),
        ("SELECT * FROM credits.history(NULL)".into(), "UC009"),
        ("SELECT * FROM credits.history('nobody')".into(), "UC002"),
        (
            "SELECT * FROM credits.history('hx', max_rows => 1001)".into(),
            "UC009",
        ),
        (
            "SELECT * FROM credits.history('hx', max_rows => NULL)".into(),
            "UC009",
        ),
        ("SELECT * FROM credits.grants('nobody')".into(), "UC002"),
        ("SELECT * FROM credits.read_events(NULL)".into(), "UC009"),
        ("SELECT * FROM credits.read_events(-1)".into(), "UC009"),
        ("SELECT * FROM credits.read_events(0, 0)".into(), "UC009"),
        ("SELECT * FROM credits.read_events(0, 1001)".into(), "UC009"),
        // corrections and webhook-safe writes
        ("SELECT credits.void_grant(NULL)".into(), "UC009"),
        ("SELECT credits.void_grant(-1)".into(), "UC011"),
        (format!("SELECT credits.void_grant({debit})"), "UC011"),
        (format!("SELECT credits.void_grant({debit}, {MB})"), "UC009"),
        ("SELECT credits.reduce_purchase('hx', NULL)".into(), "UC004"),
        (
            "SELECT credits.reduce_purchase('hx', 0.00001)".into(),
            "UC004",
        ),
        (
            "SELECT credits.reduce_purchase('nobody', 1)".into(),
            "UC002",
        ),
        ("SELECT credits.reduce_purchase('hx', 1e9)".into(), "UC013"),
        (format!("SELECT credits.purchase('hx', 1, {MB})"), "UC009"),
        (
            "SELECT credits.purchase('hx', 'Infinity'::float8)".into(),
            "UC004",
        ),
        (
            format!("SELECT credits.subscribe('hx', 'pro', NULL, {MB})"),
            "UC009",
        ),
        (
            "SELECT credits.subscribe('hx', 'pro', NULL, '')".into(),
            "UC009",
        ),
        (
            format!("SELECT credits.refund({debit}, 1, NULL, {MB})"),
            "UC009",
        ),
        (
            format!("SELECT credits.refund({debit}, 0.5::float8, NULL, '')"),
            "UC009",
        ),
        // maintenance
        ("CALL credits.run_maintenance('infinity')".into(), "UC009"),
        ("CALL credits.run_maintenance('-infinity')".into(), "UC009"),
        ("CALL credits.refresh_rollups(0)".into(), "UC009"),
        ("CALL credits.refresh_rollups(NULL)".into(), "UC009"),
        (
            "CALL credits.refresh_rollups(wait => '-1 s')".into(),
            "UC009",
        ),
        ("CALL credits.refresh_rollups(wait => NULL)".into(), "UC009"),
    ];

    let before = written(&mut client);
    let mut wrong = Vec::new();
    for (sql, expected) in &cases {
        let got = match client.batch_execute(sql) {
            Ok(()) => "no error".to_string(),
            Err(e) => e
                .code()
                .map(|c| c.code().to_string())
                .unwrap_or_else(|| format!("no SQLSTATE: {e}")),
        };
        if got != *expected {
            wrong.push(format!(
                "{}: expected {expected}, got {got}",
                &sql[..sql.len().min(100)]
            ));
        }
        // The backend is alive and nothing was written.
        assert_eq!(
            client.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0),
            1
        );
        assert_eq!(written(&mut client), before, "{sql} wrote something");
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_verified(&mut client);
}
