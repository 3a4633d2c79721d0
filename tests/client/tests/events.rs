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

/// Every event read_events returns after `after`, following its cursors to
/// the end: (event ids, the last cursor).
fn read_feed(client: &mut postgres::Client, mut after: i64) -> (Vec<i64>, i64) {
    let mut ids = Vec::new();
    loop {
        let rows = client
            .query(
                "SELECT \"cursor\", event_id FROM credits.read_events($1, 2)",
                &[&after],
            )
            .unwrap();
        if rows.is_empty() {
            return (ids, after);
        }
        for row in rows {
            after = row.get(0);
            ids.push(row.get(1));
        }
    }
}

/// Event ids are taken when events are inserted, but transactions commit in
/// any order: a consumer following read_events' cursors must neither skip
/// an event that commits after a later one was read, nor see one that
/// rolled back.
#[test]
fn a_consumer_following_read_events_gets_every_committed_event_exactly_once() {
    let mut consumer = connect();
    let mut setup = connect_at(AT);
    for account in ["ev_feed_1", "ev_feed_2", "ev_feed_3"] {
        subscribe(&mut setup, account, "free");
    }
    let (_, start) = read_feed(&mut consumer, 0);
    let exhaust = "SELECT credits.debit($1, 'agent', 10)";
    // The first event's transaction stays open ...
    let mut first = connect_at(AT);
    first.batch_execute("BEGIN").unwrap();
    first.query_one(exhaust, &[&"ev_feed_1"]).unwrap();
    let first_id: i64 = first
        .query_one(
            "SELECT max(event_id) FROM credits.events WHERE account_id = 'ev_feed_1'",
            &[],
        )
        .unwrap()
        .get(0);
    // ... while a later one commits, and a third rolls back.
    let mut second = connect_at(AT);
    second.query_one(exhaust, &[&"ev_feed_2"]).unwrap();
    let second_ids = stored(&mut second, "ev_feed_2", "exhausted");
    let mut third = connect_at(AT);
    third.batch_execute("BEGIN").unwrap();
    third.query_one(exhaust, &[&"ev_feed_3"]).unwrap();
    third.batch_execute("ROLLBACK").unwrap();
    assert!(
        second_ids.iter().all(|id| *id > first_id),
        "the committed event has the later id"
    );
    // Visible but not yet safe to read past: the open event holds it back.
    let (early, cursor) = read_feed(&mut consumer, start);
    assert!(
        early.iter().all(|id| *id < first_id),
        "nothing after the event still in flight: {early:?} (in flight: {first_id})"
    );
    first.batch_execute("COMMIT").unwrap();
    let (late, end) = read_feed(&mut consumer, cursor);
    let all: Vec<i64> = early.into_iter().chain(late).collect();
    let mut expected = stored(&mut setup, "ev_feed_1", "exhausted");
    expected.extend(second_ids);
    assert_eq!(expected.len(), 2, "one event each: {expected:?}");
    assert_eq!(all, expected, "each committed event once, in id order");
    assert!(stored(&mut setup, "ev_feed_3", "exhausted").is_empty());
    // Nothing is read twice.
    assert_eq!(read_feed(&mut consumer, end).0, Vec::<i64>::new());
    assert_verified(&mut setup);
}

/// With credits.notify_payload = minimal a listener learns that an event
/// happened (cursor, id, kind) but no account data; read_events, behind
/// privileges, has the rest.
#[test]
fn a_minimal_notification_carries_no_account_data() {
    let mut listener = connect();
    listener.batch_execute("LISTEN credits").unwrap();
    let mut client = connect_at(AT);
    subscribe(&mut client, "ev_private", "free");
    client
        .batch_execute("SET credits.notify_payload = 'minimal'")
        .unwrap();
    client
        .query_one("SELECT credits.debit('ev_private', 'agent', 10)", &[])
        .unwrap();
    let mut payloads = Vec::new();
    let mut notifications = listener.notifications();
    let mut pending = notifications.timeout_iter(Duration::from_millis(700));
    while let Ok(Some(n)) = postgres::fallible_iterator::FallibleIterator::next(&mut pending) {
        payloads.push(n.payload().to_string());
    }
    assert!(!payloads.is_empty(), "the event was notified");
    for payload in &payloads {
        let keys: String = client
            .query_one(
                "SELECT string_agg(k, ',' ORDER BY k) FROM jsonb_object_keys($1::text::jsonb) k",
                &[payload],
            )
            .unwrap()
            .get(0);
        assert_eq!(keys, "cursor,event_id,kind", "{payload}");
        assert!(!payload.contains("ev_private"), "{payload}");
    }
    let cursor: i64 = client
        .query_one(
            "SELECT ($1::text::jsonb ->> 'cursor')::bigint",
            &[&payloads[0]],
        )
        .unwrap()
        .get(0);
    let account: String = client
        .query_one(
            "SELECT account_id FROM credits.read_events($1::bigint - 1, 1)",
            &[&cursor],
        )
        .unwrap()
        .get(0);
    assert_eq!(account, "ev_private");
    assert_verified(&mut client);
}
