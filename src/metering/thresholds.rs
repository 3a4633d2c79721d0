//! `credits_internal._thresholds()`: the `credits.thresholds` setting as a sorted
//! numeric array. In Rust because the debit fast path asks for it on every
//! call; parsing the setting in SQL cost more than the rest of the check.

use crate::gucs::{DEFAULT_THRESHOLDS, THRESHOLDS};
use pgrx::prelude::*;
use pgrx::AnyNumeric;
use std::cell::RefCell;
use std::ffi::CString;
use std::str::FromStr;

// Declared in src/schema/internal.sql (schema credits_internal).
#[pg_extern(sql = false)]
#[allow(unreachable_code)] // ereport!(ERROR) does not return
pub(crate) fn thresholds() -> Vec<AnyNumeric> {
    // An empty setting means the default, as an unset one does.
    let setting = THRESHOLDS
        .get()
        .filter(|s| !s.to_string_lossy().trim().is_empty())
        .unwrap_or_else(|| DEFAULT_THRESHOLDS.to_owned())
        .to_string_lossy()
        .into_owned();
    let mut values = Vec::new();
    for part in setting.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match AnyNumeric::from_str(part) {
            Ok(v) => values.push(v),
            Err(_) => {
                ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("invalid credits.thresholds: {setting:?}"),
                    "expected comma-separated percentages, e.g. '80,100'"
                );
                unreachable!("ereport(ERROR) does not return")
            }
        }
    }
    values.sort();
    values
}

/// The lowest threshold, parsed once per value of the setting: the debit
/// fast path asks on every debit.
pub(crate) fn lowest_threshold() -> Option<AnyNumeric> {
    thread_local! {
        static LAST: RefCell<Option<(Option<CString>, Option<AnyNumeric>)>> = const { RefCell::new(None) };
    }
    let setting = THRESHOLDS.get();
    LAST.with(|last| {
        if let Some((seen, lowest)) = &*last.borrow() {
            if *seen == setting {
                return lowest.clone();
            }
        }
        let lowest = thresholds().into_iter().next();
        *last.borrow_mut() = Some((setting, lowest.clone()));
        lowest
    })
}
