//! Metering: debit, try_debit, refund (the hot path), reservations, and the
//! events a write makes due.

use pgrx::prelude::*;

mod fast_path;
mod requests;
pub(crate) mod stats;
mod stripes;
mod thresholds;

extension_sql_file!("events.sql", name = "events", requires = ["internal"]);
extension_sql_file!("metering.sql", name = "metering", requires = ["events"]);
extension_sql_file!("holds.sql", name = "holds", requires = ["metering"]);
extension_sql_file!(
    "float_amounts.sql",
    name = "float_amounts",
    requires = ["holds", "accounts", "metering"]
);
