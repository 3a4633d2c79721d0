//! Metering: debit, try_debit, refund (the hot path).

use pgrx::prelude::*;

extension_sql_file!("metering.sql", name = "metering", requires = ["internal"]);
