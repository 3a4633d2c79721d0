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

pub fn init() {
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
