//! Crash recovery: 20 times, the postmaster is stopped with `pg_ctl stop -m
//! immediate` (no shutdown checkpoint, backends killed) while 8 clients
//! debit, refund and reserve. After each restart: every operation a client
//! saw acknowledged is in the ledger, each unacknowledged one is all or
//! nothing (verify() is empty), and no balance is exceeded.
//!
//! Needs CREDITS_TEST_PGDATA (the cluster's data directory; scripts/test
//! sets it). The cluster runs with synchronous_commit = on for the test, so
//! an acknowledged commit is on disk (fsync = off is fine: the OS does not
//! crash, only PostgreSQL).

mod common;

use common::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PG_CTL: &str = "/usr/lib/postgresql/15/bin/pg_ctl";
const CLIENTS: usize = 8;
const ACCOUNTS: usize = 4;

fn pg_ctl(args: &[&str]) {
    let pgdata =
        std::env::var("CREDITS_TEST_PGDATA").expect("set CREDITS_TEST_PGDATA (scripts/test does)");
    let log = format!("{pgdata}/server.log");
    let mut full = vec![
        "-u",
        "postgres",
        "--",
        PG_CTL,
        "-D",
        pgdata.as_str(),
        "-l",
        log.as_str(),
    ];
    full.extend_from_slice(args);
    let out = Command::new("runuser")
        .args(&full)
        .output()
        .expect("run pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What one client saw acknowledged: (idempotency key, entry id).
type Acknowledged = Arc<Mutex<Vec<(String, String, i64)>>>;

/// Random operations with unique idempotency keys until `stop`; records acknowledgements.
fn client_loop(id: usize, cycle: usize, stop: Arc<AtomicBool>, acked: Acknowledged) {
    let Ok(mut client) = std::panic::catch_unwind(connect) else {
        return;
    };
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let account = format!("crash_{}", (id + n) % ACCOUNTS);
        let key = format!("c{cycle}-{id}-{n}");
        let result = match n % 4 {
            // a debit, its refund (half), a hold settled in the same transaction
            0 | 1 => client
                .query_one(
                    "SELECT credits.try_debit($1, 'agent', 0.5, $2)",
                    &[&account, &key],
                )
                .map(|r| r.get::<_, Option<i64>>(0)),
            2 => client
                .query_one(
                    "SELECT credits.refund(credits.debit($1, 'agent', 1, $2), 0.5)",
                    &[&account, &key],
                )
                .map(|r| Some(r.get::<_, i64>(0))),
            _ => client
                .query_one(
                    "SELECT credits.settle(credits.reserve($1, 'agent', 2, '1 hour', $2), 1.25)",
                    &[&account, &key],
                )
                .map(|r| Some(r.get::<_, i64>(0))),
        };
        match result {
            Ok(Some(entry)) => acked.lock().unwrap().push((account, key, entry)),
            Ok(None) => {} // denied: nothing to check
            Err(e) => match e.code().map(|c| c.code().to_string()) {
                Some(c) if c == "UC001" => {}
                // the server went away: no SQLSTATE, or class 08 (connection) / 57 (shutdown)
                None => return,
                Some(c) if c.starts_with("08") || c.starts_with("57") => return,
                Some(c) => panic!("client {id}: unexpected error {c}: {e}"),
            },
        }
    }
}

#[test]
fn acknowledged_operations_survive_twenty_immediate_shutdowns() {
    let mut setup = connect();
    setup
        .batch_execute("ALTER SYSTEM SET synchronous_commit = on; ")
        .unwrap();
    setup.batch_execute("SELECT pg_reload_conf()").unwrap();
    for a in 0..ACCOUNTS {
        subscribe(&mut setup, &format!("crash_{a}"), "pro");
        setup
            .execute(
                "SELECT credits.purchase($1, 100000)",
                &[&format!("crash_{a}")],
            )
            .unwrap();
    }
    drop(setup);

    // 20 in CI; scripts/soak runs more (CREDITS_CRASH_CYCLES).
    let cycles: usize = std::env::var("CREDITS_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut total_acked = 0;
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Acknowledged = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let (stop, acked) = (stop.clone(), acked.clone());
                std::thread::spawn(move || client_loop(id, cycle, stop, acked))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + 37 * cycle as u64 % 200));
        pg_ctl(&["stop", "-m", "immediate", "-w"]);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        pg_ctl(&["start", "-w", "-t", "60"]);

        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "cycle {cycle}: the clients got nothing done before the crash"
        );
        total_acked += acked.len();
        let mut client = connect();
        for (account, key, entry) in &acked {
            let found: i64 = client
                .query_one(
                    "SELECT count(*) FROM credits.idempotency i JOIN credits.ledger l ON l.entry_id = i.entry_id
                      WHERE i.account_id = $1 AND i.idempotency_key = $2",
                    &[account, key],
                )
                .unwrap()
                .get(0);
            assert_eq!(
                found, 1,
                "cycle {cycle}: acknowledged {key} (entry {entry}) is not in the ledger"
            );
            let exists: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM credits.ledger WHERE entry_id = $1)",
                    &[entry],
                )
                .unwrap()
                .get(0);
            assert!(
                exists,
                "cycle {cycle}: acknowledged entry {entry} is missing"
            );
        }
        assert_verified(&mut client);
        let over: i64 = client
            .query_one(
                "SELECT count(*) FROM credits.accounts a, LATERAL credits.balance(a.account_id) b
                  WHERE a.account_id LIKE 'crash\\_%' AND (b.monthly_used > b.monthly_limit OR b.available < 0)",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(over, 0, "cycle {cycle}: a balance is exceeded");
    }
    assert!(
        total_acked >= cycles * CLIENTS,
        "too little work was done ({total_acked} operations)"
    );
    let mut client = connect();
    client
        .batch_execute("ALTER SYSTEM RESET synchronous_commit")
        .unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
}
