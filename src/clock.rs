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

// UTC calendar arithmetic on PostgreSQL's representations (a date is days
// since 2000-01-01, a timestamptz microseconds since 2000-01-01 00:00 UTC),
// for the code below SQL. Each mirrors the SQL function it names
// (internal.sql); the regression and client tests cross both paths at day
// and month boundaries.

const USECS_PER_DAY: i64 = 86_400_000_000;

/// The UTC day of an instant (credits_internal._utc_day).
pub(crate) fn utc_day(ts: i64) -> i32 {
    ts.div_euclid(USECS_PER_DAY) as i32
}

/// The instant a UTC day starts.
pub(crate) fn day_start(day: i32) -> i64 {
    day as i64 * USECS_PER_DAY
}

/// (year, month, day) of a date.
pub(crate) fn ymd(day: i32) -> (i32, i32, i32) {
    let (mut y, mut m, mut d) = (0, 0, 0);
    // SAFETY: plain arithmetic on integers.
    unsafe {
        pg_sys::j2date(
            day + pg_sys::POSTGRES_EPOCH_JDATE as i32,
            &mut y,
            &mut m,
            &mut d,
        )
    };
    (y, m, d)
}

fn date(y: i32, m: i32, d: i32) -> i32 {
    // SAFETY: plain arithmetic on integers.
    unsafe { pg_sys::date2j(y, m, d) - pg_sys::POSTGRES_EPOCH_JDATE as i32 }
}

/// The first day of the UTC month of `day` (credits_internal._utc_month).
pub(crate) fn utc_month_start(day: i32) -> i32 {
    let (y, m, _) = ymd(day);
    date(y, m, 1)
}

/// The first day of the month after the month starting on `month`.
pub(crate) fn next_month(month: i32) -> i32 {
    let (y, m, _) = ymd(month);
    if m == 12 {
        date(y + 1, 1, 1)
    } else {
        date(y, m + 1, 1)
    }
}
