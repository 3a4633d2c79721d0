//! Events seen by a real LISTENing client: exactly once per account and
//! window under concurrency, nothing from a rolled-back transaction, and the
//! durable table matches what the listener received.

mod common;

use common::*;
use std::time::Duration;

const AT: &str = "2027-02-03 15:00:00+00";

/// Event ids of `account` that a listener received (waits briefly for stragglers).
fn received(listener: &mut postgres::Client, account: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut notifications = listener.notifications();
    let mut pending = notifications.timeout_iter(Duration::from_millis(700));
    while let Ok(Some(n)) = postgres::fallible_iterator::FallibleIterator::next(&mut pending) {
        assert_eq!(n.channel(), "credits");
        let payload = n.payload();
        if payload.contains(&format!("\"account_id\": \"{account}\"")) {
            let id = payload
                .split("\"event_id\": ")
                .nth(1)
                .expect("payload has event_id");
            ids.push(
                id.trim_end_matches('}')
                    .split(',')
                    .next()
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap(),
            );
        }
    }
    ids.sort();
    ids
}

fn stored(client: &mut postgres::Client, account: &str, kind: &str) -> Vec<i64> {
    client
        .query(
            "SELECT event_id FROM credits.events WHERE account_id = $1 AND kind = $2 ORDER BY event_id",
            &[&account, &kind],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn one_exhausted_event_per_window_under_concurrency_and_the_listener_gets_what_is_stored() {
    let mut listener = connect();
    listener.batch_execute("LISTEN credits").unwrap();
    let mut client = connect_at(AT);
    subscribe(&mut client, "ev_conc", "free");
    // 12 sessions race for the 10 daily credits, 3 attempts each.
    let successes: usize = in_parallel(12, AT, |c| {
        (0..3)
            .filter(|_| {
                c.query_one("SELECT credits.try_debit('ev_conc', 'agent')", &[])
                    .unwrap()
                    .get::<_, Option<i64>>(0)
                    .is_some()
            })
            .count()
    })
    .into_iter()
    .sum();
    assert_eq!(successes, 10);
    let exhausted = stored(&mut client, "ev_conc", "exhausted");
    assert_eq!(
        exhausted.len(),
        1,
        "exactly one exhausted event for the day"
    );
    let mut all: Vec<i64> = client
        .query(
            "SELECT event_id FROM credits.events WHERE account_id = 'ev_conc'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    all.sort();
    assert_eq!(
        received(&mut listener, "ev_conc"),
        all,
        "NOTIFY and the table agree"
    );
    assert_verified(&mut client);
}

#[test]
fn a_rolled_back_transaction_notifies_nothing() {
    let mut listener = connect();
    listener.batch_execute("LISTEN credits").unwrap();
    let mut client = connect_at(AT);
    subscribe(&mut client, "ev_rb", "pro");
    let mut tx = client.transaction().unwrap();
    tx.query_one("SELECT credits.debit('ev_rb', 'agent', 100)", &[])
        .unwrap();
    tx.rollback().unwrap();
    assert!(
        received(&mut listener, "ev_rb").is_empty(),
        "no NOTIFY from a rollback"
    );
    assert!(stored(&mut client, "ev_rb", "exhausted").is_empty());
    // The same work committed notifies: 80 %, 100 % and exhausted.
    client
        .query_one("SELECT credits.debit('ev_rb', 'agent', 100)", &[])
        .unwrap();
    assert_eq!(received(&mut listener, "ev_rb").len(), 3);
}
