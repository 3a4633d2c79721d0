//! The maintenance worker in a real server: it waits for the extension, runs
//! maintenance by itself when the (cluster-wide) clock crosses a UTC
//! boundary, catches up over missed days and a missed month exactly once,
//! and a worker terminated mid-run finishes the job after its restart with
//! the same result as an uninterrupted run.
//!
//! These tests move the cluster-wide clock (ALTER SYSTEM), so they put it
//! back when they end, even on failure.

mod common;

use common::*;
use postgres::Client;

/// Cluster-wide settings for the duration of a test, reset on drop.
struct SystemSettings(Vec<&'static str>);

impl SystemSettings {
    fn set(&mut self, name: &'static str, value: &str) {
        let mut admin = connect_db("postgres");
        admin
            .batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))
            .unwrap();
        admin.batch_execute("SELECT pg_reload_conf()").unwrap();
        if !self.0.contains(&name) {
            self.0.push(name);
        }
    }
}

impl Drop for SystemSettings {
    fn drop(&mut self) {
        let mut admin = connect_db("postgres");
        for name in &self.0 {
            admin
                .batch_execute(&format!("ALTER SYSTEM RESET {name}"))
                .unwrap();
        }
        admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    }
}

fn worker_database() -> String {
    connect_db("postgres")
        .query_one("SELECT current_setting('credits.database')", &[])
        .unwrap()
        .get(0)
}

fn worker_pid(client: &mut Client, db: &str) -> Option<i32> {
    client
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'credits maintenance' AND datname = $1",
            &[&db],
        )
        .unwrap()
        .map(|r| r.get(0))
}

fn done_through(client: &mut Client) -> Option<String> {
    client
        .query_one(
            "SELECT to_char(done_through AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') FROM credits.maintenance_state",
            &[],
        )
        .unwrap()
        .get(0)
}

/// A fresh worker database, the worker connected to it and napping at most 1 s.
fn fresh_worker_database(settings: &mut SystemSettings, clock: &str) -> (String, Client) {
    let db = worker_database();
    settings.set("credits.maintenance_max_nap", "1");
    settings.set("credits.clock_override", clock);
    recreate_database(&db); // the worker's connection is dropped; it restarts
    let mut client = connect_db(&db);
    wait_until(30, "the worker to connect", || {
        worker_pid(&mut client, &db).is_some()
    });
    (db, client)
}

/// What maintenance wrote for accounts `prefix%`, in a comparable form.
fn maintenance_record(client: &mut Client, prefix: &str) -> Vec<String> {
    let like = format!("{prefix}%");
    let mut rows: Vec<String> = client
        .query(
            "SELECT format('%s %s %s used=%s limit=%s forfeited=%s', account_id, window_kind, window_start,
                           used, window_limit, forfeited)
               FROM credits.closed_windows WHERE account_id LIKE $1",
            &[&like],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    rows.extend(
        client
            .query(
                "SELECT format('%s ledger %s %s at %s', account_id, kind, amount,
                               to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'))
                   FROM credits.ledger WHERE account_id LIKE $1 AND kind IN ('F', 'E', 'X')",
                &[&like],
            )
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0)),
    );
    rows.extend(
        client
            .query(
                "SELECT format('%s event %s %s %s', account_id, kind, window_kind, window_key)
                   FROM credits.events WHERE account_id LIKE $1",
                &[&like],
            )
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0)),
    );
    rows.sort();
    rows
}

/// `n` accounts: every third on free and out of credits for the day, the
/// rest on pro with some usage; some pro accounts with a hold, some
/// accounts with a grant that expires the next day.
fn load_accounts(client: &mut Client, prefix: &str, n: i32) {
    client
        .execute(
            "SELECT credits.subscribe($1 || lpad(i::text, 5, '0'), CASE WHEN i % 3 = 0 THEN 'free' ELSE 'pro' END),
                    CASE WHEN i % 3 = 0 THEN credits.debit($1 || lpad(i::text, 5, '0'), 'agent', 10)
                         ELSE credits.debit($1 || lpad(i::text, 5, '0'), 'agent', i % 50 + 1) END,
                    CASE WHEN i % 21 = 7 THEN credits.reserve($1 || lpad(i::text, 5, '0'), 'agent', 2, '2 hours') END,
                    CASE WHEN i % 11 = 0 THEN credits.grant($1 || lpad(i::text, 5, '0'), 3, 'promotional',
                                                            credits.now() + interval '1 day') END
               FROM generate_series(1, $2) AS i",
            &[&prefix, &n],
        )
        .unwrap();
}

