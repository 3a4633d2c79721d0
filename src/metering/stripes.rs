//! Stripes of a hot account (`credits.set_stripes`; the table in schema.sql).
//!
//! A debit locks its account row until it commits, WAL flush included, so
//! the debits of one account wait for each other's commits: an account many
//! sessions debit at once goes no faster than its commits go one after
//! another. A striped account hands budgets of its allowance to its stripes;
//! a debit locks one free stripe, never waiting for one, and spends from its
//! budget without touching the account row, so as many debits commit at
//! once as there are stripes.
//!
//! Exact, as every decision is still taken on locked rows:
//! - budgets are handed out (refill) under the account's lock, each refill
//!   half of what the account could spend before any event (fits(): a full
//!   day, the lowest threshold, its alert), and counted as used in its
//!   counters; spending within a budget can neither overspend nor make an
//!   event due;
//! - everything else that writes the account (credits_internal._lock_account)
//!   takes its stripes, then its row, and folds what the budgets did not
//!   spend back into the counters before it decides;
//! - readers subtract the unspent budgets (credits_internal._state), which
//!   commit together with the counters.
//!
//! Locks are taken stripes first, then the account row, everywhere. A debit
//! locks one stripe inside a subtransaction (a free one, or it waits for a
//! busy one: it holds nothing else); when no stripe can take it, the
//! rollback releases what it locked before the SQL path waits for the
//! stripes and the row in that order; that debit then refills the stripes.

use crate::accounts::row::Account;
use crate::clock;
use crate::metering::fast_path::{count_charge, write_entry, Charge, DebitTables, LockedAccount};
use crate::pg::decimal::Decimal;
use crate::pg::fmgr::{args, ret, text_bytes, v1_functions};
use crate::pg::rows::{Found, Lock, Row, Schema, Table, Writes};
use crate::pg::sqlstate::export_keeping_sqlstate;
use crate::schema::catalog_cache;
use pgrx::pg_sys::{self, Datum};
use pgrx::prelude::*;
use std::ptr;

v1_functions!(pg_finfo_credits_stripes_refill);

/// A stripe's row.
struct Stripe {
    day: i32,
    month: i32,
    budget: Decimal,
    spent: Decimal,
    last_at: i64,
}

impl Stripe {
    unsafe fn read(table: &Table, row: &Found) -> Option<Stripe> {
        let get = |name| row.get(table.col(name)?);
        Some(Stripe {
            day: get(c"day")?.value() as i32,
            month: get(c"month")?.value() as i32,
            budget: Decimal::from_datum(get(c"budget")?)?,
            spent: Decimal::from_datum(get(c"spent")?)?,
            last_at: get(c"last_at")?.value() as i64,
        })
    }

    /// The instant a debit at `now` (the account's time) decides at on this
    /// stripe, if its budget counts then and has `amount` left.
    fn takes(&self, now: i64, amount: Decimal) -> Option<i64> {
        let now = now.max(self.last_at);
        let today = clock::utc_day(now);
        let left = self.budget.sub(self.spent)?;
        (self.day == today && self.month == clock::utc_month_start(today) && left >= amount)
            .then_some(now)
    }
}

/// A debit of the striped account `seen` (as the statement's snapshot sees
/// it) from one of its stripes: its entry id, or None when none can take it
/// (then nothing is written and nothing stays locked).
pub(super) unsafe fn spend(
    schema: &Schema,
    seen: &Account,
    account_id: Datum,
    charge: &Charge,
    now_ts: i64,
) -> Option<i64> {
    // (on Citus the caller checked this node's ids follow the account's:
    // striped_counters, LockedAccount::locked)
    if seen.stripes <= 0 {
        return None;
    }
    let (context, owner) = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
    pg_sys::BeginInternalSubTransaction(ptr::null());
    pg_sys::MemoryContextSwitchTo(context);
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        spend_in_subtransaction(schema, seen, account_id, charge, now_ts)
    }));
    let end = |commit: bool| {
        pg_sys::MemoryContextSwitchTo(context);
        if commit {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    };
    let entry = match attempt {
        Ok(entry) => {
            end(entry.is_some());
            entry
        }
        // An error (a ledger trigger's, a cancel) ends the subtransaction
        // here, as PL/pgSQL's exception blocks do, before it reaches the
        // caller, whose own subtransaction may be the one to roll back.
        Err(error) => {
            end(false);
            std::panic::resume_unwind(error)
        }
    };
    if entry.is_some() {
        count_charge(seen.plan, charge);
        // What later statements (and calls in this statement) must see.
        pg_sys::CommandCounterIncrement();
    }
    entry
}

