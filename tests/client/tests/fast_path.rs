//! The debit fast path writes below SQL (src/metering/fast_path.rs). These
//! show it behaves as the statements it replaced: row triggers on the ledger
//! fire and a failing one leaves nothing written; a plan or feature changed
//! by another session (or rolled back in this one) applies to the very next
//! debit, although sessions cache them; the same key twice in one statement
//! charges once. Each runs in its own database (one adds a trigger).

mod common;

use common::*;
use postgres::Client;

const AT: &str = "2027-03-10 12:00:00+00";

fn fresh(db: &str) -> Client {
    recreate_database(db);
    let mut client = connect_db(db);
    client
        .batch_execute(&format!(
            "CREATE EXTENSION credits; SET credits.clock_override = '{AT}'"
        ))
        .unwrap();
    client
}

fn session(db: &str) -> Client {
    let mut client = connect_db(db);
    set_clock(&mut client, AT);
    client
}

/// The fast path alone: the entry id it wrote, or None when it declined.
fn fast_debit(
    client: &mut Client,
    account: &str,
    quantity: &str,
    key: Option<&str>,
) -> Option<i64> {
    client
        .query_one(
            "SELECT credits._debit_fast($1, 'agent', $2::text::numeric, $3, NULL, credits.now())",
            &[&account, &quantity, &key],
        )
        .unwrap()
        .get(0)
}

fn ledger_debits(client: &mut Client, account: &str) -> Vec<String> {
    client
        .query(
            "SELECT amount::text FROM credits.ledger WHERE account_id = $1 AND kind = 'D' ORDER BY entry_id",
            &[&account],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn ledger_row_triggers_fire_and_a_failing_one_leaves_nothing_written() {
    let db = "credits_fast_path_triggers";
    let mut client = fresh(db);
    subscribe(&mut client, "tr", "pro");
    client
        .batch_execute(
            "CREATE TABLE public.entries_seen (entry_id bigint, amount numeric);
             CREATE FUNCTION public.see_entry() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.amount = 13 THEN
                     RAISE EXCEPTION 'no thirteens' USING ERRCODE = 'check_violation';
                 END IF;
                 INSERT INTO public.entries_seen VALUES (NEW.entry_id, NEW.amount);
                 RETURN NEW;
             END $$;
             CREATE TRIGGER see_entry AFTER INSERT ON credits.ledger
                 FOR EACH ROW EXECUTE FUNCTION public.see_entry();",
        )
        .unwrap();

    let entry = fast_debit(&mut client, "tr", "2", Some("k-1"))
        .expect("the fast path decides a plain debit");
    let seen: Vec<(i64, String)> = client
        .query(
            "SELECT entry_id, amount::text FROM public.entries_seen",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        seen,
        vec![(entry, "2".to_string())],
        "the AFTER INSERT row trigger saw the entry"
    );

    // A trigger that fails fails the debit, with its SQLSTATE, and nothing stays.
    let failed = client.query_one("SELECT credits.debit('tr', 'agent', 13, 'k-13')", &[]);
    assert_eq!(sqlstate(failed), "23514");
    assert_eq!(ledger_debits(&mut client, "tr"), vec!["2"]);
    assert_eq!(balance_of(&mut client, "tr", "monthly_used"), "2");
    let keys: i64 = client
        .query_one(
            "SELECT count(*) FROM credits.idempotency WHERE account_id = 'tr'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(keys, 1, "the failed debit's key was not kept");
    client
        .batch_execute("DROP TRIGGER see_entry ON credits.ledger")
        .unwrap();
    assert_verified(&mut client);
}

#[test]
fn catalog_changes_apply_to_the_next_debit_of_every_session() {
    let db = "credits_fast_path_catalog";
    let mut a = fresh(db);
    subscribe(&mut a, "cat", "pro");
    let mut b = session(db);

    // Session a reads (and caches) agent at 1 credit and pro at 100 a month.
    assert!(fast_debit(&mut a, "cat", "1", None).is_some());
    b.batch_execute("UPDATE credits.features SET cost = 3 WHERE feature = 'agent'")
        .unwrap();
    assert!(fast_debit(&mut a, "cat", "1", None).is_some());
    assert_eq!(
        ledger_debits(&mut a, "cat"),
        vec!["1", "3"],
        "the new cost, committed by b"
    );

    // A change rolled back in session a itself does not stay in its cache.
    a.batch_execute("BEGIN; UPDATE credits.features SET cost = 2 WHERE feature = 'agent'")
        .unwrap();
    assert!(fast_debit(&mut a, "cat", "1", None).is_some());
    a.batch_execute("ROLLBACK").unwrap();
    assert!(fast_debit(&mut a, "cat", "1", None).is_some());
    assert_eq!(
        ledger_debits(&mut a, "cat"),
        vec!["1", "3", "3"],
        "cost 2 rolled back with its debit"
    );

    // b lowers pro's allowance below what a's next debit needs (7 used + 3 > 8).
    b.batch_execute("UPDATE credits.plans SET monthly_allowance = 8 WHERE plan = 'pro'")
        .unwrap();
    assert_eq!(
        fast_debit(&mut a, "cat", "1", None),
        None,
        "the fast path sees the lower allowance"
    );
    assert_eq!(
        sqlstate(a.query_one("SELECT credits.debit('cat', 'agent', 1)", &[])),
        "UC001"
    );
    // ... and a truncate-and-reload of features (what a restore does) is seen too.
    b.batch_execute(
        "UPDATE credits.plans SET monthly_allowance = 100 WHERE plan = 'pro';
         BEGIN;
         CREATE TEMP TABLE f AS SELECT * FROM credits.features;
         ALTER TABLE credits.features DISABLE TRIGGER features_replace_seed;
         TRUNCATE credits.features;
         INSERT INTO credits.features SELECT * FROM f;
         UPDATE credits.features SET cost = 0.5 WHERE feature = 'agent';
         ALTER TABLE credits.features ENABLE TRIGGER features_replace_seed;
         COMMIT;",
    )
    .unwrap();
    assert!(fast_debit(&mut a, "cat", "1", None).is_some());
    assert_eq!(ledger_debits(&mut a, "cat"), vec!["1", "3", "3", "0.5"]);
    assert_verified(&mut a);
}

#[test]
fn the_same_key_twice_in_one_statement_charges_once() {
    let db = "credits_fast_path_keys";
    let mut client = fresh(db);
    subscribe(&mut client, "twice", "pro");
    let ids: Vec<i64> = client
        .query(
            "SELECT credits.debit('twice', 'agent', 2, 'same-key') FROM generate_series(1, 3)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one entry, replayed: {ids:?}"
    );
    assert_eq!(ledger_debits(&mut client, "twice"), vec!["2"]);
    assert_eq!(balance_of(&mut client, "twice", "monthly_used"), "2");
    // Unkeyed, the same statement charges each call.
    client
        .query(
            "SELECT credits.debit('twice', 'agent', 1) FROM generate_series(1, 3)",
            &[],
        )
        .unwrap();
    assert_eq!(balance_of(&mut client, "twice", "monthly_used"), "5");
    assert_verified(&mut client);
}
