//! Retries: 10,000 operations with idempotency keys while their connections
//! are terminated (pg_terminate_backend) and their statements cancelled
//! (statement_timeout) mid-flight. Each client retries with the same key
//! until it gets an answer; afterwards every operation has exactly one
//! effect and the answer the client kept is that effect.

mod common;

use common::*;
use postgres::Client;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CLIENTS: usize = 8;
const OPERATIONS: usize = 10_000;
const ACCOUNTS: usize = 16;
const APP: &str = "credits-retry-client";

fn reconnect() -> Client {
    loop {
        if let Ok(mut c) = try_connect() {
            if c.batch_execute(&format!("SET application_name = '{APP}'"))
                .is_ok()
            {
                return c;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One client: its share of operations, each retried with its key until answered.
/// Returns (key, account, entry the client was told).
fn client_run(id: usize) -> Vec<(String, String, i64)> {
    connect(); // the test database exists
    let mut client = reconnect();
    let mut answers = Vec::new();
    let (mut retries, mut rng) = (0usize, 0x9e37_79b9_u64.wrapping_mul(id as u64 + 1));
    for n in 0..OPERATIONS / CLIENTS {
        let account = format!("retry_{}", (id * 7 + n) % ACCOUNTS);
        let key = format!("op-{id}-{n}");
        loop {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // One attempt in eight runs with a timeout short enough to cancel it now and then.
            let timeout = if rng % 8 == 0 { "1ms" } else { "0" };
            let sql = if n % 3 == 0 {
                "SELECT credits.reserve($1, 'agent', 0.25, '1 day', $2)"
            } else {
                "SELECT credits.debit($1, 'agent', 0.5, $2)"
            };
            let result = client
                .batch_execute(&format!("SET statement_timeout = '{timeout}'"))
                .and_then(|_| client.query_one(sql, &[&account, &key]));
            match result {
                Ok(row) => {
                    answers.push((key, account, row.get::<_, i64>(0)));
                    break;
                }
                Err(e) => {
                    retries += 1;
                    match e.code().map(|c| c.code().to_string()) {
                        // cancelled or serialization failure: retry on the same connection
                        Some(c) if c == "57014" || c == "40001" => {}
                        // terminated: no SQLSTATE or class 57/08; reconnect and retry
                        None => client = reconnect(),
                        Some(c) if c.starts_with("57") || c.starts_with("08") => {
                            client = reconnect()
                        }
                        Some(c) => panic!("client {id}, {key}: unexpected error {c}: {e}"),
                    }
                    if client.is_closed() {
                        client = reconnect();
                    }
                }
            }
        }
    }
    assert!(
        retries > 0,
        "client {id} never had to retry: the test did not disturb it"
    );
    answers
}

#[test]
fn ten_thousand_operations_retried_with_their_keys_each_take_effect_once() {
    let mut setup = connect();
    for a in 0..ACCOUNTS {
        let account = format!("retry_{a}");
        subscribe(&mut setup, &account, "pro");
        setup
            .execute("SELECT credits.purchase($1, 100000)", &[&account])
            .unwrap();
    }

    // The chaos: terminate a random client connection every few milliseconds.
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut killer = connect();
            let mut kills = 0i64;
            while !stop.load(Ordering::Relaxed) {
                kills += killer
                    .query_one(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
                           FROM (SELECT pid FROM pg_stat_activity WHERE application_name = $1
                                  ORDER BY random() LIMIT 1) p",
                        &[&APP],
                    )
                    .map(|r| r.get::<_, i64>(0))
                    .unwrap_or(0);
                std::thread::sleep(Duration::from_millis(15));
            }
            kills
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| std::thread::spawn(move || client_run(id)))
        .collect();
    let answers: Vec<_> = clients
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    stop.store(true, Ordering::Relaxed);
    let kills = chaos.join().unwrap();
    assert!(kills >= 10, "only {kills} connections were terminated");
    assert_eq!(answers.len(), OPERATIONS);

    let mut client = connect();
    // Each key has exactly one effect: one stored key, one ledger entry, the one the client was told.
    let stored: HashMap<String, i64> = client
        .query(
            "SELECT idempotency_key, entry_id FROM credits.idempotency WHERE account_id LIKE 'retry\\_%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored.len(), OPERATIONS, "one stored key per operation");
    for (key, _account, entry) in &answers {
        assert_eq!(
            stored.get(key),
            Some(entry),
            "{key}: the client's answer is the stored effect"
        );
    }
    let (debits, holds, debited, held): (i64, i64, String, String) = {
        let r = client
            .query_one(
                "SELECT count(*) FILTER (WHERE kind = 'D'), count(*) FILTER (WHERE kind = 'H'),
                        coalesce(sum(amount) FILTER (WHERE kind = 'D'), 0)::text,
                        coalesce(sum(amount) FILTER (WHERE kind = 'H'), 0)::text
                   FROM credits.ledger WHERE account_id LIKE 'retry\\_%'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    let expected_holds = (0..CLIENTS)
        .map(|_| (0..OPERATIONS / CLIENTS).filter(|n| n % 3 == 0).count())
        .sum::<usize>() as i64;
    assert_eq!(holds, expected_holds);
    assert_eq!(debits, OPERATIONS as i64 - expected_holds);
    assert_eq!(debited.parse::<f64>().unwrap(), debits as f64 * 0.5);
    assert_eq!(held.parse::<f64>().unwrap(), holds as f64 * 0.25);
    assert_verified(&mut client);
}
