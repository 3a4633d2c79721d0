//! A striped account (credits.set_stripes) under concurrency: many sessions
//! debiting one account at once never overspend it, events come exactly
//! once, the stripes really are used (not the account row), and single
//! debits never deadlock; other writes mixed in keep the ledger and the
//! counters in agreement.

mod common;

use common::*;
use postgres::Client;

const AT: &str = "2031-07-10 12:00:00+00";

fn striped(client: &mut Client, account: &str, purchase: i32, stripes: i32) {
    subscribe(client, account, "pro"); // 100 a month
    client
        .execute(
            "SELECT credits.purchase($1, $2::int::numeric)",
            &[&account, &purchase],
        )
        .unwrap();
    client
        .execute("SELECT credits.set_stripes($1, $2)", &[&account, &stripes])
        .unwrap();
}

fn events(client: &mut Client, account: &str) -> Vec<String> {
    client
        .query(
            "SELECT format('%s %s %s', kind, window_kind, threshold) FROM credits.events
              WHERE account_id = $1 ORDER BY event_id",
            &[&account],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn sessions_debiting_one_striped_account_stop_exactly_at_its_limit() {
    let mut client = connect_at(AT);
    striped(&mut client, "stripe_limit", 400, 8); // 500 a month
    let sessions = 16;
    let charged = in_parallel(sessions, AT, |client| {
        let mut charged = 0;
        let mut refused = 0;
        // 40 each: 640 credits asked of 500
        for _ in 0..40 {
            let entry: Option<i64> = client
                .query_one("SELECT credits.try_debit('stripe_limit', 'agent', 1)", &[])
                .unwrap()
                .get(0);
            if entry.is_some() {
                charged += 1;
            } else {
                refused += 1;
            }
        }
        (charged, refused)
    });
    let total: i32 = charged.iter().map(|c| c.0).sum();
    assert_eq!(total, 500, "charged {total} of a limit of 500: {charged:?}");
    assert_eq!(
        balance_of(&mut client, "stripe_limit", "monthly_used"),
        "500"
    );
    assert_eq!(balance_of(&mut client, "stripe_limit", "available"), "0");
    let ledger: String = client
        .query_one(
            "SELECT trim_scale(sum(amount))::text FROM credits.ledger WHERE account_id = 'stripe_limit' AND kind = 'D'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ledger, "500");
    // Each event once: the 80 % threshold and the month used up among them.
    let seen = events(&mut client, "stripe_limit");
    let mut distinct = seen.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), seen.len(), "an event twice: {seen:?}");
    for event in ["threshold monthly 80", "exhausted monthly "] {
        assert!(seen.iter().any(|e| e == event), "no {event:?} in {seen:?}");
    }
    assert_verified(&mut client);
}

#[test]
fn striped_debits_take_the_stripes_and_leave_the_account_row_alone() {
    let mut client = connect_at(AT);
    striped(&mut client, "stripe_rows", 9900, 4); // 10,000 a month
                                                  // The first debit refills the stripes; the next ones spend from them.
    client
        .batch_execute("SELECT credits.debit('stripe_rows', 'agent', 1)")
        .unwrap();
    let version = |client: &mut Client| -> String {
        client
            .query_one(
                "SELECT xmin::text FROM credits.accounts WHERE account_id = 'stripe_rows'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let before = version(&mut client);
    let sessions = 8;
    in_parallel(sessions, AT, |client| {
        for _ in 0..50 {
            client
                .execute("SELECT credits.debit('stripe_rows', 'agent', 1)", &[])
                .unwrap();
        }
    });
    assert_eq!(
        version(&mut client),
        before,
        "400 debits within the stripes' budgets wrote the account row"
    );
    let spent: String = client
        .query_one(
            "SELECT trim_scale(sum(spent))::text FROM credits.stripes WHERE account_id = 'stripe_rows'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(spent, "400");
    assert_eq!(
        balance_of(&mut client, "stripe_rows", "monthly_used"),
        "401"
    );
    assert_verified(&mut client);
}

#[test]
fn other_writes_mixed_with_striped_debits_keep_ledger_and_counters_in_agreement() {
    let mut client = connect_at(AT);
    striped(&mut client, "stripe_mix", 150, 4); // 250 a month
    let sessions = 8;
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let errors = in_parallel(sessions, AT, move |client| {
        let me = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut unexpected = Vec::new();
        for i in 0..40 {
            // Every call its own transaction: none may deadlock.
            let sql = match (me, i % 10) {
                (0, 0) => "SELECT credits.grant('stripe_mix', 3, 'promotional')".to_string(),
                (1, 0) => "SELECT credits.refund(l.entry_id, 0.5)
                             FROM (SELECT max(entry_id) AS entry_id FROM credits.ledger
                                    WHERE account_id = 'stripe_mix' AND kind = 'D') l
                            WHERE l.entry_id IS NOT NULL"
                    .to_string(),
                (2, 0) => "SELECT credits.settle(credits.reserve('stripe_mix', 'agent', 2), 1)"
                    .to_string(),
                _ => format!("SELECT credits.try_debit('stripe_mix', 'agent', 1, 'mix-{me}-{i}')"),
            };
            if let Err(e) = client.execute(sql.as_str(), &[]) {
                // (a refund of an entry refunded in full meanwhile is UC007,
                // a hold once the month is used up UC001)
                if !matches!(e.code().map(|c| c.code()), Some("UC007" | "UC001")) {
                    let detail = e
                        .as_db_error()
                        .map(|d| format!("{} {}", d.code().code(), d.message()));
                    unexpected.push(format!("{sql}: {e} {detail:?}"));
                }
            }
        }
        unexpected
    });
    let errors: Vec<String> = errors.into_iter().flatten().collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // Whatever interleaving happened, the counters are what the ledger says
    // (verify) and what the ledger alone implies (ledger_balance).
    assert_verified(&mut client);
    let [from_ledger, shown]: [String; 2] = [
        "SELECT format('%s %s', trim_scale(monthly_used), trim_scale(granted_remaining))
           FROM credits.ledger_balance('stripe_mix')",
        "SELECT format('%s %s', trim_scale(monthly_used), trim_scale(granted_remaining))
           FROM credits.balance('stripe_mix')",
    ]
    .map(|sql| client.query_one(sql, &[]).unwrap().get(0));
    assert_eq!(from_ledger, shown);
    let used: f64 = balance_of(&mut client, "stripe_mix", "monthly_used")
        .parse()
        .unwrap();
    assert!(used <= 250.0, "monthly_used {used} above the limit of 250");
}

/// Several debits of a striped account in one transaction update stripe
/// rows this transaction wrote, where PostgreSQL would check the stripes'
/// foreign key to the account again and lock the account row (KEY SHARE)
/// until the commit, stalling every write that takes the row. They leave
/// it alone, and spend exactly what they debit.
#[test]
fn striped_debits_in_one_transaction_leave_the_account_row_unlocked() {
    let mut client = connect_at(AT);
    striped(&mut client, "stripe_tx", 900, 4); // 1,000 a month
    client
        .batch_execute("SELECT credits.debit('stripe_tx', 'agent', 1)")
        .unwrap(); // (hands the stripes their budgets)
    let mut tx = client.transaction().unwrap();
    for _ in 0..6 {
        tx.execute("SELECT credits.debit('stripe_tx', 'agent', 1)", &[])
            .unwrap();
    }
    assert_unlocked(
        &mut connect_at(AT),
        "credits.accounts WHERE account_id = 'stripe_tx'",
    );
    tx.commit().unwrap();
    let spent: String = client
        .query_one(
            "SELECT trim_scale(sum(spent))::text FROM credits.stripes WHERE account_id = 'stripe_tx'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(spent, "6", "the six debits were the stripes'");
    assert_eq!(balance_of(&mut client, "stripe_tx", "monthly_used"), "7");
    assert_verified(&mut client);
}
