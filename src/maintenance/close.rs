//! Closing an account's ended windows (SPEC rule 3): a `closed_windows` row
//! for each window that ended — the daily window if something was used in
//! it, every monthly window up to the month of `at`, each once and in order
//! — an 'F' ledger entry for the allowance a monthly window forfeits, the
//! counters moved to the windows of `at`, and a reset event for a window
//! that had run out.
//!
//! One copy, two callers: `credits_internal._close_windows(accounts, at)` below (a
//! maintenance batch, or one account in `_lock_account`), and the debit fast
//! path, which writes an account's closing in the same writes as its debit.
//! Both hold the account's row lock, which every writer of its windows,
//! events and counters takes first.

use crate::accounts::row::Account;
use crate::clock;
use crate::distributed::shards::{follow_history, nested_statements};
use crate::pg::fmgr::{
    args, call, ret, text, text_array, text_bytes, text_string, v1_functions, SessionDatums,
};
use crate::pg::numeric;
use crate::pg::rows::{Found, IndexScan, Lock, Row, Schema, Table, Writes};
use crate::pg::sqlstate::export_keeping_sqlstate;
use crate::schema::catalog_cache;
use pgrx::datum::{DatumWithOid, TimestampWithTimeZone};
use pgrx::pg_sys::{self, Datum};
use pgrx::prelude::*;

/// An ended window, as its closed_windows row records it.
struct Window {
    monthly: bool,
    start: i32,
    limit: Option<Datum>,
    used: Datum,
    forfeited: Option<Datum>,
    /// Monthly: the allowance open holds placed in it still hold (kept aside, not forfeited).
    held: Datum,
    closes_at: i64,
    /// The ledger entry that restarted the month (an upgrade), 0 = none.
    epoch: i64,
}

impl Window {
    fn kind(&self) -> &'static str {
        if self.monthly {
            "monthly"
        } else {
            "daily"
        }
    }

    /// Its name in events (credits_internal._window_key). Made only when an event is
    /// found: most accounts have none.
    fn key(&self) -> String {
        if !self.monthly {
            let (y, m, d) = clock::ymd(self.start);
            return format!("{y:04}-{m:02}-{d:02}");
        }
        match self.epoch {
            0 => month_text(self.start),
            epoch => format!("{}#{epoch}", month_text(self.start)),
        }
    }
}

/// The windows of an account that end before `today` / `this_month`.
pub(crate) struct Closing {
    windows: Vec<Window>,
}

/// Has a window of `a` ended, with something to record (credits_internal._windows_passed)?
pub(crate) unsafe fn passed(a: &Account, today: i32, this_month: i32) -> bool {
    day_ended(a, today) || a.month < this_month
}

/// Has `a`'s day ended with something used in it? (A daily window with
/// nothing used has nothing to close.)
unsafe fn day_ended(a: &Account, today: i32) -> bool {
    a.day < today && numeric::cmp(a.daily_used, numeric::from_i64(0)) > 0
}

/// What closing `a`'s ended windows records, given its plan's daily limit
/// and monthly allowance, and what its open holds placed in its month hold
/// on the allowance (`held`: SPEC §4.3, kept aside until they resolve, not
/// forfeited); None if no window ended.
pub(crate) unsafe fn closing(
    a: &Account,
    daily_limit: Option<Datum>,
    allowance: Datum,
    held: Datum,
    today: i32,
    this_month: i32,
) -> Option<Closing> {
    let mut windows = Vec::new();
    if day_ended(a, today) {
        windows.push(Window {
            monthly: false,
            start: a.day,
            limit: daily_limit,
            used: a.daily_used,
            forfeited: None,
            held: numeric::from_i64(0),
            closes_at: clock::day_start(a.day + 1),
            epoch: 0,
        });
    }
    // Every month from the account's to the one before `this_month`: months
    // nobody called in are recorded too, with nothing used. (The common
    // debit's month has not ended: nothing to compute.)
    if a.month < this_month {
        let zero = numeric::from_i64(0);
        let limit = numeric::add(allowance, a.purchased);
        let mut month = a.month;
        while month < this_month {
            let (used, held) = if month == a.month {
                (a.monthly_used, held)
            } else {
                (zero, zero)
            };
            let left = numeric::sub(numeric::sub(limit, used), held);
            let next = clock::next_month(month);
            windows.push(Window {
                monthly: true,
                start: month,
                limit: Some(limit),
                used,
                forfeited: Some(if numeric::cmp(left, zero) > 0 {
                    left
                } else {
                    zero
                }),
                held,
                closes_at: clock::day_start(next),
                epoch: if month == a.month { a.monthly_epoch } else { 0 },
            });
            month = next;
        }
    }
    (!windows.is_empty()).then_some(Closing { windows })
}