#[test]
fn the_worker_runs_maintenance_when_the_cluster_clock_crosses_a_boundary() {
    let mut settings = SystemSettings(Vec::new());
    let (db, mut client) = fresh_worker_database(&mut settings, "2030-01-31 12:00:00+00");

    // It waits for the extension without failing, then takes the state over.
    client.batch_execute("CREATE EXTENSION credits").unwrap();
    subscribe(&mut client, "w_free", "free");
    subscribe(&mut client, "w_pro", "pro");
    client
        .batch_execute(
            "SELECT credits.debit('w_free', 'agent', 10); SELECT credits.debit('w_pro', 'agent', 30)",
        )
        .unwrap();
    wait_until(30, "the worker's first run", || {
        done_through(&mut client).as_deref() == Some("2030-01-31 12:00:00.000")
    });
    assert_eq!(
        maintenance_record(&mut client, "w_"),
        vec!["w_free event exhausted daily 2030-01-31"],
        "nothing was due yet"
    );

    // Midnight of Feb 1st, and nobody calls anything but the worker.
    settings.set("credits.clock_override", "2030-02-01 00:00:00.001+00");
    wait_until(30, "the worker to cross the boundary", || {
        done_through(&mut client).as_deref() == Some("2030-02-01 00:00:00.001")
    });
    assert_eq!(
        maintenance_record(&mut client, "w_"),
        vec![
            "w_free daily 2030-01-31 used=10 limit=10 forfeited=",
            "w_free event exhausted daily 2030-01-31",
            "w_free event reset daily 2030-02-01",
            "w_free ledger F 15 at 2030-02-01 00:00",
            "w_free monthly 2030-01-01 used=10 limit=25 forfeited=15",
            "w_pro daily 2030-01-31 used=30 limit= forfeited=",
            "w_pro ledger F 70 at 2030-02-01 00:00",
            "w_pro monthly 2030-01-01 used=30 limit=100 forfeited=70",
        ]
    );
    // Its writes reach the statistics autovacuum works from (only the
    // worker wrote closed windows in this database).
    wait_until(30, "the worker's statistics", || {
        client
            .query_one(
                "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = 'credits.closed_windows'::regclass",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
            == 4
    });
    let status = client
        .query_one(
            "SELECT worker_pid, running, last_error, extract(epoch FROM lag)::float8 FROM credits.maintenance_status",
            &[],
        )
        .unwrap();
    assert_eq!(
        status.get::<_, Option<i32>>(0),
        worker_pid(&mut client, &db)
    );
    assert!(!status.get::<_, bool>(1));
    assert_eq!(status.get::<_, Option<String>>(2), None);
    assert_eq!(status.get::<_, f64>(3), 0.0);
    assert_verified(&mut client);
}

#[test]
fn catch_up_is_exactly_once_and_a_worker_terminated_mid_run_finishes_the_same_job() {
    const BEFORE: &str = "2030-03-29 10:00:00+00";
    // Three day boundaries and a month boundary later.
    const AFTER: &str = "2030-04-02 00:30:00+00";
    const ACCOUNTS: i32 = 3000;

    // The reference: the same accounts caught up by hand, uninterrupted.
    recreate_database("credits_worker_ref");
    let mut reference = connect_db("credits_worker_ref");
    reference.batch_execute("CREATE EXTENSION credits").unwrap();
    set_clock(&mut reference, BEFORE);
    load_accounts(&mut reference, "c", ACCOUNTS);
    reference
        .batch_execute(&format!("CALL credits.run_maintenance('{AFTER}')"))
        .unwrap();
    let expected = maintenance_record(&mut reference, "c");
    let free = (ACCOUNTS / 3) as usize;
    let count = |what: &str| expected.iter().filter(|r| r.contains(what)).count();
    assert_eq!(
        count(" monthly 2030-03-01 "),
        ACCOUNTS as usize,
        "one March window per account"
    );
    assert_eq!(
        count(" daily 2030-03-29 "),
        ACCOUNTS as usize,
        "one active day per account"
    );
    assert_eq!(
        count(" event reset daily 2030-03-30"),
        free,
        "free accounts had run out"
    );
    let with = |m: i32, r: i32| (1..=ACCOUNTS).filter(|i| i % m == r).count();
    assert_eq!(count(" ledger X "), with(21, 7), "every hold expired");
    assert_eq!(count(" ledger E "), with(11, 0), "every grant expired");
    assert_eq!(
        expected.len(),
        count(" used=") + count(" ledger ") + count(" event ")
    );
    // A second run for the same instant changes nothing.
    reference
        .batch_execute(&format!("CALL credits.run_maintenance('{AFTER}')"))
        .unwrap();
    assert_eq!(maintenance_record(&mut reference, "c"), expected);
    assert_verified(&mut reference);

    // The worker, down over the same boundaries (the clock jumps), with
    // small batches so the run is long enough to be cut short.
    let mut settings = SystemSettings(Vec::new());
    let (db, mut client) = fresh_worker_database(&mut settings, BEFORE);
    client.batch_execute("CREATE EXTENSION credits").unwrap();
    load_accounts(&mut client, "c", ACCOUNTS);
    wait_until(30, "the worker's first run", || {
        done_through(&mut client).is_some()
    });
    settings.set("credits.maintenance_batch_size", "5");
    settings.set("credits.clock_override", AFTER);

    wait_until(30, "a run in progress", || {
        client
            .query_one(
                "SELECT running AND last_run_accounts >= 100 FROM credits.maintenance_status",
                &[],
            )
            .unwrap()
            .get(0)
    });
    let killed = worker_pid(&mut client, &db).expect("the worker is running");
    client
        .execute("SELECT pg_terminate_backend($1)", &[&killed])
        .unwrap();
    let cut_at: i64 = client
        .query_one(
            "SELECT last_run_accounts FROM credits.maintenance_status",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        cut_at < ACCOUNTS as i64,
        "the run was cut short ({cut_at} accounts done)"
    );

    wait_until(60, "the restarted worker to finish", || {
        done_through(&mut client).as_deref() == Some("2030-04-02 00:30:00.000")
    });
    let restarted = worker_pid(&mut client, &db).expect("the worker came back");
    assert_ne!(restarted, killed);
    assert_eq!(maintenance_record(&mut client, "c"), expected);
    let (accounts, runs): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT accounts FROM credits.maintenance_runs WHERE run_at = $1::text::timestamptz),
                        (SELECT count(*) FROM credits.maintenance_runs WHERE run_at = $1::text::timestamptz)",
                &[&AFTER],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (accounts, runs),
        (ACCOUNTS as i64, 1),
        "one run, resumed, each account once"
    );
    assert_verified(&mut client);
}

