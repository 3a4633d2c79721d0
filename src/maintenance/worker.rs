//! The maintenance worker: a loop that sleeps until the next thing is due
//! (a UTC day boundary, a hold or grant deadline, capped by
//! `credits.maintenance_max_nap`) and then calls the SQL step function, one
//! transaction per batch. All its state is in tables, so a restart resumes
//! where it stopped; a failing step is recorded and retried, never fatal.

use crate::gucs::{BATCH_SIZE, DATABASE, MAINTENANCE_NICE, MAX_NAP, ROLLUP_INTERVAL};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::time::Duration;

/// Name shown as `backend_type` in `pg_stat_activity`.
const WORKER_TYPE: &str = "credits maintenance";
/// How long to wait after an error, or while the extension does not exist.
const RETRY: Duration = Duration::from_secs(10);

/// One worker per database of `credits.database` (a comma-separated list),
/// each told which by its argument.
pub fn register() {
    for (i, database) in databases().iter().enumerate() {
        BackgroundWorkerBuilder::new(&format!("{WORKER_TYPE} {database}"))
            .set_type(WORKER_TYPE)
            .set_library("credits")
            .set_function("credits_maintenance_main")
            .set_argument(Some(pg_sys::Datum::from(i)))
            .enable_spi_access()
            // Only where writes can happen: on a standby it starts at promotion.
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            // pgrx's default is never; after a crash or pg_terminate_backend, come back.
            .set_restart_time(Some(Duration::from_secs(5)))
            .load();
    }
}

/// The databases the workers serve: `credits.database`, a comma-separated
/// list (validated when set: gucs.rs).
fn databases() -> Vec<String> {
    let setting = DATABASE
        .get()
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_else(|| "postgres".to_owned());
    crate::gucs::database_list(&setting)
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn credits_maintenance_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = databases()
        .into_iter()
        .nth(arg.value())
        .unwrap_or_else(|| "postgres".to_owned());
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("credits maintenance worker started in database {database:?}");
    set_nice();

    let mut nap = Duration::ZERO;
    // (the version the extension was found at, while it differs from ours)
    let mut waiting_for_update: Option<String> = None;
    while sleep(nap) {
        let max_nap = Duration::from_secs(MAX_NAP.get().max(1) as u64);
        let rollup_interval = Duration::from_secs(ROLLUP_INTERVAL.get().max(1) as u64);
        nap = match BackgroundWorker::transaction(step) {
            Step::Due(seconds) if seconds.is_finite() && seconds > 0.0 => {
                // Nothing due now: time for the rollups. A full batch means
                // more is waiting, so come back at once.
                let rolled = BackgroundWorker::transaction(refresh_rollups);
                if rolled >= ROLLUP_BATCH {
                    Duration::ZERO
                } else {
                    Duration::from_secs_f64(seconds)
                        .min(max_nap)
                        .min(rollup_interval)
                }
            }
            Step::Due(_) => Duration::ZERO,
            // recorded in maintenance_state and the log: retried as documented
            Step::Failed => RETRY.min(max_nap),
            Step::Missing => RETRY.min(max_nap), // no extension (yet)
            Step::OtherVersion(version) => {
                if waiting_for_update.as_deref() != Some(&version) {
                    log!(
                        "credits maintenance: the extension in database {database:?} is at version {version}, \
                         this library is {}: idle until ALTER EXTENSION credits UPDATE",
                        env!("CARGO_PKG_VERSION")
                    );
                    waiting_for_update = Some(version);
                }
                RETRY.min(max_nap)
            }
        };
        // A backend reports its table and WAL statistics when it goes idle;
        // a worker must do it itself, or autovacuum never learns of the
        // rows a reset updated (at most once a second while busy, and
        // before every nap).
        // SAFETY: called between transactions, as PostgreSQL requires.
        unsafe { pg_sys::pgstat_report_stat(!nap.is_zero()) };
    }
    // Exit code 1 so the postmaster restarts the worker after a
    // pg_terminate_backend; at shutdown it is not restarted anyway.
    log!("credits maintenance worker stopping");
    // SAFETY: ends this background worker process, as PostgreSQL's own workers do.
    unsafe { pg_sys::proc_exit(1) };
}

/// Sleeps `nap`, or until a reload (SIGHUP) or a stop; false on a stop. The
/// latch is also set by other things (a timer left by a lock wait that timed
/// out, for one), which do not end the nap: a failed step is retried after
/// its interval, not at the next stray wakeup.
fn sleep(nap: Duration) -> bool {
    let until = std::time::Instant::now() + nap;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if !BackgroundWorker::wait_latch(Some(left)) {
            return false;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a background worker to reload its settings.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            set_nice();
            return true;
        }
        if std::time::Instant::now() >= until {
            return true;
        }
    }
}