/// 'YYYY-MM' of a month (to_char(month, 'YYYY-MM')).
fn month_text(month: i32) -> String {
    let (y, m, _) = clock::ymd(month);
    format!("{y:04}-{m:02}")
}

/// The 'F' entry's metadata for the end of `month`, a jsonb datum:
/// {"reason": "month_end", "month": "YYYY-MM"}, made once per month (a
/// batch writes the same for every account).
unsafe fn month_end_metadata(month: i32) -> Datum {
    thread_local! {
        static MADE: SessionDatums<i32> = const { SessionDatums::new() };
    }
    MADE.with(|made| {
        made.get(month, || {
            let json = format!(
                "{{\"reason\": \"month_end\", \"month\": \"{}\"}}\0",
                month_text(month)
            );
            call(pg_sys::jsonb_in, &[Datum::from(json.as_ptr())])
        })
    })
}

impl Closing {
    /// The closing windows that had run out (an 'exhausted' event): each
    /// opens again with a reset event, as (window kind, instant). `scan` is
    /// of the events' unique key (`ClosingSchema::events_key`). Read as last
    /// committed: the caller holds the account lock, so every writer of its
    /// events has finished, even one this snapshot predates.
    pub(crate) unsafe fn resets(
        &self,
        events: &Table,
        scan: &mut IndexScan,
        account_id: Datum,
    ) -> Option<Vec<(&'static str, i64)>> {
        let (kind_col, key_col) = (events.col(c"window_kind")?, events.col(c"window_key")?);
        let mut resets = Vec::new();
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        scan.rescan_equal(&[account_id, text("exhausted")], snapshot);
        while scan.next() {
            if let (Some(kind), Some(key)) = (scan.row.get(kind_col), scan.row.get(key_col)) {
                let (kind, key) = (text_bytes(kind), text_bytes(key));
                resets.extend(
                    self.windows
                        .iter()
                        .filter(|w| w.kind().as_bytes() == kind && w.key().as_bytes() == key)
                        .map(|w| (w.kind(), w.closes_at)),
                );
            }
        }
        pg_sys::UnregisterSnapshot(snapshot);
        Some(resets)
    }

    /// The rows to write, with the 'F' entries' ids taken now (before the
    /// id of anything the caller writes after them). None if a table has a
    /// column this code does not know.
    pub(crate) unsafe fn prepare(
        &self,
        schema: &Schema,
        closed: &Table,
        ledger: &Table,
        account_id: Datum,
        plan: Datum,
    ) -> Option<Prepared> {
        let mut rows = Vec::with_capacity(self.windows.len());
        for w in &self.windows {
            let mut row = Row::new(closed);
            row.set(closed.col(c"account_id")?, Some(account_id));
            row.set(closed.col(c"window_kind")?, Some(text(w.kind())));
            row.set(closed.col(c"window_start")?, Some(Datum::from(w.start)));
            row.set(closed.col(c"plan")?, Some(plan));
            row.set(closed.col(c"window_limit")?, w.limit);
            row.set(closed.col(c"used")?, Some(w.used));
            row.set(closed.col(c"forfeited")?, w.forfeited);
            row.set(closed.col(c"closed_at")?, Some(Datum::from(w.closes_at)));
            row.set(closed.col(c"held")?, Some(w.held));
            row.complete()?;
            let forfeit = match w.forfeited {
                Some(amount) if numeric::cmp(amount, numeric::from_i64(0)) > 0 => {
                    let entry = schema.next_entry_id();
                    let metadata = month_end_metadata(w.start);
                    let mut f = Row::new(ledger);
                    f.set(ledger.col(c"entry_id")?, Some(entry));
                    f.set(ledger.col(c"account_id")?, Some(account_id));
                    f.set(ledger.col(c"at")?, Some(Datum::from(w.closes_at)));
                    f.set(ledger.col(c"kind")?, Some(Datum::from(b'F' as i8)));
                    f.set(ledger.col(c"feature_id")?, None);
                    f.set(ledger.col(c"amount")?, Some(amount));
                    f.set(ledger.col(c"from_grants")?, None);
                    f.set(ledger.col(c"ref")?, None);
                    f.set(ledger.col(c"metadata")?, Some(metadata));
                    f.complete()?;
                    Some(f)
                }
                _ => None,
            };
            rows.push((row, forfeit));
        }
        Some(Prepared { rows })
    }
}

