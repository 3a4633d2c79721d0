//! An account row as the code below SQL reads it (schema.sql, accounts).

use crate::pg::rows::{Found, Table};
use pgrx::pg_sys::Datum;

/// The columns the debit fast path and window closing decide on.
pub(crate) struct Account {
    pub plan: Datum,
    pub purchased: Datum,
    /// The UTC day `daily_used` counts (a date).
    pub day: i32,
    pub daily_used: Datum,
    /// The first day of the UTC month `monthly_used` counts (a date).
    pub month: i32,
    pub monthly_used: Datum,
    pub monthly_epoch: i64,
    pub reserved: Datum,
}

impl Account {
    /// None if a column is missing (a schema this code does not know).
    pub(crate) unsafe fn read(table: &Table, row: &Found) -> Option<Account> {
        Some(Account {
            plan: row.get(table.col(c"plan")?)?,
            purchased: row.get(table.col(c"purchased")?)?,
            day: row.get(table.col(c"day")?)?.value() as i32,
            daily_used: row.get(table.col(c"daily_used")?)?,
            month: row.get(table.col(c"month")?)?.value() as i32,
            monthly_used: row.get(table.col(c"monthly_used")?)?,
            monthly_epoch: row.get(table.col(c"monthly_epoch")?)?.value() as i64,
            reserved: row.get(table.col(c"reserved")?)?,
        })
    }
}
