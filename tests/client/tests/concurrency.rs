//! Many sessions on one account: never overspend, at every isolation level,
//! on the fast path (allowance) and the slow path (grants, daily limit).

mod common;

use common::*;
use postgres::IsolationLevel;

const SESSIONS: usize = 12;

/// Run `attempts` debits of `quantity` from each of SESSIONS sessions at
/// once; returns how many succeeded. Serialization failures are retried,
/// as the README tells clients to at REPEATABLE READ and SERIALIZABLE.
fn hammer(account: &str, isolation: &str, quantity: &str, attempts: usize, at: &str) -> usize {
    let level = match isolation {
        "repeatable read" => IsolationLevel::RepeatableRead,
        "serializable" => IsolationLevel::Serializable,
        _ => IsolationLevel::ReadCommitted,
    };
    let (account, quantity) = (account.to_string(), quantity.to_string());
    let successes = in_parallel(SESSIONS, at, move |client| {
        let mut ok = 0;
        for _ in 0..attempts {
            loop {
                let mut tx = client
                    .build_transaction()
                    .isolation_level(level)
                    .start()
                    .unwrap();
                let result = tx.query_one(
                    "SELECT credits.debit($1, 'agent', $2::text::numeric)",
                    &[&account, &quantity],
                );
                match result.and_then(|_| tx.commit()) {
                    Ok(()) => {
                        ok += 1;
                        break;
                    }
                    Err(e) if is_serialization_failure(&e) => continue,
                    Err(e) if e.code().map(|c| c.code()) == Some("UC001") => break,
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
        }
        ok
    });
    successes.into_iter().sum()
}

const AT: &str = "2026-05-12 10:00:00+00";

#[test]
fn pro_account_at_every_isolation_level_spends_exactly_its_allowance() {
    for isolation in ["read committed", "repeatable read", "serializable"] {
        let account = format!("conc_pro_{}", isolation.replace(' ', "_"));
        let mut client = connect_at(AT);
        subscribe(&mut client, &account, "pro");
        // 12 sessions x 15 attempts = 180 attempts for 100 credits.
        let succeeded = hammer(&account, isolation, "1", 15, AT);
        assert_eq!(
            succeeded, 100,
            "{isolation}: exactly the allowance must be spent"
        );
        let available: String = balance_of(&mut client, &account, "available");
        assert_eq!(available, "0", "{isolation}");
        assert_verified(&mut client);
    }
}

#[test]
fn free_account_daily_and_monthly_limits_hold_under_concurrency() {
    let account = "conc_free";
    let mut client = connect_at(AT);
    subscribe(&mut client, account, "free");
    assert_eq!(
        hammer(account, "read committed", "1", 5, AT),
        10,
        "10 a day"
    );
    let next_day = "2026-05-13 00:00:00.001+00";
    assert_eq!(
        hammer(account, "read committed", "1", 5, next_day),
        10,
        "10 the next day"
    );
    let third_day = "2026-05-14 00:00:00.001+00";
    assert_eq!(
        hammer(account, "read committed", "1", 5, third_day),
        5,
        "the month caps at 25"
    );
    set_clock(&mut client, third_day);
    assert_verified(&mut client);
}

#[test]
fn grants_are_never_overdrawn_under_concurrency() {
    // 5 of allowance (legacy plan with a purchase) + 20 in two grants, in halves.
    let account = "conc_grants";
    let mut client = connect_at(AT);
    subscribe(&mut client, account, "legacy_growth");
    client
        .execute("SELECT credits.purchase($1, 5)", &[&account])
        .unwrap();
    client
        .execute("SELECT credits.grant($1, 12)", &[&account])
        .unwrap();
    client
        .execute(
            "SELECT credits.grant($1, 8, 'promotional', '2026-06-01 00:00:00+00')",
            &[&account],
        )
        .unwrap();
    let succeeded = hammer(account, "read committed", "0.5", 8, AT);
    assert_eq!(succeeded, 50, "25 credits in halves");
    let remaining: String = client
        .query_one(
            "SELECT trim_scale(sum(remaining))::text FROM credits.grants WHERE account_id = $1",
            &[&account],
        )
        .unwrap()
        .get(0);
    assert_eq!(remaining, "0", "both grants fully drawn");
    assert_verified(&mut client);
}

#[test]
fn the_same_idempotency_key_from_many_sessions_charges_once() {
    let account = "conc_idem";
    let mut client = connect_at(AT);
    subscribe(&mut client, account, "pro");
    let ids = in_parallel(SESSIONS, AT, |client| {
        client
            .query_one(
                "SELECT credits.debit('conc_idem', 'agent', 3, 'one-request')",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
    });
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "every session gets the same entry: {ids:?}"
    );
    let used: String = balance_of(&mut client, account, "monthly_used");
    assert_eq!(used, "3", "charged once");
    assert_verified(&mut client);
}

/// A billing system delivers the same webhooks from many workers at once:
/// the account's creation, an upgrade with a fresh allowance, a purchase,
/// a partial refund. Each takes effect once and every delivery gets the
/// first result.
#[test]
fn webhooks_delivered_many_times_at_once_take_effect_once() {
    let account = "conc_hook";
    let mut client = connect_at(AT);
    let deliveries = [
        "SELECT credits.subscribe('conc_hook', 'free', idempotency_key => 'evt-create')::text",
        "SELECT credits.debit('conc_hook', 'agent', 5, 'req-1')::text",
        "SELECT credits.subscribe('conc_hook', 'pro', fresh_allowance => true, idempotency_key => 'evt-upgrade')::text",
        "SELECT credits.purchase('conc_hook', 50, 'inv-1')::text",
        "SELECT credits.refund(credits.debit('conc_hook', 'agent', 20, 'req-2'), 4, 'partial', 'rf-1')::text",
    ];
    for sql in deliveries {
        let got = in_parallel(SESSIONS, AT, move |client| {
            client
                .query_one(sql, &[])
                .unwrap()
                .get::<_, Option<String>>(0)
        });
        assert!(
            got.iter().all(|g| *g == got[0]),
            "every delivery of {sql} gets the first result: {got:?}"
        );
    }
    let count = |client: &mut postgres::Client, kind: &str| -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM credits.ledger WHERE account_id = 'conc_hook' AND kind = $1::text::\"char\"",
                &[&kind],
            )
            .unwrap()
            .get(0)
    };
    assert_eq!(count(&mut client, "S"), 2, "created once, upgraded once");
    assert_eq!(count(&mut client, "F"), 1, "one upgrade forfeit");
    assert_eq!(count(&mut client, "P"), 1, "bought once");
    assert_eq!(count(&mut client, "R"), 1, "refunded once");
    // Pro's fresh 100 + 50 bought; 20 debited, 4 of it refunded.
    assert_eq!(balance_of(&mut client, account, "monthly_limit"), "150");
    assert_eq!(balance_of(&mut client, account, "monthly_used"), "16");
    assert_verified(&mut client);
}