/// A closing's rows, ready to write.
pub(crate) struct Prepared {
    rows: Vec<(Row, Option<Row>)>,
}

impl Prepared {
    /// Writes them: a window already recorded (closed_windows' key) is
    /// skipped with its 'F' entry, as INSERT ... ON CONFLICT DO NOTHING
    /// would. Returns the windows recorded.
    pub(crate) unsafe fn write(&self, writes: &mut Writes, closed: &Table, ledger: &Table) -> i32 {
        let mut recorded = 0;
        for (row, forfeit) in &self.rows {
            if writes.insert_unless_exists(closed, row.slot()) {
                recorded += 1;
                if let Some(f) = forfeit {
                    writes.insert(ledger, f.slot());
                }
            }
        }
        recorded
    }
}

v1_functions!(
    pg_finfo_credits_close_windows,
    pg_finfo_credits_close_windows_after
);

export_keeping_sqlstate!(credits_close_windows => close_windows);
/// `credits_internal._close_windows(accounts text[], at timestamptz) RETURNS integer`:
/// closes the ended windows of the given accounts (each locked by the
/// caller, in key order) and returns the windows recorded.
#[pg_guard]
unsafe extern "C-unwind" fn close_windows(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    let a = args(fcinfo);
    let (Some(ids), Some(at)) = (a[0], a[1]) else {
        return ret(fcinfo, Some(Datum::from(0i32)));
    };
    let ids = text_array(ids).into_iter().flatten().collect::<Vec<_>>();
    // One set of writes for them all; on a Citus cluster one per account,
    // each on its shards.
    let recorded = if catalog_cache::distributed() {
        ids.iter()
            .map(|&id| close_each(at, shards_here(id), &[id]))
            .sum()
    } else {
        close_each(at, whole_schema(), &ids)
    };
    ret(fcinfo, Some(Datum::from(recorded)))
}

