//! A physical standby of the test server: reads work there, every write
//! fails with 25006 as PostgreSQL's own writes do (no XX000, no backtrace),
//! the maintenance worker does not run until the standby is promoted, and
//! starts by itself then.

mod common;

use common::*;
use postgres::{Client, NoTls};
use std::process::Command;

const BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(program: &str, args: &[&str]) {
    let quiet: &[&str] = if program == "pg_ctl" { &["-s"] } else { &[] };
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{BIN}/{program}")])
        .args(quiet)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "{program} {args:?}");
}

#[test]
fn a_standby_reads_refuses_writes_with_25006_and_its_worker_starts_at_promotion() {
    let config: postgres::Config = std::env::var("CREDITS_TEST_DSN").unwrap().parse().unwrap();
    let port = config.get_ports()[0];
    let standby_port = port + 7;
    let mut primary = connect();
    // (the worker's database exists, so a worker that starts can connect)
    let worker_db: String = primary
        .query_one(
            "SELECT split_part(current_setting('credits.database'), ',', 1)",
            &[],
        )
        .unwrap()
        .get(0);
    if worker_db != test_database() {
        recreate_database(worker_db.trim());
    }
    subscribe(&mut primary, "on_standby", "pro");
    primary
        .query_one("SELECT credits.debit('on_standby', 'agent', 5)", &[])
        .unwrap();

    let pgdata = std::env::var("CREDITS_TEST_PGDATA").unwrap();
    let dir = format!("{pgdata}-standby");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let chown = Command::new("chown")
        .args(["postgres:", &dir])
        .status()
        .unwrap();
    assert!(chown.success());
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    as_postgres(
        "pg_basebackup",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-D",
            &dir,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ],
    );
    let conf = format!("{dir}/postgresql.auto.conf");
    let mut auto = std::fs::read_to_string(&conf).unwrap();
    auto.push_str(&format!("port = {standby_port}\n"));
    std::fs::write(&conf, auto).unwrap();
    as_postgres(
        "pg_ctl",
        &[
            "-D",
            &dir,
            "-l",
            &format!("{dir}/server.log"),
            "-w",
            "start",
        ],
    );
    let stop = || {
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{BIN}/pg_ctl"),
                "-D",
                &dir,
                "-m",
                "fast",
                "-w",
                "stop",
            ])
            .status();
        let _ = std::fs::remove_dir_all(&dir);
    };

    let result = std::panic::catch_unwind(|| {
        let dsn = format!(
            "host=127.0.0.1 port={standby_port} user=postgres dbname={}",
            test_database()
        );
        let mut standby = Client::connect(&dsn, NoTls).unwrap();
        let available: String = standby
            .query_one(
                "SELECT available::text FROM credits.balance('on_standby')",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(available, "95", "a read on the standby");
        for sql in [
            "SELECT credits.debit('on_standby', 'agent', 1)",
            "SELECT credits.try_debit('on_standby', 'agent', 1, 'standby-key')",
            "SELECT credits.reserve('on_standby', 'agent', 1)",
            "SELECT credits.grant('on_standby', 1)",
            "SELECT credits.subscribe('on_standby', 'free')::text",
        ] {
            let e = standby.query_one(sql, &[]).unwrap_err();
            let db = e.as_db_error().expect("a server error");
            assert_eq!(db.code().code(), "25006", "{sql}: {}", db.message());
            assert!(
                !format!("{:?}", db.detail()).contains("   0: "),
                "{sql}: a backtrace"
            );
        }
        let workers = |c: &mut Client| -> i64 {
            c.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'credits maintenance'",
                &[],
            )
            .unwrap()
            .get(0)
        };
        assert_eq!(workers(&mut standby), 0, "no worker on a standby");
        as_postgres("pg_ctl", &["-D", &dir, "-w", "promote"]);
        wait_until(30, "the worker to start after promotion", || {
            workers(&mut standby) == 1
        });
    });
    stop();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