/// spend(), inside its subtransaction: everything it opens is closed again
/// before the subtransaction ends.
unsafe fn spend_in_subtransaction(
    schema: &Schema,
    seen: &Account,
    account_id: Datum,
    charge: &Charge,
    now_ts: i64,
) -> Option<i64> {
    let (stripes_oid, stripes_key) = schema.stripes?;
    let stripes = Table::open(stripes_oid, pg_sys::RowExclusiveLock);
    let tables = DebitTables::open(schema, &stripes, charge.has_key(), false)?;
    let now = seen.now(now_ts);
    let n = seen.stripes;
    // Sessions start at different stripes, and take the first free one
    // that looks able to take the debit (a stripe locked and then not used
    // would stay locked, and idle, to the end); when every such stripe is
    // busy, they wait for the first. None able: the SQL path refills them.
    // A transaction that debited this account from a stripe before starts
    // at that one, which it holds, and waits for no other: holding one and
    // waiting for another is how two such transactions would deadlock.
    let held = HELD.with(|held| {
        held.borrow().as_ref().and_then(|(xid, account, number)| {
            (*xid == pg_sys::GetTopTransactionIdIfAny()
                && account.as_slice() == text_bytes(account_id))
            .then_some(*number)
        })
    });
    let start = held.unwrap_or((pg_sys::MyProcPid as i64).rem_euclid(n as i64) as i16) % n;
    let mut first_busy = None;
    let mut locked = None;
    for k in 0..n {
        let number = (start + k) % n;
        let Some(found) = stripes.lookup_numbered(stripes_key, account_id, number) else {
            continue;
        };
        if Stripe::read(&stripes, &found)?
            .takes(now, charge.amount)
            .is_none()
        {
            continue;
        }
        match stripes.try_lock_seen(&found) {
            Lock::Locked(row) => {
                locked = Some((row, number));
                break;
            }
            Lock::Busy => {
                first_busy.get_or_insert((found, number));
            }
            Lock::Gone => {}
        }
    }
    let (row, number) = match (locked, first_busy) {
        (Some(row), _) => row,
        (None, Some(busy)) if held.is_none() => (stripes.lock_found(busy.0)?, busy.1),
        _ => return None,
    };
    let stripe = Stripe::read(&stripes, &row)?;
    // (spent by a debit that committed since the snapshot, or while we waited)
    let at = stripe.takes(now, charge.amount)?;
    let mut spent = Row::copy_of(&stripes, row.slot);
    spent.set(
        stripes.col(c"spent")?,
        Some(stripe.spent.add(charge.amount)?.to_datum()),
    );
    spent.set(stripes.col(c"last_at")?, Some(Datum::from(at)));
    let spent = spent.complete()?;
    let mut writes = Writes::begin(&tables.list());
    let entry = write_entry(
        schema,
        &tables,
        &mut writes,
        account_id,
        Datum::from(at),
        charge,
        |_| {},
    );
    if entry.is_some() {
        writes.update(&stripes, row.slot, spent);
    }
    writes.finish();
    if entry.is_some() {
        let account = text_bytes(account_id).to_vec();
        let xid = pg_sys::GetTopTransactionIdIfAny();
        HELD.with(|held| *held.borrow_mut() = Some((xid, account, number)));
    }
    entry
}

thread_local! {
    /// The stripe this backend's transaction last debited: (its top-level
    /// transaction id, the account id's bytes, the stripe's number).
    static HELD: std::cell::RefCell<Option<(pg_sys::TransactionId, Vec<u8>, i16)>> =
        const { std::cell::RefCell::new(None) };
}

