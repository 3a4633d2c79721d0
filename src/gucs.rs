//! Settings (`credits.*`), registered when the library loads.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// `credits.clock_override`: when set, `credits.now()` returns it instead of
/// the transaction time. Superuser-only, so applications cannot move the
/// billing clock; tests use it to cross UTC boundaries.
pub static CLOCK_OVERRIDE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `credits.bandwidth_cutoff`: accounts created on or after this UTC date get
/// bandwidth from their monthly limit, older ones from purchases (rule 10).
pub static BANDWIDTH_CUTOFF: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"2025-08-14"));

/// `credits.thresholds`: percentages of the monthly limit at which a
/// `threshold` event is emitted, once per window each (rule 9).
pub static THRESHOLDS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(DEFAULT_THRESHOLDS));
pub const DEFAULT_THRESHOLDS: &std::ffi::CStr = c"80,100";

/// `credits.database`: the database the maintenance worker connects to.
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// `credits.maintenance_batch_size`: accounts per maintenance transaction.
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(500);

/// `credits.maintenance_nice`: the worker's CPU priority (a nice value).
pub static MAINTENANCE_NICE: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_MAINTENANCE_NICE);
pub const DEFAULT_MAINTENANCE_NICE: i32 = 5;

/// `credits.maintenance_max_nap`: the longest the worker sleeps between checks.
pub static MAX_NAP: GucSetting<i32> = GucSetting::<i32>::new(60);

/// `credits.rollup_interval`: how often the worker refreshes the usage rollups.
pub static ROLLUP_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(2);

/// The worker's settings exist only where the worker can run: when the
/// library is preloaded (`credits.database` is fixed at server start).
pub fn init_worker_settings() {
    GucRegistry::define_string_guc(
        c"credits.database",
        c"Database in which the credits maintenance worker runs.",
        c"The extension must be created there; the worker waits until it is. Needs a restart.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"credits.maintenance_batch_size",
        c"Accounts the maintenance worker closes per transaction.",
        c"Each batch commits on its own, so no account stays locked longer than one batch.",
        &BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"credits.maintenance_nice",
        c"CPU priority of the maintenance worker, as a nice value (0 = as other backends).",
        c"Higher leaves more CPU to debits while a reset runs. Lowering it takes a worker restart.",
        &MAINTENANCE_NICE,
        0,
        19,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"credits.maintenance_max_nap",
        c"Longest sleep of the maintenance worker between checks.",
        c"The worker wakes earlier for the next UTC boundary or deadline, and on reload.",
        &MAX_NAP,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"credits.rollup_interval",
        c"How often the maintenance worker refreshes the usage rollups.",
        c"Reports stay exact either way; a longer interval leaves more ledger entries for them to sum.",
        &ROLLUP_INTERVAL,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}

pub fn init() {
    GucRegistry::define_string_guc(
        c"credits.thresholds",
        c"Comma-separated percentages of the monthly limit that emit a threshold event.",
        c"Each is emitted once per account and monthly window, e.g. '50,80,100'.",
        &THRESHOLDS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"credits.bandwidth_cutoff",
        c"UTC date from which new accounts get 20 GB per 100 credits of monthly limit.",
        c"Older accounts get 25 GB per 100 purchased credits. ISO date, e.g. 2025-08-14.",
        &BANDWIDTH_CUTOFF,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"credits.clock_override",
        c"Fixed time returned by credits.now() (tests only); empty = transaction time.",
        c"A timestamptz with an explicit UTC offset, e.g. '2026-03-01 00:00:00.001+00'. Superuser-only.",
        &CLOCK_OVERRIDE,
        GucContext::Suset,
        GucFlags::default(),
    );
}
