//! credits.debit_many against what it promises: each row decided as
//! try_debit would decide it, each account's rows in the order given.
//!
//! - Equivalence: random batches (plans, grants, a purchase, an alert, an
//!   open hold, striped accounts, reused and conflicting keys, invalid
//!   rows, day and month boundaries) run through debit_many on one set of accounts and as
//!   single try_debit calls on a twin set; outcomes, balances, ledgers,
//!   events, closed windows and grants must agree after every batch.
//! - Concurrency: sessions posting batches over the same accounts in
//!   different row orders, beside single debits, neither deadlock nor
//!   overspend: each account ends exactly at its daily limit.
//! - Speed's premise: rows the fast path can take never reach SQL.

mod common;

use common::*;
use postgres::Client;

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

fn fresh(db: &str, at: &str) -> Client {
    recreate_database(db);
    let mut client = connect_db(db);
    client.batch_execute("CREATE EXTENSION credits").unwrap();
    set_clock(&mut client, at);
    client
}

/// One input row of a batch.
#[derive(Clone)]
struct Request {
    account: usize,
    feature: &'static str,
    quantity: &'static str,
    key: Option<String>,
    metadata: Option<&'static str>,
}

/// (outcome, sqlstate) of each row of a batch posted with debit_many on
/// accounts `{prefix}{n}`.
fn post_batch(
    client: &mut Client,
    prefix: &str,
    batch: &[Request],
) -> Vec<(String, Option<String>)> {
    let accounts: Vec<String> = batch
        .iter()
        .map(|r| format!("{prefix}{}", r.account))
        .collect();
    let features: Vec<&str> = batch.iter().map(|r| r.feature).collect();
    let quantities: Vec<&str> = batch.iter().map(|r| r.quantity).collect();
    let keys: Vec<Option<String>> = batch.iter().map(|r| r.key.clone()).collect();
    let metadata: Vec<Option<&str>> = batch.iter().map(|r| r.metadata).collect();
    client
        .query(
            "SELECT outcome, sqlstate FROM credits.debit_many($1, $2, $3::text[]::numeric[], $4,
                                                               $5::text[]::jsonb[]) ORDER BY ordinality",
            &[&accounts, &features, &quantities, &keys, &metadata],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The same rows as single try_debit calls on accounts `{prefix}{n}`, in
/// the order given, each in its own transaction, with the outcome
/// debit_many names for it.
fn post_singly(
    client: &mut Client,
    prefix: &str,
    batch: &[Request],
) -> Vec<(String, Option<String>)> {
    batch
        .iter()
        .map(|r| {
            let account = format!("{prefix}{}", r.account);
            let prior: Option<i64> = match &r.key {
                Some(key) => client
                    .query_opt(
                        "SELECT entry_id FROM credits.idempotency WHERE account_id = $1 AND idempotency_key = $2",
                        &[&account, key],
                    )
                    .unwrap()
                    .map(|row| row.get(0)),
                None => None,
            };
            let result = client.query_one(
                "SELECT credits.try_debit($1, $2, $3::text::numeric, $4, $5::text::jsonb)",
                &[&account, &r.feature, &r.quantity, &r.key, &r.metadata],
            );
            match result {
                Ok(row) => match row.get::<_, Option<i64>>(0) {
                    Some(entry) if Some(entry) == prior => ("replayed".into(), None),
                    Some(_) => ("charged".into(), None),
                    None => ("refused".into(), Some("UC001".into())),
                },
                Err(e) => (
                    "rejected".into(),
                    Some(e.code().expect("an SQLSTATE").code().to_string()),
                ),
            }
        })
        .collect()
}

/// Everything the rules decide about account `name`, without its name or
/// ids (a twin's are different).
fn account_facts(client: &mut Client, name: &str) -> Vec<String> {
    let queries = [
        "SELECT row(b.*)::text FROM credits.balance($1) b",
        // (a grant's expiry entry is written by whichever call finds it due
        // first: a call the fast path declined, or maintenance; in order
        // among the others it may differ, as a set it may not)
        "SELECT string_agg(format('%s %s %s %s %s', kind, trim_scale(amount), trim_scale(from_grants), feature_id, metadata), '; '
                           ORDER BY entry_id) FROM credits.ledger WHERE account_id = $1 AND kind <> 'E'",
        "SELECT string_agg(format('%s %s %s %s', at, trim_scale(amount), ref IS NULL, metadata), '; ' ORDER BY at, amount)
           FROM credits.ledger WHERE account_id = $1 AND kind = 'E'",
        "SELECT string_agg(format('%s %s %s %s %s', kind, window_kind, window_key, threshold,
                                  payload - 'account_id'), '; ' ORDER BY event_id)
           FROM credits.events WHERE account_id = $1",
        "SELECT string_agg(format('%s %s %s %s %s', window_kind, window_start, trim_scale(used), trim_scale(forfeited), trim_scale(held)),
                           '; ' ORDER BY window_kind, window_start) FROM credits.closed_windows WHERE account_id = $1",
        "SELECT string_agg(format('%s %s %s', kind, trim_scale(amount), trim_scale(remaining)), '; ' ORDER BY grant_id)
           FROM credits.grants WHERE account_id = $1",
        "SELECT string_agg(format('%s %s %s', trim_scale(amount), trim_scale(from_grants), resolved_entry IS NULL), '; ' ORDER BY hold_id)
           FROM credits.holds WHERE account_id = $1",
    ];
    queries
        .iter()
        .map(|sql| {
            let value: Option<String> = client.query_one(*sql, &[&name]).unwrap().get(0);
            value.unwrap_or_default()
        })
        .collect()
}

