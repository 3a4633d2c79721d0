//! Settings (`credits.*`), registered when the library loads.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// `credits.clock_override`: when set, `credits.now()` returns it instead of
/// the transaction time. Superuser-only, so applications cannot move the
/// billing clock; tests use it to cross UTC boundaries.
pub static CLOCK_OVERRIDE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn init() {
    GucRegistry::define_string_guc(
        c"credits.clock_override",
        c"Fixed time returned by credits.now() (tests only); empty = transaction time.",
        c"A timestamptz with an explicit UTC offset, e.g. '2026-03-01 00:00:00.001+00'. Superuser-only.",
        &CLOCK_OVERRIDE,
        GucContext::Suset,
        GucFlags::default(),
    );
}