#[test]
fn concurrent_full_refunds_of_one_debit_give_back_once() {
    let account = "conc_refund";
    let mut client = connect_at(AT);
    subscribe(&mut client, account, "pro");
    let entry: i64 = client
        .query_one("SELECT credits.debit($1, 'agent', 7)", &[&account])
        .unwrap()
        .get(0);
    let ids = in_parallel(SESSIONS, AT, move |client| {
        client
            .query_one("SELECT credits.refund($1)", &[&entry])
            .unwrap()
            .get::<_, i64>(0)
    });
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one refund entry: {ids:?}"
    );
    let refunds: i64 = client
        .query_one(
            "SELECT count(*) FROM credits.ledger WHERE ref = $1",
            &[&entry],
        )
        .unwrap()
        .get(0);
    assert_eq!(refunds, 1);
    let used: String = balance_of(&mut client, account, "monthly_used");
    assert_eq!(used, "0");
    assert_verified(&mut client);
}

#[test]
fn concurrent_reserves_never_overcommit_and_every_resolution_frees_the_right_amount() {
    let account = "conc_holds";
    let mut client = connect_at(AT);
    subscribe(&mut client, account, "pro");
    // 12 sessions try to hold 3 credits 4 times each (144 asked, 100 there): 33 holds fit.
    let held = in_parallel(SESSIONS, AT, |client| {
        let mut holds = Vec::new();
        for _ in 0..4 {
            match client.query_one("SELECT credits.reserve('conc_holds', 'agent', 3)", &[]) {
                Ok(row) => holds.push(row.get::<_, i64>(0)),
                Err(e) if e.code().map(|c| c.code()) == Some("UC001") => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        holds
    });
    let holds: Vec<i64> = held.into_iter().flatten().collect();
    assert_eq!(holds.len(), 33, "floor(100 / 3) holds fit");
    // Concurrently: settle a third for 2, release a third, settle the rest
    // for 3.5 (more than held). Every session tries every hold the same
    // way: one resolves it, the others get its first result.
    let holds = std::sync::Arc::new(holds);
    let outcomes = in_parallel(3, AT, {
        let holds = holds.clone();
        move |client| {
            holds
                .iter()
                .enumerate()
                .map(|(i, hold)| {
                    let sql = match i % 3 {
                        0 => "SELECT credits.settle($1, 2)::text",
                        1 => "SELECT coalesce(credits.release($1)::text, 'released')",
                        _ => "SELECT credits.settle($1, 3.5)::text",
                    };
                    client.query_one(sql, &[hold]).unwrap().get::<_, String>(0)
                })
                .collect::<Vec<String>>()
        }
    });
    assert!(
        outcomes.iter().all(|o| *o == outcomes[0]),
        "every session got the same result for every hold"
    );
    let resolutions: i64 = client
        .query_one(
            "SELECT count(*) FROM credits.ledger WHERE ref = ANY ($1) AND kind IN ('D', 'X')",
            &[&*holds],
        )
        .unwrap()
        .get(0);
    assert_eq!(resolutions, 33, "each hold resolved exactly once");
    // Any other way of resolving one is refused (UC008), in every session.
    let refused = in_parallel(3, AT, {
        let holds = holds.clone();
        move |client| {
            holds
                .iter()
                .filter(|hold| {
                    let e = client
                        .query_one("SELECT credits.settle($1, 1)", &[*hold])
                        .unwrap_err();
                    e.code().map(|c| c.code()) == Some("UC008")
                })
                .count()
        }
    });
    assert_eq!(refused.iter().sum::<usize>(), 3 * 33);
    let row = client
        .query_one(
            "SELECT monthly_used::text, reserved::text FROM credits.balance($1)",
            &[&account],
        )
        .unwrap();
    // 11 settled for 2 and 11 for 3.5 (the excess fits), 11 released.
    assert_eq!(row.get::<_, String>(0), "60.5");
    assert_eq!(row.get::<_, String>(1), "0");
    assert_verified(&mut client);
}

/// credits.stats counts in shared memory: a debit that raises UC001 rolls
/// its transaction back, yet its denial is counted, exactly, under
/// concurrency, as are the charges and the try_debit refusals.
#[test]
fn denials_are_counted_though_their_transactions_roll_back() {
    let mut client = connect_at(AT);
    subscribe(&mut client, "conc_stats", "pro");
    client
        .batch_execute("SELECT credits.purchase('conc_stats', 100); SELECT credits.stats_reset()")
        .unwrap();
    in_parallel(SESSIONS, AT, |client| {
        for _ in 0..10 {
            client
                .query_one("SELECT credits.debit('conc_stats', 'agent', 1)", &[])
                .unwrap();
            let denied = client
                .query_one("SELECT credits.debit('conc_stats', 'agent', 1000)", &[])
                .unwrap_err();
            assert_eq!(denied.code().map(|c| c.code()), Some("UC001"), "{denied}");
            let refused: Option<i64> = client
                .query_one("SELECT credits.try_debit('conc_stats', 'agent', 1000)", &[])
                .unwrap()
                .get(0);
            assert_eq!(refused, None);
        }
    });
    let row = client
        .query_one(
            "SELECT charges, denials FROM credits.stats WHERE plan = 'pro' AND feature = 'agent'",
            &[],
        )
        .unwrap();
    let sessions = SESSIONS as i64;
    assert_eq!(
        row.get::<_, i64>(0),
        10 * sessions,
        "every charge counted once"
    );
    assert_eq!(
        row.get::<_, i64>(1),
        20 * sessions,
        "every denial counted, raised or not"
    );
    assert_eq!(
        balance_of(&mut client, "conc_stats", "monthly_used"),
        (10 * sessions).to_string()
    );
    assert_verified(&mut client);
}
