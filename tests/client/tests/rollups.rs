//! Usage rollups under concurrency: an entry whose transaction is still open
//! when a higher entry id is already visible must not be skipped, and with
//! debits in transactions of every length racing a refresh loop, the views
//! end equal to the ledger summed directly, and verify() finds nothing.

mod common;

use common::*;
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const AT: &str = "2027-05-10 12:00:00+00";

fn rolled_through(client: &mut Client) -> i64 {
    client
        .query_one("SELECT rolled_through FROM credits.rollup_state", &[])
        .unwrap()
        .get(0)
}

/// Refresh until every entry committed so far is rolled up.
fn refresh_all(client: &mut Client) {
    let target: i64 = client
        .query_one("SELECT coalesce(max(entry_id), 0) FROM credits.ledger", &[])
        .unwrap()
        .get(0);
    wait_until(30, "the rollups to catch up", || {
        client
            .query_one("SELECT credits_internal._refresh_rollups(1000)", &[])
            .unwrap();
        rolled_through(client) >= target
    });
}

/// account_months computed straight from the ledger vs the view, as text rows.
fn months_both_ways(client: &mut Client, prefix: &str) -> (Vec<String>, Vec<String>) {
    let like = format!("{prefix}%");
    let rows = |client: &mut Client, sql: &str| -> Vec<String> {
        client
            .query(sql, &[&like])
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    };
    let view = rows(
        client,
        "SELECT concat_ws(' ', account_id, month, debited, refunded, net_from_grants, forfeited, granted, purchased)
           FROM credits.account_months WHERE account_id LIKE $1 ORDER BY 1",
    );
    let ledger = rows(
        client,
        "SELECT concat_ws(' ', account_id, credits_internal._report_month(kind, at, metadata),
                          coalesce(sum(amount) FILTER (WHERE kind = 'D'), 0),
                          coalesce(sum(amount) FILTER (WHERE kind = 'R'), 0),
                          coalesce(sum(from_grants) FILTER (WHERE kind = 'D'), 0)
                            - coalesce(sum(from_grants) FILTER (WHERE kind = 'R'), 0),
                          coalesce(sum(amount) FILTER (WHERE kind = 'F'), 0),
                          coalesce(sum(amount) FILTER (WHERE kind = 'G'), 0),
                          coalesce(sum(amount) FILTER (WHERE kind = 'P'), 0))
           FROM credits.ledger WHERE account_id LIKE $1
          GROUP BY account_id, credits_internal._report_month(kind, at, metadata) ORDER BY 1",
    );
    (view, ledger)
}

#[test]
fn an_entry_still_in_flight_below_a_visible_one_is_not_skipped() {
    let mut client = connect_at(AT);
    subscribe(&mut client, "ro_slow", "pro");
    subscribe(&mut client, "ro_fast", "pro");
    refresh_all(&mut client);

    // A session left idle in a read-only transaction holds no entry: it
    // must not hold the rollups back.
    let mut reader = connect_at(AT);
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM credits.accounts")
        .unwrap();

    // The slow transaction takes its entry id first and stays open ...
    let mut slow = connect_at(AT);
    slow.batch_execute("BEGIN").unwrap();
    let slow_entry: i64 = slow
        .query_one("SELECT credits.debit('ro_slow', 'agent', 7)", &[])
        .unwrap()
        .get(0);
    // ... while a later, higher entry commits.
    let fast_entry: i64 = client
        .query_one("SELECT credits.debit('ro_fast', 'agent', 3)", &[])
        .unwrap()
        .get(0);
    assert!(fast_entry > slow_entry);

    for _ in 0..5 {
        client
            .query_one("SELECT credits_internal._refresh_rollups(1000)", &[])
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        rolled_through(&mut client) < slow_entry,
        "the rollups passed entry {slow_entry} while its transaction was open"
    );
    // The views are exact meanwhile: the committed debit shows, the open one does not.
    let (view, ledger) = months_both_ways(&mut client, "ro_");
    assert_eq!(view, ledger);
    assert!(view.iter().any(|r| r.starts_with("ro_fast 2027-05-01 3 ")));
    assert!(view.iter().any(|r| r.starts_with("ro_slow 2027-05-01 0 ")));

    slow.batch_execute("COMMIT").unwrap();
    refresh_all(&mut client); // (times out if the idle reader held the rollups back)
    reader.batch_execute("COMMIT").unwrap();
    let rolled: String = client
        .query_one(
            "SELECT amount::text FROM credits.usage_rollup
              WHERE account_id = 'ro_slow' AND month = '2027-05-01' AND kind = 'D'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rolled, "7", "the late entry is in the rollup");
    let (view, ledger) = months_both_ways(&mut client, "ro_");
    assert_eq!(view, ledger);
    assert_verified(&mut client);
}

#[test]
fn debits_of_every_length_racing_refreshes_end_equal_to_the_ledger() {
    let mut client = connect_at(AT);
    for i in 0..8 {
        subscribe(&mut client, &format!("rr_{i}"), "pro");
        client
            .execute("SELECT credits.purchase($1, 100000)", &[&format!("rr_{i}")])
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let refresher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = connect();
            let mut rolled = 0u64;
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Half the calls also wait (as the worker does) for the
                // transactions older than their new candidate, and roll on.
                calls += 1;
                let wait = if calls % 2 == 0 { "0" } else { "5 ms" };
                let n: i64 = c
                    .query_one(
                        "SELECT credits_internal._refresh_rollups(7, $1::text::interval)",
                        &[&wait],
                    )
                    .unwrap()
                    .get(0);
                rolled += n as u64;
                std::thread::sleep(Duration::from_millis(3));
            }
            rolled
        })
    };
    // 8 sessions; every transaction debits twice, some refund, some roll
    // back, and they sleep 0-40 ms while open.
    in_parallel(8, AT, |c| {
        let me: i64 = c
            .query_one("SELECT pg_backend_pid()::bigint", &[])
            .unwrap()
            .get(0);
        for round in 0..40i64 {
            let seed = me * 31 + round * 17;
            let account = format!("rr_{}", seed % 8);
            let mut tx = c.transaction().unwrap();
            let d: i64 = tx
                .query_one("SELECT credits.debit($1, 'agent', 0.5)", &[&account])
                .unwrap()
                .get(0);
            std::thread::sleep(Duration::from_millis((seed % 5 * 10) as u64));
            if seed % 3 == 0 {
                tx.query_one("SELECT credits.refund($1, 0.25)", &[&d])
                    .unwrap();
            }
            tx.query_one(
                "SELECT credits.debit($1, 'code_generation', 1)",
                &[&account],
            )
            .unwrap();
            if seed % 7 == 0 {
                tx.rollback().unwrap();
            } else {
                tx.commit().unwrap();
            }
        }
    });
    stop.store(true, Ordering::Relaxed);
    let rolled_while_racing = refresher.join().unwrap();
    assert!(
        rolled_while_racing > 0,
        "the refresh loop never rolled anything up while the debits ran"
    );
    refresh_all(&mut client);
    let (view, ledger) = months_both_ways(&mut client, "rr_");
    assert_eq!(view, ledger);
    let debits: i64 = client
        .query_one(
            "SELECT sum(entries)::bigint FROM credits.usage_rollup WHERE account_id LIKE 'rr_%' AND kind = 'D'",
            &[],
        )
        .unwrap()
        .get(0);
    let in_ledger: i64 = client
        .query_one(
            "SELECT count(*) FROM credits.ledger WHERE account_id LIKE 'rr_%' AND kind = 'D'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(debits, in_ledger);
    assert_verified(&mut client);
}
