//! The debit fast path writes below SQL (src/metering/fast_path.rs). These
//! show it behaves as the statements it replaced: row triggers on the ledger
//! fire and a failing one leaves nothing written; a plan or feature changed
//! by another session (or rolled back in this one) applies to the very next
//! debit, although sessions cache them, and so do the relations themselves
//! when they are renamed or the extension is recreated; a threshold finer
//! than the fast path's arithmetic is left to the SQL path; the same key
//! twice in one statement charges once. Each runs in its own database (one adds a trigger).

mod common;

use common::*;
use postgres::types::ToSql;
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
            "SELECT credits_internal._debit_fast($1, 'agent', $2::text::numeric, $3, NULL, credits.now())",
            &[&account, &quantity, &key],
        )
        .unwrap()
        .get(0)
}

/// The first column of a query's rows, a text.
fn column(client: &mut Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<String> {
    client
        .query(sql, params)
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn rows(client: &mut Client, sql: &str) -> Vec<String> {
    column(client, sql, &[])
}

fn ledger_debits(client: &mut Client, account: &str) -> Vec<String> {
    let sql = "SELECT amount::text FROM credits.ledger WHERE account_id = $1 AND kind = 'D' ORDER BY entry_id";
    column(client, sql, &[&account])
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
fn statement_triggers_on_the_ledger_fire_for_every_debit() {
    let db = "credits_fast_path_statement_triggers";
    let mut client = fresh(db);
    subscribe(&mut client, "st", "pro");
    // An audit trigger with a transition table: the fast path, whose writes
    // are not statements, leaves such a debit to the SQL path.
    client
        .batch_execute(
            "CREATE TABLE public.audit (entries bigint, total numeric);
             CREATE FUNCTION public.audit_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO public.audit SELECT count(*), sum(amount) FROM new_entries;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER audit_ledger AFTER INSERT ON credits.ledger
                 REFERENCING NEW TABLE AS new_entries
                 FOR EACH STATEMENT EXECUTE FUNCTION public.audit_ledger();",
        )
        .unwrap();
    assert_eq!(
        fast_debit(&mut client, "st", "1", None),
        None,
        "the fast path declines while the ledger has a statement trigger"
    );
    for key in ["a-1", "a-2", "a-3"] {
        client
            .query_one("SELECT credits.debit('st', 'agent', 2, $1)", &[&key])
            .unwrap();
    }
    client
        .query_one("SELECT credits.try_debit('st', 'agent', 0.5)", &[])
        .unwrap();
    let audited: Vec<String> = rows(
        &mut client,
        "SELECT format('%s:%s', sum(entries), sum(total)) FROM public.audit",
    );
    assert_eq!(
        audited,
        vec!["4:6.5"],
        "every debit reached the audit trigger"
    );

    // A trigger that refuses the statement refuses every debit, and nothing stays.
    client
        .batch_execute(
            "DROP TRIGGER audit_ledger ON credits.ledger;
             CREATE FUNCTION public.freeze_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 RAISE EXCEPTION 'the ledger is frozen' USING ERRCODE = 'object_not_in_prerequisite_state';
             END $$;
             CREATE TRIGGER freeze_ledger BEFORE INSERT ON credits.ledger
                 FOR EACH STATEMENT EXECUTE FUNCTION public.freeze_ledger();",
        )
        .unwrap();
    let before = ledger_debits(&mut client, "st");
    for sql in [
        "SELECT credits.debit('st', 'agent', 1)",
        "SELECT credits.debit('st', 'agent', 1, 'f-1')",
        "SELECT credits.try_debit('st', 'agent', 1)",
    ] {
        assert_eq!(sqlstate(client.query_one(sql, &[])), "55000", "{sql}");
    }
    assert_eq!(ledger_debits(&mut client, "st"), before);
    assert_eq!(balance_of(&mut client, "st", "monthly_used"), "6.5");

    // Without them, the fast path takes debits again.
    client
        .batch_execute("DROP TRIGGER freeze_ledger ON credits.ledger")
        .unwrap();
    assert!(fast_debit(&mut client, "st", "1", None).is_some());
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
fn sessions_find_the_relations_again_after_ddl() {
    let db = "credits_fast_path_relations";
    let mut a = fresh(db);
    subscribe(&mut a, "rel", "pro");
    let mut b = session(db);

    // Session a has found (and kept) the relations.
    assert!(fast_debit(&mut a, "rel", "1", Some("k1")).is_some());
    // A renamed table still exists under its old oid: a must not write to it.
    b.batch_execute("ALTER TABLE credits.idempotency RENAME TO idempotency_moved")
        .unwrap();
    for attempt in ["first", "second"] {
        assert_eq!(
            fast_debit(&mut a, "rel", "1", Some("k2")),
            None,
            "no idempotency table by that name: the fast path declines ({attempt} time)"
        );
    }
    b.batch_execute("ALTER TABLE credits.idempotency_moved RENAME TO idempotency")
        .unwrap();
    assert!(fast_debit(&mut a, "rel", "1", Some("k2")).is_some());
    assert_eq!(
        rows(
            &mut b,
            "SELECT idempotency_key FROM credits.idempotency ORDER BY 1"
        ),
        vec!["k1", "k2"]
    );

    // The extension recreated by another session, then by this one: new
    // relations under the same names.
    b.batch_execute("DROP EXTENSION credits CASCADE; CREATE EXTENSION credits")
        .unwrap();
    subscribe(&mut b, "rel", "pro");
    assert!(fast_debit(&mut a, "rel", "2", Some("k1")).is_some());
    assert_eq!(ledger_debits(&mut b, "rel"), vec!["2"]);
    a.batch_execute("DROP EXTENSION credits CASCADE; CREATE EXTENSION credits")
        .unwrap();
    subscribe(&mut a, "rel", "pro");
    assert!(fast_debit(&mut a, "rel", "3", None).is_some());
    assert_eq!(ledger_debits(&mut b, "rel"), vec!["3"]);
    assert_verified(&mut a);
}

#[test]
fn a_threshold_finer_than_the_fast_path_holds_is_left_to_the_sql_path() {
    let db = "credits_fast_path_threshold";
    let mut a = fresh(db);
    a.batch_execute("SET credits.thresholds = '50.000000001,100'")
        .unwrap();
    subscribe(&mut a, "thr", "pro");
    // 51 of pro's 100 crosses 50.000000001%: an event the fast path does not emit.
    assert_eq!(fast_debit(&mut a, "thr", "51", None), None);
    a.query_one("SELECT credits.debit('thr', 'agent', 51)", &[])
        .unwrap();
    let sql = "SELECT threshold::text FROM credits.events WHERE account_id = 'thr' AND kind = 'threshold'";
    assert_eq!(rows(&mut a, sql), vec!["50.000000001"]);
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

#[test]
fn the_first_debit_after_a_boundary_closes_the_windows_on_the_fast_path() {
    let db = "credits_fast_path_closing";
    let mut client = fresh(db);
    // A free account that used 7 of its 10 a day on 2027-03-10; a pro one
    // that used 30 in March. Then nothing until 2027-05-02: March and April
    // (nobody called) end, with the day.
    subscribe(&mut client, "fc_free", "free");
    subscribe(&mut client, "fc_pro", "pro");
    client
        .batch_execute(
            "SELECT credits.debit('fc_free', 'agent', 7), credits.debit('fc_pro', 'agent', 30)",
        )
        .unwrap();
    record_rows(
        &mut client,
        "see_window",
        "INSERT ON credits.closed_windows",
        "windows_seen (account_id text, window_kind text, window_start date)",
        "NEW.account_id, NEW.window_kind, NEW.window_start",
    );
    set_clock(&mut client, "2027-05-02 08:00:00+00");

    let entry = fast_debit(&mut client, "fc_free", "2", Some("after-the-gap"))
        .expect("the fast path closes ended windows itself");
    let expected_windows = vec![
        "monthly 2027-03-01 free limit 25 used 7 forfeited 18 closed 2027-04-01 00:00:00+00",
        "daily 2027-03-10 free limit 10 used 7 forfeited - closed 2027-03-11 00:00:00+00",
        "monthly 2027-04-01 free limit 25 used 0 forfeited 25 closed 2027-05-01 00:00:00+00",
    ];
    let windows_sql = "SELECT format('%s %s %s limit %s used %s forfeited %s closed %s', window_kind,
                              window_start, plan, window_limit, used, coalesce(forfeited::text, '-'),
                              closed_at AT TIME ZONE 'UTC' || '+00')
                         FROM credits.closed_windows WHERE account_id = 'fc_free'
                        ORDER BY window_start, window_kind";
    assert_eq!(rows(&mut client, windows_sql), expected_windows);
    // The forfeits come before the debit, at the boundaries they record.
    let entries_sql = "SELECT format('%s %s %s %s', kind, amount, at AT TIME ZONE 'UTC', coalesce(metadata::text, ''))
                         FROM credits.ledger WHERE account_id = 'fc_free' AND kind <> 'S' ORDER BY entry_id";
    assert_eq!(
        rows(&mut client, entries_sql),
        vec![
            "D 7 2027-03-10 12:00:00 ",
            "F 18 2027-04-01 00:00:00 {\"month\": \"2027-03\", \"reason\": \"month_end\"}",
            "F 25 2027-05-01 00:00:00 {\"month\": \"2027-04\", \"reason\": \"month_end\"}",
            "D 2 2027-05-02 08:00:00 ",
        ]
    );
    let last: i64 = client
        .query_one(
            "SELECT max(entry_id) FROM credits.ledger WHERE account_id = 'fc_free'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(last, entry);
    assert_eq!(balance_of(&mut client, "fc_free", "daily_used"), "2");
    assert_eq!(balance_of(&mut client, "fc_free", "monthly_used"), "2");
    assert_eq!(
        rows(
            &mut client,
            "SELECT format('%s %s', window_kind, window_start) FROM public.windows_seen ORDER BY 1"
        ),
        vec![
            "daily 2027-03-10",
            "monthly 2027-03-01",
            "monthly 2027-04-01"
        ],
        "row triggers on closed_windows fire as for an INSERT"
    );

    // A replay of the key closes nothing more and charges nothing.
    let replay: i64 = client
        .query_one(
            "SELECT credits.debit('fc_free', 'agent', 2, 'after-the-gap')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(replay, entry);
    assert_eq!(rows(&mut client, windows_sql), expected_windows);

    // Maintenance (the same Rust, in a batch) records the same for the pro
    // account as a fast-path debit would have: no daily window (pro has no
    // daily limit, but it used 30 on 2027-03-10: recorded with a NULL limit).
    client
        .batch_execute("CALL credits.run_maintenance()")
        .unwrap();
    assert_eq!(
        rows(
            &mut client,
            "SELECT format('%s %s limit %s used %s forfeited %s', window_kind, window_start,
                           coalesce(window_limit::text, '-'), used, coalesce(forfeited::text, '-'))
               FROM credits.closed_windows WHERE account_id = 'fc_pro' ORDER BY window_start, window_kind"
        ),
        vec![
            "monthly 2027-03-01 limit 100 used 30 forfeited 70",
            "daily 2027-03-10 limit - used 30 forfeited -",
            "monthly 2027-04-01 limit 100 used 0 forfeited 100",
        ]
    );
    assert_eq!(balance_of(&mut client, "fc_pro", "monthly_used"), "0");
    client
        .batch_execute("DROP TRIGGER see_window ON credits.closed_windows")
        .unwrap();
    assert_verified(&mut client);
}

#[test]
fn a_window_that_ran_out_reopens_with_its_reset_event() {
    let db = "credits_fast_path_reset";
    let mut client = fresh(db);
    subscribe(&mut client, "fr", "free");
    // The free plan's 10 a day, used up: an exhausted event for the day.
    client
        .batch_execute("SELECT credits.debit('fr', 'agent', 10)")
        .unwrap();
    set_clock(&mut client, "2027-03-11 09:00:00+00");
    assert_eq!(
        fast_debit(&mut client, "fr", "1", None),
        None,
        "the reset event is the SQL path's: the fast path declines, writing nothing"
    );
    assert_eq!(
        rows(
            &mut client,
            "SELECT count(*)::text FROM credits.closed_windows WHERE account_id = 'fr'"
        ),
        vec!["0"]
    );
    client
        .batch_execute("SELECT credits.debit('fr', 'agent', 1)")
        .unwrap();
    assert_eq!(
        rows(
            &mut client,
            "SELECT format('%s %s %s', kind, window_key, at AT TIME ZONE 'UTC')
               FROM credits.events WHERE account_id = 'fr' ORDER BY event_id"
        ),
        vec![
            "exhausted 2027-03-10 2027-03-10 12:00:00",
            "reset 2027-03-11 2027-03-11 00:00:00", // (keyed by the window it opens)
        ]
    );
    assert_eq!(balance_of(&mut client, "fr", "daily_used"), "1");
    assert_verified(&mut client);
}

/// A batch posted as one statement (SELECT credits.debit(...) FROM rows):
/// every call after the first sees the account row the one before it
/// updated, so all of them take the fast path, and a limit still holds
/// exactly within the statement.
#[test]
fn many_debits_of_one_account_in_one_statement_take_the_fast_path() {
    let db = "credits_fast_path_batch";
    let mut client = fresh(db);
    subscribe(&mut client, "batch_pro", "pro");
    subscribe(&mut client, "batch_free", "free");
    let mut tx = client.transaction().unwrap();
    tx.batch_execute("SET LOCAL track_functions = 'all'")
        .unwrap();
    let debited: i64 = tx
        .query_one(
            "SELECT count(credits.debit('batch_pro', 'agent', 0.5)) FROM generate_series(1, 100)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(debited, 100);
    assert_eq!(
        slow_path_calls(&mut tx),
        0,
        "no call of the batch fell to the SQL path"
    );
    // Free allows 10 a day: 10 of 15 in one statement, not one more.
    let granted: i64 = tx
        .query_one(
            "SELECT count(credits.try_debit('batch_free', 'agent', 1)) FROM generate_series(1, 15)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(granted, 10);
    tx.commit().unwrap();
    assert_eq!(balance_of(&mut client, "batch_pro", "monthly_used"), "50");
    assert_eq!(balance_of(&mut client, "batch_free", "daily_used"), "10");
    assert_eq!(ledger_debits(&mut client, "batch_pro").len(), 100);
    assert_verified(&mut client);
}

/// Debits after the first of an account in one transaction update a row
/// version this transaction wrote, where PostgreSQL would check the plan's
/// foreign key again: a query per debit and a lock on the plan's row, which
/// every such transaction then held, whatever account it debited. They
/// leave the plan's row alone. A user's row trigger on accounts still fires
/// for every debit, and where a check of an earlier write is still pending
/// (a deferred foreign key), the debits keep theirs: a plan deleted
/// meanwhile fails the commit instead of leaving an account on no plan.
#[test]
fn later_debits_of_an_account_in_a_transaction_leave_its_plan_row_alone() {
    let db = "credits_fast_path_plan_key";
    let mut client = fresh(db);
    subscribe(&mut client, "pk", "pro");

    let mut tx = client.transaction().unwrap();
    debits_on_the_fast_path(&mut tx, "pk", 3);
    let mut other = session(db);
    assert_unlocked(&mut other, "credits.plans WHERE plan = 'pro'");
    tx.commit().unwrap();
    assert_eq!(ledger_debits(&mut client, "pk"), vec!["1", "1", "1"]);

    // A row trigger on accounts fires for each debit's update.
    record_rows(
        &mut client,
        "see_update",
        "UPDATE ON credits.accounts",
        "updates_seen (account_id text, monthly_used numeric)",
        "NEW.account_id, NEW.monthly_used",
    );
    let mut tx = client.transaction().unwrap();
    debits_on_the_fast_path(&mut tx, "pk", 3);
    tx.commit().unwrap();
    assert_eq!(
        rows(
            &mut client,
            "SELECT monthly_used::text FROM public.updates_seen ORDER BY 1"
        ),
        vec!["4", "5", "6"]
    );
    client
        .batch_execute("DROP TRIGGER see_update ON credits.accounts")
        .unwrap();

    // A deferred foreign key: the new account's check waits for the commit.
    client
        .batch_execute(
            "ALTER TABLE credits.accounts ALTER CONSTRAINT accounts_plan_fkey DEFERRABLE INITIALLY DEFERRED;
             INSERT INTO credits.plans (plan, monthly_allowance) VALUES ('short_lived', 100);",
        )
        .unwrap_or_else(|e| panic!("making the plan key deferrable: {e}"));
    let mut tx = client.transaction().unwrap();
    tx.batch_execute("SELECT credits.subscribe('pk_new', 'short_lived')")
        .unwrap();
    debits_on_the_fast_path(&mut tx, "pk_new", 2);
    // Another session deletes the plan: nothing it can see refers to it.
    other
        .execute("DELETE FROM credits.plans WHERE plan = 'short_lived'", &[])
        .unwrap();
    let committed = tx.commit();
    assert_eq!(
        sqlstate(committed),
        "23503",
        "the commit checks the plan of the account it wrote"
    );
    assert_eq!(
        rows(
            &mut client,
            "SELECT account_id FROM credits.accounts WHERE account_id = 'pk_new'"
        ),
        Vec::<String>::new()
    );
    assert_verified(&mut client);
}

/// `n` debits of 1 of `account` in the transaction, a statement each, all
/// of them decided by the fast path.
fn debits_on_the_fast_path(tx: &mut postgres::Transaction, account: &str, n: usize) {
    tx.batch_execute("SET LOCAL track_functions = 'all'")
        .unwrap();
    for _ in 0..n {
        tx.execute("SELECT credits.debit($1, 'agent', 1)", &[&account])
            .unwrap();
    }
    assert_eq!(
        slow_path_calls(tx),
        0,
        "{n} debits of {account}, none fell to the SQL path"
    );
}

/// Calls of the debit's SQL path so far in the transaction (it must have
/// set track_functions).
fn slow_path_calls(tx: &mut postgres::Transaction) -> i64 {
    tx.query_one(
        "SELECT coalesce(pg_stat_get_xact_function_calls('credits_internal._debit_slow'::regproc), 0)",
        &[],
    )
    .unwrap()
    .get(0)
}

/// A row trigger `name` AFTER `event` (e.g. "INSERT ON credits.ledger") that
/// records `values` of each row into the new table public.`table` (its
/// definition: "name (columns)").
fn record_rows(client: &mut Client, name: &str, event: &str, table: &str, values: &str) {
    let table_name = table.split(' ').next().unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE public.{table};
             CREATE FUNCTION public.{name}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO public.{table_name} VALUES ({values});
                 RETURN NEW;
             END $$;
             CREATE TRIGGER {name} AFTER {event} FOR EACH ROW EXECUTE FUNCTION public.{name}();"
        ))
        .unwrap();
}