export_keeping_sqlstate!(credits_stripes_refill => stripes_refill);
/// `credits_internal._stripes_refill(account_id text, now timestamptz)
/// RETURNS numeric`: hands the stripes of a striped account, locked and
/// folded by the caller (credits_internal._lock_account), equal budgets
/// that together make half of what the account can spend before any event;
/// what it handed out (0 for an account without stripes, or with ended
/// windows still to close).
#[pg_guard]
unsafe extern "C-unwind" fn stripes_refill(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    let a = args(fcinfo);
    let handed = match (a[0], a[1]) {
        (Some(account_id), Some(now)) => refill(account_id, now.value() as i64),
        _ => None,
    };
    ret(fcinfo, Some(handed.unwrap_or(Decimal::ZERO).to_datum()))
}

unsafe fn refill(account_id: Datum, now_ts: i64) -> Option<Decimal> {
    if now_ts == i64::MIN || now_ts == i64::MAX || !pg_sys::ActiveSnapshotSet() {
        return None;
    }
    let schema = catalog_cache::shards_of(account_id)?;
    let (stripes_oid, stripes_key) = schema.stripes?;
    let accounts = Table::open(schema.accounts, pg_sys::RowExclusiveLock);
    let seen = accounts.lookup(schema.accounts_key, account_id)?;
    // (every SQL-path debit asks: most accounts have no stripes)
    if !Account::row_striped(&accounts, &seen) {
        return None;
    }
    // (the caller holds the row: this lock does not wait)
    let locked = accounts.lock_found(seen)?;
    let mut account = LockedAccount::locked(&schema, &accounts, locked, account_id, now_ts)?;
    if account.closing.is_some() || account.stripes() <= 0 {
        return None;
    }
    let stripes = Table::open(stripes_oid, pg_sys::RowExclusiveLock);
    // The stripes (held by the caller; one that is not is left out rather
    // than waited for while the account row is held).
    let mut rows = Vec::new();
    for number in 0..account.stripes() {
        if let Some(found) = stripes.lookup_numbered(stripes_key, account_id, number) {
            if let Lock::Locked(row) = stripes.try_lock_seen(&found) {
                let stripe = Stripe::read(&stripes, &row)?;
                // (folded: nothing handed out is still there)
                if stripe.budget != Decimal::ZERO {
                    return None;
                }
                rows.push(row);
            }
        }
    }
    if rows.is_empty() {
        return None;
    }
    // What it can spend before any event: the largest amount fits() takes,
    // to the ten-thousandth (fits() is monotonic in the amount).
    let (mut low, mut high) = (0i64, account.monthly_limit().ten_thousandths()?.max(0));
    account.fits(Decimal::ZERO)?;
    while low < high {
        let middle = low + (high - low + 1) / 2;
        if account
            .fits(Decimal::from_ten_thousandths(middle))
            .is_some()
        {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    let mut each = low / (2 * rows.len() as i64);
    // (whole credits, when there are any: budgets a person can read)
    if each >= 10_000 {
        each -= each % 10_000;
    }
    if each <= 0 {
        return None;
    }
    let handed = Decimal::from_ten_thousandths(each * rows.len() as i64).trim_scale();
    let totals = account.fits(handed)?;
    let (today, this_month) = account.window_days();
    if accounts.has_statement_triggers() || stripes.has_statement_triggers() {
        return None;
    }
    let mut writes = Writes::begin(&[&accounts, &stripes]);
    for row in &rows {
        let mut budget = Row::copy_of(&stripes, row.slot);
        budget.set(stripes.col(c"day")?, Some(Datum::from(today)));
        budget.set(stripes.col(c"month")?, Some(Datum::from(this_month)));
        budget.set(
            stripes.col(c"budget")?,
            Some(Decimal::from_ten_thousandths(each).trim_scale().to_datum()),
        );
        budget.set(stripes.col(c"spent")?, Some(Decimal::ZERO.to_datum()));
        writes.update(&stripes, row.slot, budget.complete()?);
    }
    account.hand_to_stripes(handed.trim_scale(), totals);
    account.finish(&accounts, &mut writes);
    writes.finish();
    pg_sys::CommandCounterIncrement();
    Some(handed.trim_scale())
}