#[test]
fn a_batch_decides_every_row_as_try_debit_calls_in_the_order_given() {
    let db = "credits_batch_equivalence";
    let mut client = fresh(db, "2031-03-30 10:00:00+00");
    const ACCOUNTS: usize = 6;
    for prefix in ["m", "s"] {
        for n in 0..ACCOUNTS {
            let account = format!("{prefix}{n}");
            subscribe(
                &mut client,
                &account,
                if n % 2 == 0 { "free" } else { "pro" },
            );
            let setup = match n {
                1 | 4 => {
                    "SELECT credits.grant($1, 5, 'promotional', credits.now() + interval '2 days')"
                }
                3 => "SELECT credits.purchase($1, 20)",
                5 => "SELECT credits.set_alert($1, remaining => 30)",
                _ => "SELECT credits.reserve($1, 'agent', 3)",
            };
            client.execute(setup, &[&account]).unwrap();
            // two twins striped (a batch spends their rows from stripes)
            if n == 1 || n == 3 {
                client
                    .execute("SELECT credits.set_stripes($1, 2)", &[&account])
                    .unwrap();
            }
        }
    }
    let mut rng = Rng(0x5EED_BA7C_4000_0001);
    // Each batch at a later instant: same hour, hours later, the next day,
    // across the month's end.
    let clocks = [
        "2031-03-30 10:00:00+00",
        "2031-03-30 10:00:00+00",
        "2031-03-30 15:00:00+00",
        "2031-03-31 09:00:00+00",
        "2031-03-31 23:59:59+00",
        "2031-04-01 00:00:01+00",
        "2031-04-01 08:00:00+00",
        "2031-04-02 12:00:00+00",
    ];
    let mut seen = std::collections::BTreeMap::new();
    let mut history: Vec<Request> = Vec::new();
    for (round, at) in clocks.iter().enumerate() {
        set_clock(&mut client, at);
        let mut batch: Vec<Request> = Vec::new();
        for _ in 0..60 {
            // A retry of an earlier row (a pipeline posting again what it
            // is not sure went through), or a new one.
            let row = if !history.is_empty() && rng.below(6) == 0 {
                let earlier: &Request = &history[rng.below(history.len())];
                earlier.clone()
            } else {
                Request {
                    account: rng.below(ACCOUNTS),
                    feature: if rng.below(25) == 0 {
                        "no_such_feature"
                    } else {
                        "agent"
                    },
                    quantity: rng.pick(&["0.5", "1", "1", "2", "3", "7.5", "0", "0.00001", "-1"]),
                    key: (rng.below(2) == 0).then(|| format!("k{}", rng.below(40))),
                    metadata: rng.pick(&[
                        None,
                        None,
                        None,
                        Some(r#"{"request": "r"}"#),
                        Some("[1]"),
                    ]),
                }
            };
            history.push(row.clone());
            batch.push(row);
        }
        let batched = post_batch(&mut client, "m", &batch);
        let single = post_singly(&mut client, "s", &batch);
        client
            .execute("CALL credits.run_maintenance()", &[])
            .unwrap();
        for (i, (b, s)) in batched.iter().zip(&single).enumerate() {
            assert_eq!(
                b,
                s,
                "batch {round}, row {}: debit_many and try_debit disagree",
                i + 1
            );
        }
        for (outcome, _) in &batched {
            *seen.entry(outcome.clone()).or_insert(0) += 1;
        }
        for n in 0..ACCOUNTS {
            let (m, s) = (
                account_facts(&mut client, &format!("m{n}")),
                account_facts(&mut client, &format!("s{n}")),
            );
            for (what, (m, s)) in [
                "balance",
                "ledger",
                "events",
                "closed windows",
                "grants",
                "holds",
            ]
            .iter()
            .zip(m.iter().zip(&s))
            {
                assert_eq!(m, s, "batch {round}, account {n}: {what} differ");
            }
        }
    }
    // (the batches must have been worth comparing: every outcome, often)
    for outcome in ["charged", "replayed", "refused", "rejected"] {
        let n = seen.get(outcome).copied().unwrap_or(0);
        assert!(n >= 10, "only {n} rows {outcome}: {seen:?}");
    }
    assert_verified(&mut client);
}

#[test]
fn concurrent_batches_over_the_same_accounts_neither_deadlock_nor_overspend() {
    // (in the shared test database: in_parallel's sessions connect there)
    let at = "2031-05-10 12:00:00+00";
    let mut client = connect_at(at);
    const ACCOUNTS: usize = 5;
    for n in 0..ACCOUNTS {
        subscribe(&mut client, &format!("bc{n}"), "free"); // 10 a day
    }
    // Four sessions post batches (each row 0.25; every session its own row
    // order, some batches reversed); a fifth debits singly meanwhile.
    let sessions = 5;
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results = in_parallel(sessions, at, move |client| {
        let me = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut rng = Rng(0xC0FF_EE00 + me as u64);
        let mut charged = vec![0usize; ACCOUNTS];
        client
            .batch_execute(&format!("SET application_name = 'batch-session-{me}'"))
            .unwrap();
        for round in 0..15 {
            if me == sessions - 1 {
                for _ in 0..40 {
                    let n = rng.below(ACCOUNTS);
                    let entry: Option<i64> = client
                        .query_one(
                            "SELECT credits.try_debit($1, 'agent', 0.25)",
                            &[&format!("bc{n}")],
                        )
                        .unwrap()
                        .get(0);
                    charged[n] += entry.is_some() as usize;
                }
                continue;
            }
            let mut rows: Vec<usize> = (0..40).map(|_| rng.below(ACCOUNTS)).collect();
            if round % 2 == 1 {
                rows.sort_unstable_by(|a, b| b.cmp(a));
            }
            let batch: Vec<Request> = rows
                .iter()
                .map(|&account| Request {
                    account,
                    feature: "agent",
                    quantity: "0.25",
                    key: None,
                    metadata: None,
                })
                .collect();
            for (row, (outcome, sqlstate)) in batch.iter().zip(post_batch(client, "bc", &batch)) {
                match outcome.as_str() {
                    "charged" => charged[row.account] += 1,
                    "refused" => assert_eq!(sqlstate.as_deref(), Some("UC001")),
                    other => panic!("unexpected outcome {other} ({sqlstate:?})"),
                }
            }
        }
        charged
    });
    for n in 0..ACCOUNTS {
        let account = format!("bc{n}");
        let charged: usize = results.iter().map(|r| r[n]).sum();
        assert_eq!(
            charged, 40,
            "{account}: 40 debits of 0.25 fill its day of 10"
        );
        assert_eq!(
            balance_of(&mut client, &account, "daily_used"),
            "10",
            "{account}"
        );
        let ledger: String = client
            .query_one(
                "SELECT trim_scale(sum(amount))::text FROM credits.ledger WHERE account_id = $1 AND kind = 'D'",
                &[&account],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            ledger, "10",
            "{account}: the ledger holds exactly the day's limit"
        );
    }
    assert_verified(&mut client);
}

#[test]
fn rows_the_fast_path_can_take_never_reach_sql() {
    let db = "credits_batch_fast";
    let mut client = fresh(db, "2031-06-10 12:00:00+00");
    client
        .batch_execute(
            "SELECT credits.subscribe('f' || i, 'pro') FROM generate_series(1, 100) i;
             SET track_functions = 'all';",
        )
        .unwrap();
    let mut tx = client.transaction().unwrap();
    let charged: i64 = tx
        .query_one(
            "SELECT count(*) FILTER (WHERE outcome = 'charged')
               FROM credits.debit_many(ARRAY(SELECT 'f' || (i % 100 + 1) FROM generate_series(1, 1000) i),
                                       array_fill('agent'::text, ARRAY[1000]), array_fill(0.05, ARRAY[1000]),
                                       ARRAY(SELECT 'key-' || i FROM generate_series(1, 1000) i))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(charged, 1000);
    let slow: Option<i64> = tx
        .query_one(
            "SELECT pg_stat_get_xact_function_calls('credits_internal._debit'::regproc)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(slow.unwrap_or(0), 0, "rows that went to the SQL path");
    tx.commit().unwrap();
    let used: String = client
        .query_one(
            "SELECT trim_scale(sum(monthly_used))::text FROM credits.accounts",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(used, "50");
    assert_verified(&mut client);
}