export_keeping_sqlstate!(credits_close_windows_after => close_windows_after);
/// `credits_internal._close_windows_after(after text, at timestamptz, accounts integer,
/// OUT last_account text, OUT accounts integer, OUT windows integer)`: a
/// maintenance batch. Closes the ended windows of up to `accounts` accounts
/// that have one, the first after `after` in key order (NULL: from the
/// first), locking each as it comes to it. Returns the last account closed
/// (NULL when none was left), how many, and the windows recorded.
#[pg_guard]
unsafe extern "C-unwind" fn close_windows_after(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    let a = args(fcinfo);
    let (Some(at), Some(limit)) = (a[1], a[2]) else {
        error!("credits_internal._close_windows_after: NULL instant or batch size");
    };
    let limit = limit.value() as i32;
    // Accounts another transaction holds: skipped, never waited for (one
    // transaction open across midnight must not stall every account after
    // it); maintenance comes back to them.
    let mut skipped: Vec<String> = Vec::new();
    let (mut last, mut accounts, mut recorded) = (None, 0, 0);
    if catalog_cache::distributed() {
        // On Citus, this node's own shard groups one after another, the
        // cursor naming the group: "<accounts shard id>/<last account>".
        let cursor = a[0].map(|c| text_string(c));
        let (from_group, after) = match cursor.as_deref().and_then(|c| c.split_once('/')) {
            Some((group, account)) => (group.parse::<i64>().ok(), Some(account.to_string())),
            None => (None, None),
        };
        let groups = catalog_cache::local_shard_groups();
        let first = groups
            .iter()
            .position(|(group, _)| Some(*group) == from_group)
            .unwrap_or(0);
        let mut after = after.filter(|a| !a.is_empty());
        for (group, schema) in groups.into_iter().skip(first) {
            let mut closer = Closer::begin(at, schema);
            let after_key = after.take().map(|a| text(&a));
            let closed_last = closer.batch(after_key, limit - accounts, &mut skipped);
            let (n, windows) = closer.finish();
            (accounts, recorded) = (accounts + n, recorded + windows);
            if let Some(account) = closed_last {
                last = Some(format!("{group}/{account}"));
            }
            if accounts >= limit {
                break;
            }
        }
    } else {
        let mut closer = Closer::begin(at, whole_schema());
        last = closer.batch(a[0], limit, &mut skipped);
        (accounts, recorded) = closer.finish();
    }

    let mut desc = std::ptr::null_mut();
    if pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut desc)
        != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE
    {
        error!("credits_internal._close_windows_after must return a record");
    }
    let desc = pg_sys::BlessTupleDesc(desc);
    let skipped = (!skipped.is_empty())
        .then(|| skipped.into_datum())
        .flatten();
    let mut values = [
        last.as_deref().map(|l| text(l)).unwrap_or(Datum::from(0)),
        Datum::from(accounts),
        Datum::from(recorded),
        skipped.unwrap_or(Datum::from(0)),
    ];
    let mut nulls = [last.is_none(), false, false, skipped.is_none()];
    let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
    pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
}

/// What the holds placed in `a`'s month, still open when it ended, hold on
/// its allowance (none without a reservation: no query then, the common case).
unsafe fn held_on_allowance(a: &Account, account_id: Datum) -> Datum {
    if numeric::cmp(a.reserved, numeric::from_i64(0)) <= 0 {
        return numeric::from_i64(0);
    }
    let held = nested_statements(|| {
        Spi::get_one_with_args::<pgrx::AnyNumeric>(
            "SELECT coalesce(sum(h.amount - h.from_grants), 0)
           FROM credits.accounts a
           JOIN credits.holds h ON h.account_id = a.account_id AND h.month = a.month
          WHERE a.account_id = $1 AND h.resolved_entry IS NULL
            AND h.expires_at > (a.month + interval '1 month')::timestamp AT TIME ZONE 'UTC'",
            &[DatumWithOid::from(text_string(account_id))],
        )
    })
    .expect("the held allowance");
    held.and_then(|h| h.into_datum())
        .unwrap_or_else(|| numeric::from_i64(0))
}

/// Closes the ended windows of `ids` (each locked by the caller) in one set
/// of writes on `schema`; the windows recorded.
unsafe fn close_each(at: Datum, schema: Schema, ids: &[Datum]) -> i32 {
    let mut closer = Closer::begin(at, schema);
    for &id in ids {
        let key = closer.schema.accounts_key;
        // (already locked by the caller: this finds the row it locked)
        closer.close(|accounts| accounts.lock(key, id));
    }
    closer.finish().1
}

/// On a Citus cluster, the shards of an account on this node; an error
/// where they are not (the SQL path calls _close_windows through a query
/// on the account's row, which Citus runs on its node).
#[allow(unreachable_code)] // ereport!(ERROR) does not return
unsafe fn shards_here(id: Datum) -> Schema {
    if let Some(schema) = catalog_cache::shards_of(id) {
        return schema;
    }
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!(
            "credits: the shards of account {:?} are not on this node",
            String::from_utf8_lossy(text_bytes(id))
        ),
        "call credits_internal._close_windows through a query on the account's row"
    );
    unreachable!("ereport(ERROR) does not return")
}

