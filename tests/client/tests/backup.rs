//! pg_dump / pg_restore of a database using the extension keeps every
//! account, balance, hold, grant, event and ledger row, adds no duplicate
//! catalog rows, and the restored database keeps accepting debits.

mod common;

use common::*;
use postgres::Client;
use std::process::Command;

const AT: &str = "2027-06-15 09:00:00+00";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Everything a restore must keep, as comparable text.
fn snapshot(client: &mut Client) -> Vec<String> {
    let queries = [
        "SELECT format('%s %s', a.account_id, to_jsonb(b)) FROM credits.accounts a,
                LATERAL credits.balance(a.account_id) b ORDER BY a.account_id",
        "SELECT format('hold %s %s %s %s', account_id, hold_id, amount, resolved_entry) FROM credits.holds ORDER BY hold_id",
        "SELECT format('grant %s %s %s %s', account_id, grant_id, remaining, expires_at) FROM credits.grants ORDER BY grant_id",
        "SELECT format('ledger %s', count(*)) || ' ' || md5(string_agg(l::text, ',' ORDER BY entry_id)) FROM credits.ledger l",
        "SELECT format('events %s', count(*)) || ' ' || coalesce(md5(string_agg(e::text, ',' ORDER BY event_id)), '') FROM credits.events e",
        "SELECT format('plan %s', p) FROM credits.plans p ORDER BY plan",
        "SELECT format('feature %s', f) FROM credits.features f ORDER BY feature_id",
        "SELECT format('keys %s', count(*)) FROM credits.idempotency",
    ];
    let mut rows = Vec::new();
    for q in queries {
        rows.extend(
            client
                .query(q, &[])
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0)),
        );
    }
    rows
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(format!("{PG_BIN}/{program}"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dump_and_restore_keep_every_balance_hold_and_ledger_row() {
    let mut client = connect_at(AT);
    client
        .batch_execute(
            "INSERT INTO credits.plans (plan, daily_limit, monthly_allowance, may_purchase, description)
                  VALUES ('team', NULL, 500, true, 'added by the operator');
             INSERT INTO credits.features (feature, product, cost) VALUES ('image_upscale', 'fusion', 2.5);
             UPDATE credits.plans SET description = 'Pro, edited by the operator' WHERE plan = 'pro';
             UPDATE credits.features SET cost = 1.5 WHERE feature = 'visual_editor_prompt';
             SELECT credits.subscribe('b_free', 'free');
             SELECT credits.subscribe('b_pro', 'pro');
             SELECT credits.subscribe('b_team', 'team');
             SELECT credits.purchase('b_pro', 40);
             SELECT credits.grant('b_pro', 7.5, 'promotional', '2027-09-01 00:00:00+00');
             SELECT credits.debit('b_free', 'code_generation', 10);
             SELECT credits.try_debit('b_free', 'code_generation', 1);
             SELECT credits.debit('b_pro', 'image_upscale', 3, 'req-1', '{\"model\": \"x\"}');
             SELECT credits.refund(credits.debit('b_pro', 'agent', 4.25), 1.5);
             SELECT credits.reserve('b_pro', 'agent', 12.5, '1 hour');
             SELECT credits.settle(credits.reserve('b_team', 'agent', 20), 18.75);",
        )
        .unwrap();
    let before = snapshot(&mut client);
    assert!(
        before
            .iter()
            .any(|r| r.starts_with("hold b_pro") && r.ends_with(' ')),
        "an open hold is part of what is dumped"
    );

    let config: postgres::Config = std::env::var("CREDITS_TEST_DSN").unwrap().parse().unwrap();
    let host = match &config.get_hosts()[0] {
        postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => "127.0.0.1".to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let source = test_database();
    let file = std::env::temp_dir().join(format!("credits-backup-{}.dump", std::process::id()));
    let file = file.to_str().unwrap();
    let conn = ["-h", host.as_str(), "-p", port.as_str(), "-U", "postgres"];

    run(
        "pg_dump",
        &[&conn[..], &["-Fc", "-f", file, source.as_str()]].concat(),
    );
    recreate_database("credits_restored");
    run(
        "pg_restore",
        &[
            &conn[..],
            &["--exit-on-error", "-d", "credits_restored", file],
        ]
        .concat(),
    );
    std::fs::remove_file(file).ok();

    let mut restored = connect_db("credits_restored");
    restored
        .batch_execute(&format!("SET credits.clock_override = '{AT}'"))
        .unwrap();
    assert_eq!(
        snapshot(&mut restored),
        before,
        "the restore differs from the original"
    );
    assert!(
        before
            .iter()
            .any(|r| r.contains("Pro, edited by the operator")),
        "edited seed rows survive"
    );
    assert!(
        before
            .iter()
            .any(|r| r.contains("visual_editor_prompt") && r.contains(",1.5,")),
        "{before:#?}"
    );
    assert_verified(&mut restored);

    // It keeps working: new entries continue the sequences, the idempotency
    // key is still known, the open hold can be settled once.
    let max_entry: i64 = restored
        .query_one("SELECT max(entry_id) FROM credits.ledger", &[])
        .unwrap()
        .get(0);
    let entry: i64 = restored
        .query_one("SELECT credits.debit('b_pro', 'image_upscale', 1)", &[])
        .unwrap()
        .get(0);
    assert!(entry > max_entry);
    let replayed: i64 = restored
        .query_one(
            "SELECT credits.debit('b_pro', 'image_upscale', 3, 'req-1', '{\"model\": \"x\"}')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(replayed < max_entry, "the key replays the original entry");
    restored
        .batch_execute(
            "SELECT credits.settle((SELECT hold_id FROM credits.holds WHERE account_id = 'b_pro' AND resolved_entry IS NULL), 10);
             INSERT INTO credits.features (feature, product, cost) VALUES ('video', 'fusion', 5);",
        )
        .unwrap();
    assert_eq!(
        sqlstate(restored.batch_execute(
            "SELECT credits.settle((SELECT max(hold_id) FROM credits.holds WHERE account_id = 'b_pro'), 1)"
        )),
        "UC008"
    );
    assert_verified(&mut restored);
}
