//! Metering: debit, try_debit, refund (the hot path), and reservations.

use pgrx::prelude::*;

extension_sql_file!("metering.sql", name = "metering", requires = ["internal"]);
extension_sql_file!("holds.sql", name = "holds", requires = ["metering"]);