#[test]
fn the_worker_keeps_the_usage_rollups_up_to_date_by_itself() {
    let mut settings = SystemSettings(Vec::new());
    let (_db, mut client) = fresh_worker_database(&mut settings, "2030-06-10 12:00:00+00");
    settings.set("credits.rollup_interval", "1");
    client.batch_execute("CREATE EXTENSION credits").unwrap();
    subscribe(&mut client, "wr_pro", "pro");
    let entry: i64 = client
        .query_one("SELECT credits.debit('wr_pro', 'agent', 4)", &[])
        .unwrap()
        .get(0);
    wait_until(30, "the worker to roll up the debit", || {
        client
            .query_one("SELECT rolled_through FROM credits.rollup_state", &[])
            .unwrap()
            .get::<_, i64>(0)
            >= entry
    });
    let (amount, pending, error): (String, i64, Option<String>) = {
        let row = client
            .query_one(
                "SELECT (SELECT amount::text FROM credits.usage_rollup
                          WHERE account_id = 'wr_pro' AND kind = 'D'),
                        pending_entries, last_error
                   FROM credits.rollup_status",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(amount, "4");
    assert_eq!(pending, 0);
    assert_eq!(error, None);
    // The event feed's watermark moves with it, though nobody reads the
    // feed (readers on a standby only see what the primary stored).
    client
        .query_one("SELECT credits.debit('wr_pro', 'agent', 96)", &[])
        .unwrap();
    let event: i64 = client
        .query_one("SELECT max(event_id) FROM credits.events", &[])
        .unwrap()
        .get(0);
    wait_until(30, "the worker to move the event feed's watermark", || {
        client
            .query_one(
                "SELECT safe_through FROM credits_internal.event_watermark",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
            >= event
    });
    assert_verified(&mut client);
}

/// The worker's nice value (field 19 of /proc/PID/stat; the command name
/// before it is in parentheses and may hold spaces).
fn nice_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(16).unwrap().parse().unwrap()
}

#[test]
fn the_worker_runs_at_the_cpu_priority_its_setting_asks_for() {
    let mut settings = SystemSettings(Vec::new());
    let (db, mut client) = fresh_worker_database(&mut settings, "2030-06-10 12:00:00+00");
    let pid = worker_pid(&mut client, &db).unwrap();
    let default: i32 = client
        .query_one(
            "SELECT current_setting('credits.maintenance_nice')::int",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(default, 5, "documented default");
    assert_eq!(nice_of(pid), default);

    // Raised on reload, the task and (where the kernel groups tasks by
    // session) its session's group both.
    settings.set("credits.maintenance_nice", "15");
    let group_nice = || {
        std::fs::read_to_string(format!("/proc/{pid}/autogroup"))
            .map(|group| group.trim_end().ends_with("nice 15"))
            .unwrap_or(true) // (no autogroups in this kernel)
    };
    wait_until(10, "the worker to take nice 15", || {
        nice_of(pid) == 15 && group_nice()
    });

    // Lowered: a process may not lower its own nice value, so the worker
    // keeps 15 (and says so) until it restarts, then takes the setting.
    drop(settings);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(nice_of(pid), 15);
    connect_db("postgres")
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    wait_until(30, "the worker to restart", || {
        worker_pid(&mut client, &db).is_some_and(|p| p != pid)
    });
    assert_eq!(nice_of(worker_pid(&mut client, &db).unwrap()), default);
}

/// The README's two commands in a row (./scripts/dev, then ./scripts/test)
/// install a new build while a server runs with the old one preloaded. The
/// install makes a new file, so the running server keeps the library it
/// mapped (written over in place, it crashed with its worker): after an
/// install here, the server and its worker are the same processes and work.
#[test]
fn installing_a_new_build_leaves_a_running_server_and_its_worker_alone() {
    let pgdata =
        std::env::var("CREDITS_TEST_PGDATA").expect("CREDITS_TEST_PGDATA (scripts/test sets it)");
    let postmaster: u32 = std::fs::read_to_string(format!("{pgdata}/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut admin = connect_db("postgres");
    let library: String = admin
        .query_one(
            "SELECT setting || '/credits.so' FROM pg_config() c(name, setting) WHERE name = 'PKGLIBDIR'",
            &[],
        )
        .unwrap()
        .get(0);
    let inode = |path: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap());
    let before = inode(&library);
    let db = worker_database();
    recreate_database(&db);
    wait_until(30, "the worker to connect", || {
        worker_pid(&mut admin, &db).is_some()
    });
    let worker = worker_pid(&mut admin, &db);

    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let status = std::process::Command::new("bash")
        .args(["-c", "source scripts/common.sh && install_extension"])
        .current_dir(root)
        .status()
        .unwrap();
    assert!(status.success(), "install_extension");

    assert_ne!(
        inode(&library),
        before,
        "the install wrote a new file, not over the mapped one"
    );
    let maps = std::fs::read_to_string(format!("/proc/{postmaster}/maps")).unwrap();
    assert!(
        maps.lines().any(|l| l.ends_with("credits.so (deleted)")),
        "the running server still maps the library it loaded"
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let mut after = connect_db("postgres");
    assert_eq!(
        worker_pid(&mut after, &db),
        worker,
        "the worker is the same process"
    );
    let mut client = connect();
    subscribe(&mut client, "after_install", "pro");
    client
        .query_one("SELECT credits.debit('after_install', 'agent', 1)", &[])
        .unwrap();
}

/// The worker runs as the bootstrap superuser. A role that may create
/// objects in public (the default before PostgreSQL 15) puts functions there
/// with the names and argument types the worker's SQL uses, its exception
/// handlers included, and makes worker steps fail (a lock held past
/// lock_timeout at a boundary): none of them runs, and the failed step is
/// retried at the documented interval (10 s), not every rollup_interval.
#[test]
fn the_worker_never_runs_what_a_user_put_in_public() {
    let mut settings = SystemSettings(vec![]);
    let (db, mut client) = fresh_worker_database(&mut settings, "2030-03-31 12:00:00+00");
    client.batch_execute("CREATE EXTENSION credits").unwrap();
    subscribe(&mut client, "held", "pro");
    client
        .batch_execute(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mallory') THEN
                     CREATE ROLE mallory;
                 END IF;
             END $$;
             GRANT CREATE ON SCHEMA public TO mallory;
             SET ROLE mallory;
             CREATE SEQUENCE public.pwned;
             CREATE FUNCTION public.format(text, text, text) RETURNS text
                 LANGUAGE sql AS $$ SELECT pg_catalog.nextval('public.pwned')::text $$;
             CREATE FUNCTION public.format(text, text) RETURNS text
                 LANGUAGE sql AS $$ SELECT pg_catalog.nextval('public.pwned')::text $$;
             CREATE FUNCTION public.sign(bigint) RETURNS bigint
                 LANGUAGE sql AS $$ SELECT pg_catalog.nextval('public.pwned') $$;
             RESET ROLE;",
        )
        .unwrap();
    wait_until(30, "the worker's first run", || {
        done_through(&mut client).is_some()
    });

    // Hold the runs' table across the month's end: the worker's step waits
    // until lock_timeout, and its exception handler records the error.
    let mut holder = connect_db(&db);
    holder
        .batch_execute("BEGIN; LOCK TABLE credits.maintenance_runs IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    settings.set("lock_timeout", "300ms");
    settings.set("credits.maintenance_max_nap", "60");
    settings.set("credits.clock_override", "2030-04-01 00:00:01+00");
    wait_until(30, "a failed worker step", || {
        client
            .query_one(
                "SELECT last_error IS NOT NULL FROM credits.maintenance_state",
                &[],
            )
            .unwrap()
            .get(0)
    });
    let errors_at = |client: &mut Client| -> String {
        client
            .query_one(
                "SELECT last_error_at::text FROM credits.maintenance_state",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let mut seen = vec![errors_at(&mut client)];
    for _ in 0..14 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let at = errors_at(&mut client);
        if !seen.contains(&at) {
            seen.push(at);
        }
    }
    assert!(
        seen.len() <= 2,
        "a failed step was retried {} times in 7 s",
        seen.len() - 1
    );
    holder.batch_execute("ROLLBACK").unwrap();
    let called: bool = client
        .query_one("SELECT is_called FROM public.pwned", &[])
        .unwrap()
        .get(0);
    assert!(
        !called,
        "the worker ran a function from public as superuser"
    );

    // Every function the worker or a SECURITY DEFINER function starts in
    // resolves names through pg_catalog only.
    let unpinned: Vec<String> = client
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
              WHERE p.pronamespace IN ('credits'::regnamespace, 'credits_internal'::regnamespace)
                AND (p.prosecdef OR p.proname IN ('_worker_step', '_worker_rollups'))
                AND NOT coalesce(p.proconfig @> '{\"search_path=pg_catalog, pg_temp\"}', false)
                AND p.prolang <> (SELECT oid FROM pg_language WHERE lanname = 'c')
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(unpinned, Vec::<String>::new());
}

/// An application transaction holds one account across 00:00 UTC. The
/// worker never waits on it: every other account is closed on time (a debit
/// on an account of the same batch is not held up), maintenance_status shows
/// the held one waiting, and it is closed, once, after its holder commits.
#[test]
fn an_account_held_across_midnight_stalls_no_other() {
    let mut settings = SystemSettings(vec![]);
    let (db, mut client) = fresh_worker_database(&mut settings, "2030-05-31 23:00:00+00");
    client.batch_execute("CREATE EXTENSION credits").unwrap();
    for i in 0..40 {
        let account = format!("h{i:02}");
        subscribe(&mut client, &account, "free");
        client
            .query_one("SELECT credits.debit($1, 'agent', 1)", &[&account])
            .unwrap();
    }
    wait_until(30, "the worker's first run", || {
        done_through(&mut client).is_some()
    });
    settings.set("credits.maintenance_batch_size", "10");
    let mut holder = connect_db(&db);
    holder
        .batch_execute("BEGIN; SELECT FROM credits.accounts WHERE account_id = 'h20' FOR UPDATE")
        .unwrap();
    settings.set("credits.clock_override", "2030-06-01 00:00:01+00");

    let closed = |client: &mut Client, account: &str| -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM credits.closed_windows WHERE account_id LIKE $1",
                &[&account],
            )
            .unwrap()
            .get(0)
    };
    wait_until(20, "every other account closed", || {
        closed(&mut client, "h%") == 2 * 39
    });
    let started = std::time::Instant::now();
    client
        .query_one("SELECT credits.debit('h19', 'agent', 1)", &[])
        .unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "a debit waited {:?} behind the worker",
        started.elapsed()
    );
    let waiting: i64 = client
        .query_one(
            "SELECT waiting_accounts FROM credits.maintenance_status",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(waiting, 1);
    assert_eq!(closed(&mut client, "h20"), 0);

    holder.batch_execute("COMMIT").unwrap();
    wait_until(20, "the held account closed and the run done", || {
        done_through(&mut client).as_deref() == Some("2030-06-01 00:00:01.000")
    });
    assert_eq!(
        closed(&mut client, "h20"),
        2,
        "its day and month, each once"
    );
    assert_eq!(closed(&mut client, "h%"), 2 * 40);
    assert_verified(&mut client);
}

/// An upgrade window (docs/upgrade.md): the new library runs while the
/// database still has the extension at an older version. The worker idles
/// with one log line, the same process, touching nothing, until
/// ALTER EXTENSION credits UPDATE; then it takes over.
#[test]
fn the_worker_idles_while_the_extension_awaits_its_update() {
    let mut settings = SystemSettings(vec![]);
    let (_db, mut client) = fresh_worker_database(&mut settings, "2030-07-10 12:00:00+00");
    client
        .batch_execute("CREATE EXTENSION credits VERSION '0.1.0'")
        .unwrap();
    let db = worker_database();
    let first = worker_pid(&mut client, &db);
    for _ in 0..12 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        assert_eq!(worker_pid(&mut client, &db), first, "the worker exited");
    }
    assert_eq!(done_through(&mut client), None, "it touched the old schema");
    let pgdata = std::env::var("CREDITS_TEST_PGDATA").unwrap();
    let log = std::fs::read_to_string(format!("{pgdata}/server.log")).unwrap_or_default();
    let lines = log
        .lines()
        .filter(|l| {
            l.contains("is at version 0.1.0")
                && l.contains("idle until ALTER EXTENSION credits UPDATE")
        })
        .count();
    assert!(lines >= 1, "one clear log line");

    client
        .batch_execute("ALTER EXTENSION credits UPDATE")
        .unwrap();
    wait_until(30, "the worker's first run after the update", || {
        done_through(&mut client).is_some()
    });
    assert_eq!(worker_pid(&mut client, &db), first);
}

/// `credits.database` names several databases: one worker serves each, with
/// its own status, and a database it does not name says so (no worker_pid).
#[test]
fn one_worker_per_database_in_the_list() {
    let pgdata = std::env::var("CREDITS_TEST_PGDATA").unwrap();
    let restart = || {
        let status = std::process::Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                "/usr/lib/postgresql/15/bin/pg_ctl",
                "-s",
                "-D",
                &pgdata,
            ])
            .args([
                "-l",
                &format!("{pgdata}/server.log"),
                "-w",
                "-m",
                "fast",
                "restart",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "restart");
    };
    let first = worker_database();
    let second = format!("{first}_second");
    recreate_database(&first);
    recreate_database(&second);
    for db in [&first, &second] {
        connect_db(db)
            .batch_execute("CREATE EXTENSION credits")
            .unwrap();
    }
    let set = |value: &str| {
        connect_db("postgres")
            .batch_execute(&format!("ALTER SYSTEM SET credits.database = '{value}'"))
            .unwrap();
    };
    set(&format!("{first}, {second}"));
    restart();
    let result = std::panic::catch_unwind(|| {
        for db in [&first, &second] {
            let mut client = connect_db(db);
            wait_until(30, "each database's worker and its first run", || {
                worker_pid(&mut client, db).is_some() && done_through(&mut client).is_some()
            });
            let (pid, served): (Option<i32>, String) = {
                let row = client
                    .query_one(
                        "SELECT worker_pid, worker_database FROM credits.maintenance_status",
                        &[],
                    )
                    .unwrap();
                (row.get(0), row.get(1))
            };
            assert_eq!(pid, worker_pid(&mut client, db));
            assert!(served.contains(db.as_str()));
        }
        let mut elsewhere = connect();
        let pid: Option<i32> = elsewhere
            .query_one("SELECT worker_pid FROM credits.maintenance_status", &[])
            .unwrap()
            .get(0);
        assert_eq!(pid, None, "no worker serves the test database");
        // A bad list is refused when set.
        let refused = connect_db("postgres").batch_execute(&format!(
            "ALTER SYSTEM SET credits.database = '{first},{first}'"
        ));
        assert_eq!(sqlstate(refused), "22023");
    });
    set(&first);
    restart();
    drop(connect_db("postgres"));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