/// Gives the worker the CPU priority `credits.maintenance_nice` asks for,
/// if it has another. A reset is CPU work that competes with the
/// debits' backends; a higher nice value lets a debit that wakes up run first.
///
/// Every backend leads its own session, and where the kernel groups tasks by
/// session ("autogroup": Linux without systemd-style cgroups), a nice value
/// only ranks a task within its session: the session's own nice is what
/// competes with other backends. So both are set (the second is a no-op
/// where autogroups are not used).
fn set_nice() {
    let wanted = MAINTENANCE_NICE.get();
    // SAFETY: plain system call on this process (a worker's nice is never
    // negative, so -1 is not an ambiguous result here).
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    if wanted == current {
        return;
    }
    // SAFETY: plain system call on this process.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, wanted) } != 0 {
        // Lowering a nice value needs a privilege the server does not have.
        warning!(
            "credits.maintenance_nice: cannot change the worker's nice value from {current} to {wanted} ({}); \
             lowering it takes a worker restart",
            std::io::Error::last_os_error()
        );
        return;
    }
    // (The kernel takes one such write per 100 ms system-wide: EAGAIN.)
    let mut tries = 0;
    while let Err(e) = std::fs::write("/proc/self/autogroup", wanted.to_string()) {
        tries += 1;
        if e.raw_os_error() == Some(libc::EAGAIN) && tries < 5 {
            std::thread::sleep(Duration::from_millis(120));
            continue;
        }
        if e.kind() != std::io::ErrorKind::NotFound {
            warning!("credits.maintenance_nice: cannot set the worker's autogroup nice value to {wanted} ({e})");
        }
        break;
    }
}

/// What one maintenance transaction came to.
enum Step {
    /// No extension in the database (yet).
    Missing,
    /// The extension is at another version than this library (an upgrade
    /// window: new library, old schema): nothing is touched.
    OtherVersion(String),
    /// A step ran; the seconds until the next is due (0 = now).
    Due(f64),
    /// A step failed (recorded by credits_internal._worker_step).
    Failed,
}

/// One transaction: a maintenance step, if the extension is there at this
/// library's version.
fn step() -> Step {
    run_step().unwrap_or(Step::Missing)
}

fn run_step() -> Option<Step> {
    // Each batch locks accounts as it reaches them, following concurrent
    // debits to the newest row version: READ COMMITTED, whatever the
    // cluster's default_transaction_isolation (at REPEATABLE READ a batch
    // would fail whenever a debit touched one of its accounts first).
    Spi::run("SET TRANSACTION ISOLATION LEVEL READ COMMITTED").ok()?;
    pin_search_path().ok()?;
    let version = Spi::get_one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'credits'",
    )
    .ok()
    .flatten()?;
    if version != env!("CARGO_PKG_VERSION") {
        return Some(Step::OtherVersion(version));
    }
    commit_without_flush().ok()?;
    let batch = BATCH_SIZE.get().max(1);
    let retry = RETRY.as_secs_f64();
    // (a failed step returns minus the seconds to wait)
    let seconds = Spi::get_one::<f64>(&format!(
        "SELECT credits_internal._worker_step({batch}, {retry})"
    ))
    .ok()
    .flatten()?;
    Some(if seconds < 0.0 {
        Step::Failed
    } else {
        Step::Due(seconds)
    })
}

/// Ledger entries rolled up per transaction: a few hundred milliseconds.
const ROLLUP_BATCH: i64 = 200_000;

/// One rollup transaction; returns the entries rolled up. Skipped while the
/// installed extension is older than the rollups.
fn refresh_rollups() -> i64 {
    if commit_without_flush()
        .and_then(|_| pin_search_path())
        .is_err()
    {
        return 0;
    }
    Spi::get_one::<i64>(&format!(
        "SELECT credits_internal._worker_rollups({ROLLUP_BATCH}, '100 ms') \
          WHERE pg_catalog.to_regproc('credits_internal._worker_rollups') IS NOT NULL"
    ))
    .ok()
    .flatten()
    .unwrap_or(0)
}

/// The worker runs as the bootstrap superuser: nothing it runs resolves a
/// name through a schema that other roles can create objects in (the
/// default search_path has "$user" and public).
fn pin_search_path() -> Result<(), pgrx::spi::Error> {
    Spi::run("SET LOCAL search_path = pg_catalog, pg_temp")
}

/// The worker's transactions do not wait for the WAL flush: a transaction lost
/// in a crash is lost whole (its progress row with it) and simply done again.
fn commit_without_flush() -> Result<(), pgrx::spi::Error> {
    Spi::run("SET LOCAL synchronous_commit = off")
}
