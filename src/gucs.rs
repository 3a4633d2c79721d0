//! Settings (`credits.*`), registered when the library loads.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use std::ffi::{c_char, c_void, CStr, CString};

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

/// `credits.notify_payload`: what a `NOTIFY credits` carries. LISTEN has no
/// access control (any role that can connect may listen), so a DBA may
/// keep account data out of notifications: `minimal` sends the event's
/// cursor, id and kind only; listeners read the rest through read_events,
/// with privileges.
pub static NOTIFY_PAYLOAD: GucSetting<NotifyPayload> =
    GucSetting::<NotifyPayload>::new(NotifyPayload::Full);

#[derive(pgrx::PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum NotifyPayload {
    /// The event as read_events returns it.
    #[name = c"full"]
    Full,
    /// Cursor, event id and kind.
    #[name = c"minimal"]
    Minimal,
}

/// `credits.database`: the databases the maintenance workers serve, a
/// comma-separated list (one worker each).
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
    // SAFETY: as in init(): the check hook cannot panic or raise.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"credits.database",
            c"Databases in which a credits maintenance worker runs, comma-separated.",
            c"One worker each; the extension must be created there, the worker waits until it is. Needs a restart.",
            &DATABASE,
            GucContext::Postmaster,
            GucFlags::default(),
            Some(check_databases),
            None,
            None,
        );
    }
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
    GucRegistry::define_enum_guc(
        c"credits.notify_payload",
        c"What a NOTIFY credits carries: full (the event) or minimal (cursor, id and kind).",
        c"LISTEN has no access control: minimal keeps account data out of notifications; listeners read events through credits.read_events.",
        &NOTIFY_PAYLOAD,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: the check hooks below are plain Rust that cannot panic or
    // raise: they only read the proposed value and set the detail string.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"credits.thresholds",
            c"Comma-separated percentages of the monthly limit that emit a threshold event.",
            c"Each is emitted once per account and monthly window, e.g. '50,80,100'.",
            &THRESHOLDS,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_thresholds),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"credits.bandwidth_cutoff",
            c"UTC date from which new accounts get 20 GB per 100 credits of monthly limit.",
            c"Older accounts get 25 GB per 100 purchased credits. ISO date, e.g. 2025-08-14.",
            &BANDWIDTH_CUTOFF,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_bandwidth_cutoff),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"credits.clock_override",
            c"Fixed time returned by credits.now() (tests only); empty = transaction time.",
            c"A timestamptz with an explicit UTC offset, e.g. '2026-03-01 00:00:00.001+00'. Superuser-only.",
            &CLOCK_OVERRIDE,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_clock_override),
            None,
            None,
        );
    }
}

// Check hooks (SPEC §4.9): a bad value is refused by SET, ALTER SYSTEM or a
// reload, as PostgreSQL's own settings are (SQLSTATE 22023, the setting kept),
// instead of being found by the next debit. For the first three, empty
// means the default.

/// A check hook (a C function) from a validator and what the value should
/// look like.
macro_rules! check_hook {
    ($name:ident, $ok:expr, $expected:expr) => {
        unsafe extern "C-unwind" fn $name(
            newval: *mut *mut c_char,
            _extra: *mut *mut c_void,
            _source: pg_sys::GucSource::Type,
        ) -> bool {
            check(newval, $ok, $expected)
        }
    };
}

/// `credits.thresholds`: comma-separated positive percentages.
fn thresholds_ok(value: &str) -> bool {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .all(positive_percentage)
}

/// "80" or "12.5": digits with an optional fraction, above 0, below 10^9.
fn positive_percentage(p: &str) -> bool {
    let (int, frac) = p.split_once('.').unwrap_or((p, ""));
    let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    !int.is_empty()
        && digits(int)
        && digits(frac)
        && !(p.ends_with('.'))
        && int.trim_start_matches('0').len() <= 9
        && p.bytes().any(|c| (b'1'..=b'9').contains(&c))
}

/// `credits.bandwidth_cutoff`: an ISO date, YYYY-MM-DD.
fn date_ok(value: &str) -> bool {
    let b = value.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && calendar_date(&value[0..4], &value[5..7], &value[8..10])
}

/// `credits.clock_override`: YYYY-MM-DD HH:MM[:SS[.ffffff]] and an explicit
/// offset (Z, +HH, +HH:MM or +HHMM); ' ' or 'T' between date and time.
fn instant_ok(value: &str) -> bool {
    let b = value.as_bytes();
    if b.len() < 17 || !date_ok(&value[0..10]) || !(b[10] == b' ' || b[10] == b'T') {
        return false;
    }
    let rest = &value[11..];
    let Some(split) = rest.find(['Z', '+', '-']) else {
        return false;
    };
    let (time, offset) = rest.split_at(split);
    let mut parts = time.split(':');
    let (Some(h), Some(m), s, None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let two = |p: &str, max: u32| p.len() == 2 && p.parse::<u32>().is_ok_and(|v| v <= max);
    let seconds_ok = s.is_none_or(|s| match s.split_once('.') {
        None => two(s, 59),
        Some((whole, frac)) => {
            two(whole, 59)
                && (1..=6).contains(&frac.len())
                && frac.bytes().all(|c| c.is_ascii_digit())
        }
    });
    let offset_ok = offset == "Z" || {
        let digits = &offset[1..];
        match digits.len() {
            2 => two(digits, 15),
            4 => two(&digits[..2], 15) && two(&digits[2..], 59),
            5 => digits.as_bytes()[2] == b':' && two(&digits[..2], 15) && two(&digits[3..], 59),
            _ => false,
        }
    };
    two(h, 23) && two(m, 59) && seconds_ok && offset_ok
}

/// `credits.database`: database names, comma-separated, each at most 63
/// bytes, none twice, at most 32 (one background worker each).
pub(crate) fn database_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect()
}

fn databases_ok(value: &str) -> bool {
    let list = database_list(value);
    let unique: std::collections::HashSet<&String> = list.iter().collect();
    (1..=32).contains(&list.len())
        && unique.len() == list.len()
        && list.iter().all(|d| d.len() <= 63)
}

check_hook!(
    check_databases,
    databases_ok,
    c"Expected 1 to 32 database names, comma-separated, each at most 63 bytes, none twice."
);

fn calendar_date(y: &str, m: &str, d: &str) -> bool {
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i32>(), m.parse::<u32>(), d.parse::<u32>()) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=9999).contains(&y) && (1..=days).contains(&d)
}

/// A check hook from a validator and what the value should look like.
unsafe fn check(newval: *mut *mut c_char, ok: fn(&str) -> bool, expected: &CStr) -> bool {
    if newval.is_null() || (*newval).is_null() {
        return true;
    }
    if ok(CStr::from_ptr(*newval).to_string_lossy().trim()) {
        return true;
    }
    pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(expected.as_ptr());
    false
}

check_hook!(
    check_thresholds,
    |v| v.is_empty() || thresholds_ok(v),
    c"Expected comma-separated positive percentages, e.g. '80,100'."
);

check_hook!(
    check_bandwidth_cutoff,
    |v| v.is_empty() || date_ok(v),
    c"Expected a date as YYYY-MM-DD, e.g. '2025-08-14'."
);

check_hook!(
    check_clock_override,
    |v| v.is_empty() || instant_ok(v),
    c"Expected a timestamptz with an explicit offset, e.g. '2026-03-01 00:00:00.001+00'."
);