/// The extension's relations on a single node.
unsafe fn whole_schema() -> Schema {
    catalog_cache::schema().unwrap_or_else(|| error!("credits: the credits schema is incomplete"))
}

/// A library older than the schema it runs against.
fn incomplete() -> ! {
    error!("credits: a table has a column this library does not know")
}

/// Closes the windows of accounts one after another, in one set of writes;
/// reset events are emitted at the end, in time order.
struct Closer {
    schema: Schema,
    today: i32,
    this_month: i32,
    accounts: Table,
    ledger: Table,
    closed: Table,
    /// (declared before `events`, so it ends before its table closes)
    events_key: IndexScan,
    events: Table,
    writes: Writes,
    /// Freed after each account: a batch of thousands stays in a few kB.
    per_account: pg_sys::MemoryContext,
    closed_accounts: i32,
    recorded: i32,
    resets: Vec<(i64, String, &'static str)>,
}

impl Closer {
    unsafe fn begin(at: Datum, schema: Schema) -> Closer {
        let at = at.value() as i64;
        if at == i64::MIN || at == i64::MAX {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "invalid instant for closing windows: infinity"
            );
        }
        let Some(closing_schema) = schema.closing() else {
            error!("credits: the credits schema is incomplete");
        };
        if !pg_sys::ActiveSnapshotSet() {
            error!("credits: closing windows needs a snapshot");
        }
        let today = clock::utc_day(at);
        let accounts = Table::open(schema.accounts, pg_sys::RowExclusiveLock);
        let ledger = Table::open(schema.ledger, pg_sys::RowExclusiveLock);
        let closed = Table::open(closing_schema.closed_windows, pg_sys::RowExclusiveLock);
        let events = Table::open(closing_schema.events, pg_sys::AccessShareLock);
        let events_key =
            events.open_scan(closing_schema.events_key, 2, pg_sys::GetActiveSnapshot());
        let writes = Writes::begin(&[&accounts, &ledger, &closed]);
        Closer {
            today,
            this_month: clock::utc_month_start(today),
            per_account: pg_sys::AllocSetContextCreateExtended(
                pg_sys::CurrentMemoryContext,
                c"credits closing".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            ),
            schema,
            accounts,
            ledger,
            closed,
            events_key,
            events,
            writes,
            closed_accounts: 0,
            recorded: 0,
            resets: Vec::new(),
        }
    }

    /// Closes the ended windows of the account `lock` locks (None: gone);
    /// false if it had none.
    unsafe fn close(&mut self, lock: impl FnOnce(&Table) -> Option<Found>) -> bool {
        let caller = pg_sys::MemoryContextSwitchTo(self.per_account);
        let closed = self.close_locked(lock);
        pg_sys::MemoryContextSwitchTo(caller);
        self.writes.next_row();
        pg_sys::MemoryContextReset(self.per_account);
        closed
    }

