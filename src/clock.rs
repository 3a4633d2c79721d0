//! The extension's clock. Every window decision reads `credits.now()`, so a
//! test can move one setting and see every rule at a UTC boundary.

use crate::gucs::CLOCK_OVERRIDE;
use pgrx::prelude::*;
use std::str::FromStr;

/// `credits.now()`: `credits.clock_override` when set, else the start of the
/// current transaction (like `now()`), so one transaction sees one instant.
#[pg_extern(stable, parallel_safe)]
#[allow(unreachable_code)] // ereport!(ERROR) does not return
pub fn now() -> TimestampWithTimeZone {
    if let Some(value) = CLOCK_OVERRIDE.get() {
        let text = value.to_string_lossy();
        let text = text.trim();
        if !text.is_empty() {
            return TimestampWithTimeZone::from_str(text).unwrap_or_else(|_| {
                ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("invalid credits.clock_override: {text:?}"),
                    "expected a timestamptz with an explicit offset, e.g. '2026-03-01 00:00:00+00'"
                );
                unreachable!("ereport(ERROR) does not return")
            });
        }
    }
    // SAFETY: reads a field of the current transaction state; always valid in a backend.
    let started = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    TimestampWithTimeZone::try_from(started).expect("transaction start time is a valid timestamptz")
}
