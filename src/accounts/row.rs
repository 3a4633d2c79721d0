//! An account row as the code below SQL reads it (schema.sql, accounts).

use crate::clock;
use crate::pg::decimal::Decimal;
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
    /// The latest instant a write to the account was stamped with (a timestamptz).
    pub last_at: i64,
    /// Its alert (credits.set_alert): credits, and a percentage of the monthly limit.
    pub alert_remaining: Option<Datum>,
    pub alert_percent: Option<Datum>,
    /// Its stripes (credits.set_stripes; 0: none), and the budget they hold
    /// in its counters (None: none).
    pub stripes: i16,
    pub stripe_budget: Option<Datum>,
}

impl Account {
    /// The instant a call at `now` decides at (credits_internal._account_now): time
    /// only moves forward per account, so a clock behind the account's
    /// windows or its last write counts at the later of the two.
    pub(crate) fn now(&self, now: i64) -> i64 {
        now.max(self.last_at)
            .max(clock::day_start(self.day))
            .max(clock::day_start(self.month))
    }

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
            last_at: row.get(table.col(c"last_at")?)?.value() as i64,
            // (NULL: no alert; a schema from before alerts has none either)
            alert_remaining: table.col(c"alert_remaining").and_then(|c| row.get(c)),
            alert_percent: table.col(c"alert_percent").and_then(|c| row.get(c)),
            // (a schema from before stripes has none)
            stripes: table
                .col(c"stripes")
                .and_then(|c| row.get(c))
                .map_or(0, |d| d.value() as i16),
            stripe_budget: table.col(c"stripe_budget").and_then(|c| row.get(c)),
        })
    }

    /// Do its counters count budgets handed to its stripes as used?
    pub(crate) unsafe fn has_stripe_budget(&self) -> bool {
        budget_out(self.stripe_budget)
    }

    /// Is it striped, or do its counters still count stripes' budgets (a
    /// striped account's debits are src/metering/stripes.rs's)?
    pub(crate) unsafe fn striped(&self) -> bool {
        self.stripes > 0 || self.has_stripe_budget()
    }

    /// striped() of a row, from its two stripe columns alone: every debit
    /// asks before it locks the row (a whole read costs a score of column
    /// lookups, and the locked row is read again anyway).
    pub(crate) unsafe fn row_striped(table: &Table, row: &Found) -> bool {
        let get = |name| table.col(name).and_then(|c| row.get(c));
        get(c"stripes").is_some_and(|d| d.value() as i16 > 0) || budget_out(get(c"stripe_budget"))
    }
}

/// A stripe_budget that is not zero (one this code cannot read counts as
/// out, which only sends debits to the SQL path).
unsafe fn budget_out(budget: Option<Datum>) -> bool {
    budget.is_some_and(|b| Decimal::from_datum(b).is_none_or(|b| b != Decimal::ZERO))
}