    unsafe fn close_locked(&mut self, lock: impl FnOnce(&Table) -> Option<Found>) -> bool {
        let Some(locked) = lock(&self.accounts) else {
            return false;
        };
        let (accounts, today, this_month) = (&self.accounts, self.today, self.this_month);
        let account = Account::read(accounts, &locked).unwrap_or_else(|| incomplete());
        // (counters that count a stripe's budget as used are not closed:
        // credits_internal._lock_account folds them first)
        if account.has_stripe_budget() {
            return false;
        }
        let Some((daily_limit, allowance)) = catalog_cache::plan(&self.schema, account.plan) else {
            return false; // (the plan foreign key makes this impossible)
        };
        let id = locked
            .get(accounts.col(c"account_id").unwrap_or_else(|| incomplete()))
            .unwrap_or_else(|| incomplete());
        // (on Citus, this node's ids past the account's last, as every
        // writer of an account first makes them: entries and reset events)
        if self.schema.shard.is_some() {
            follow_history(id);
        }
        let held = if passed(&account, today, this_month) {
            held_on_allowance(&account, id)
        } else {
            numeric::from_i64(0)
        };
        let Some(closing) = closing(&account, daily_limit, allowance, held, today, this_month)
        else {
            return false;
        };
        let resets = closing
            .resets(&self.events, &mut self.events_key, id)
            .unwrap_or_else(|| incomplete());
        self.resets
            .extend(resets.into_iter().map(|(w, at)| (at, text_string(id), w)));
        let prepared = closing
            .prepare(&self.schema, &self.closed, &self.ledger, id, account.plan)
            .unwrap_or_else(|| incomplete());
        self.recorded += prepared.write(&mut self.writes, &self.closed, &self.ledger);

        // The counters, moved to the windows of `at`.
        let col = |name| accounts.col(name).unwrap_or_else(|| incomplete());
        let zero = numeric::from_i64(0);
        let mut rolled = Row::copy_of(accounts, locked.slot);
        if account.day < today {
            rolled.set(col(c"day"), Some(Datum::from(today)));
            rolled.set(col(c"daily_used"), Some(zero));
        }
        if account.month < this_month {
            rolled.set(col(c"month"), Some(Datum::from(this_month)));
            rolled.set(col(c"monthly_used"), Some(zero));
            rolled.set(col(c"monthly_epoch"), Some(Datum::from(0i64)));
        }
        let rolled_slot = rolled.complete().unwrap_or_else(|| incomplete());
        self.writes.update(accounts, locked.slot, rolled_slot);
        self.closed_accounts += 1;
        true
    }

    /// A maintenance batch on this closer's relations: closes the ended
    /// windows of up to `limit` accounts that have one, the first after
    /// `after` in key order, locking each as the scan reaches it (one
    /// another transaction holds goes to `skipped`). Returns the last
    /// account closed.
    unsafe fn batch(
        &mut self,
        after: Option<Datum>,
        limit: i32,
        skipped: &mut Vec<String>,
    ) -> Option<String> {
        let mut last = None;
        let mut scan = self.accounts.scan_after(self.schema.accounts_key, after);
        let id_col = self
            .accounts
            .col(c"account_id")
            .unwrap_or_else(|| incomplete());
        let (today, this_month) = (self.today, self.this_month);
        while self.closed_accounts < limit && scan.next() {
            let row = &scan.row;
            let mut busy = false;
            let closed = self.close(|accounts| {
                // Nothing to close: skipped without a lock. (One a debit
                // closed since this statement began is found so once locked.)
                let seen = Account::read(accounts, row).unwrap_or_else(|| incomplete());
                if !passed(&seen, today, this_month) {
                    return None;
                }
                // Budgets out on its stripes are folded back first, stripes
                // before the row: maintenance comes back to it.
                if seen.has_stripe_budget() {
                    busy = true;
                    return None;
                }
                match accounts.try_lock_seen(row) {
                    Lock::Locked(found) => Some(found),
                    Lock::Busy => {
                        busy = true;
                        None
                    }
                    Lock::Gone => None,
                }
            });
            let id = || text_string(scan.row.get(id_col).unwrap_or_else(|| incomplete()));
            if closed {
                last = Some(id());
            } else if busy {
                skipped.push(id());
            }
        }
        last
    }

    /// Ends the writes and emits the reset events: (accounts, windows) closed.
    unsafe fn finish(self) -> (i32, i32) {
        self.writes.finish();
        pg_sys::CommandCounterIncrement();
        // A window that had run out opens again: a reset event, stamped at
        // the boundary (the events table keeps it to one per window).
        let mut resets = self.resets;
        resets.sort();
        for (at, account_id, window) in resets {
            let at = TimestampWithTimeZone::try_from(at).expect("a finite instant");
            nested_statements(|| {
                Spi::run_with_args(
                    "SELECT credits_internal._emit_reset($1, $2, $3)",
                    &[
                        DatumWithOid::from(account_id),
                        DatumWithOid::from(window),
                        DatumWithOid::from(at),
                    ],
                )
            })
            .expect("a reset event");
        }
        (self.closed_accounts, self.recorded)
    }
}
