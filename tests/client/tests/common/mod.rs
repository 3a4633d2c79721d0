//! Shared set-up: every test connects to the database named by
//! `CREDITS_TEST_DSN` (created fresh, with the extension, once per run).

#![allow(dead_code)]

use postgres::error::SqlState;
use postgres::{Client, NoTls};
use std::sync::Once;

static CREATE_DATABASE: Once = Once::new();

fn dsn() -> String {
    std::env::var("CREDITS_TEST_DSN")
        .expect("set CREDITS_TEST_DSN, e.g. 'host=127.0.0.1 port=28816 user=postgres dbname=credits_client' (scripts/test does)")
}

pub fn test_database() -> String {
    let config: postgres::Config = dsn().parse().expect("valid DSN");
    config
        .get_dbname()
        .expect("the DSN names a database")
        .to_string()
}

/// A connection to database `db` of the test server.
pub fn connect_db(db: &str) -> Client {
    let dsn = dsn().replace(
        &format!("dbname={}", test_database()),
        &format!("dbname={db}"),
    );
    Client::connect(&dsn, NoTls).unwrap_or_else(|e| panic!("connect to database {db}: {e}"))
}

/// A connection to database `db` as `role` (a login role without a password).
pub fn connect_db_as(db: &str, role: &str) -> Client {
    let config: postgres::Config = dsn().parse().expect("valid DSN");
    let user = config.get_user().expect("the DSN names a user");
    let dsn = dsn()
        .replace(
            &format!("dbname={}", test_database()),
            &format!("dbname={db}"),
        )
        .replace(&format!("user={user}"), &format!("user={role}"));
    Client::connect(&dsn, NoTls).unwrap_or_else(|e| panic!("connect to {db} as {role}: {e}"))
}

/// Drop and create database `db` (without the extension).
pub fn recreate_database(db: &str) {
    let mut admin = connect_db("postgres");
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
}

/// A new connection to the test database; the first call (re)creates it.
pub fn connect() -> Client {
    CREATE_DATABASE.call_once(|| {
        let db = test_database();
        recreate_database(&db);
        connect_db(&db)
            .batch_execute("CREATE EXTENSION credits")
            .unwrap();
    });
    connect_db(&test_database())
}

/// A connection to the test database, or the error (no panic): for tests
/// that expect the server to drop them.
pub fn try_connect() -> Result<Client, postgres::Error> {
    Client::connect(&dsn(), NoTls)
}

/// Poll `check` every 20 ms until it returns true; panics after `seconds`.
pub fn wait_until(seconds: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {seconds} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A connection whose clock reads `at` (credits.clock_override).
pub fn connect_at(at: &str) -> Client {
    let mut client = connect();
    set_clock(&mut client, at);
    client
}

pub fn set_clock(client: &mut Client, at: &str) {
    client
        .batch_execute(&format!("SET credits.clock_override = '{at}'"))
        .unwrap();
}

/// The SQLSTATE of a failed call (panics if the call succeeded).
pub fn sqlstate<T: std::fmt::Debug>(result: Result<T, postgres::Error>) -> String {
    let err = result.expect_err("the call should have failed");
    err.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| panic!("no SQLSTATE in {err}"))
}

pub fn is_serialization_failure(err: &postgres::Error) -> bool {
    matches!(err.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

/// credits.verify() must report nothing.
pub fn assert_verified(client: &mut Client) {
    let rows = client
        .query("SELECT account_id, problem FROM credits.verify()", &[])
        .unwrap();
    let problems: Vec<String> = rows
        .iter()
        .map(|r| format!("{}: {}", r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    assert!(
        problems.is_empty(),
        "verify() found problems: {problems:#?}"
    );
}

/// No other transaction holds a lock on the rows of `rows` ("table WHERE
/// ..."): this session takes them FOR UPDATE without waiting (55P03 if one
/// does, even a KEY SHARE lock).
pub fn assert_unlocked(client: &mut Client, rows: &str) {
    let locked = client.query(&format!("SELECT 1 FROM {rows} FOR UPDATE NOWAIT"), &[]);
    assert!(
        locked.is_ok(),
        "another transaction holds a lock on {rows}: {locked:?}"
    );
}

pub fn subscribe(client: &mut Client, account: &str, plan: &str) {
    client
        .execute("SELECT credits.subscribe($1, $2)", &[&account, &plan])
        .unwrap();
}

/// Run `work` in `sessions` connections at once (all start together after a
/// barrier, clock at `at`); returns what each session returned.
pub fn in_parallel<T, F>(sessions: usize, at: &str, work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(&mut Client) -> T + Send + Sync + 'static,
{
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(sessions));
    let work = std::sync::Arc::new(work);
    let handles: Vec<_> = (0..sessions)
        .map(|_| {
            let (barrier, work, at) = (barrier.clone(), work.clone(), at.to_string());
            std::thread::spawn(move || {
                let mut client = connect_at(&at);
                barrier.wait();
                work(&mut client)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("session panicked"))
        .collect()
}

/// One column of credits.balance(account), as text (numerics without trailing zeros).
pub fn balance_of(client: &mut Client, account: &str, column: &str) -> String {
    let sql = format!("SELECT trim_scale({column})::text FROM credits.balance($1)");
    client.query_one(sql.as_str(), &[&account]).unwrap().get(0)
}
