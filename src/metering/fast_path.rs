//! `credits.debit`, `credits.try_debit` and `credits.debit_many`, and their
//! fast path below SQL.
//!
//! Every AI request calls `debit`, and executing SQL statements was most of
//! its cost (executor start-up of each statement, not the row work). The
//! fast path does the same row work below SQL (src/pg/rows.rs): an index
//! lookup, a tuple lock, and inserts and an update that keep indexes,
//! constraints and row triggers (the plan foreign key) as statements would.
//!
//! It decides only the common case: the account exists, the charge fits the
//! allowance (no grants) and makes no event due, the key, if any, is new,
//! and the arguments are valid. Windows that ended since the account's last
//! call are closed in the same writes (maintenance/close.rs), unless one
//! had run out (its reset event is the SQL path's). For anything else it
//! writes nothing and declines, and `credits_internal._debit` (metering.sql) decides:
//! it brings the account up to date and tries the fast path once more, or
//! takes the slow path, which decides every case and raises every error.
//!
//! Exactness is the SQL path's: the account row is locked before anything is
//! decided (at READ COMMITTED the lock follows the row to its newest version,
//! as an UPDATE's re-check would; at REPEATABLE READ or SERIALIZABLE a row
//! changed since the snapshot fails with 40001, as SELECT ... FOR UPDATE
//! does), and every writer of an account's keys holds that lock.
//!
//! A batch (`debit_many`) locks each account once, in key order, decides its
//! rows one after another against the locked row's counters in memory and
//! writes the counters once: a thousand debits of one account are one row
//! update, not a thousand versions of the row.
//!
//! Nothing here depends on the caller's search_path: relations and functions
//! are found by name in schema credits, built-ins are called directly.

use crate::accounts::row::Account;
use crate::clock;
use crate::distributed::shards::ids_follow_history;
use crate::maintenance::close;
use crate::metering::requests::{debit_request, metadata_text};
use crate::metering::stats;
use crate::metering::stripes;
use crate::metering::thresholds::lowest_threshold;
use crate::pg::decimal::Decimal;
use crate::pg::fmgr::{args, array_elements, ret, text_bytes, v1_functions};
use crate::pg::rows::{Found, Row, Schema, Table, Writes};
use crate::pg::sqlstate::{export_keeping_sqlstate, keeping_sqlstate};
use crate::schema::catalog_cache;
use pgrx::pg_sys::{self, Datum};
use pgrx::prelude::*;
use std::ptr;

v1_functions!(
    pg_finfo_credits_debit,
    pg_finfo_credits_try_debit,
    pg_finfo_credits_debit_fast,
    pg_finfo_credits_debit_many_fast
);

/// `credits.debit(account_id, feature, quantity, idempotency_key, metadata)`.
#[no_mangle]
pub unsafe extern "C-unwind" fn credits_debit(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    fast_then_sql(fcinfo, true)
}

/// `credits.try_debit(...)`: as debit, NULL instead of UC001.
#[no_mangle]
pub unsafe extern "C-unwind" fn credits_try_debit(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    fast_then_sql(fcinfo, false)
}

/// The fast path; if it declined, `credits_internal._debit` (metering.sql), which
/// decides every case. Deliberately not guarded: the SQL path's errors
/// (UC001 and the other documented SQLSTATEs) must reach the caller as
/// raised, and pgrx's guard would rewrite a SQLSTATE it does not know to
/// XX000. So they propagate as in C: this frame holds nothing to drop, and
/// everything that can fail in Rust runs inside `decide` (guarded).
#[inline(always)]
unsafe fn fast_then_sql(fcinfo: pg_sys::FunctionCallInfo, raise: bool) -> Datum {
    let mut slow: pg_sys::FunctionCallInfo = ptr::null_mut();
    let entry = keeping_sqlstate(|| decide(fcinfo, raise, &mut slow));
    if slow.is_null() {
        return entry;
    }
    let function = (*(*slow).flinfo).fn_addr.unwrap_unchecked();
    let result = function(slow);
    (*fcinfo).isnull = (*slow).isnull;
    result
}

/// The fast path for a debit or try_debit call; if it declined, `slow` is
/// set to a call of credits_internal._debit with the same arguments.
#[pg_guard]
unsafe extern "C-unwind" fn decide(
    fcinfo: pg_sys::FunctionCallInfo,
    raise: bool,
    slow: *mut pg_sys::FunctionCallInfo,
) -> Datum {
    let a = args(fcinfo);
    let now = crate::clock::now().into_datum();
    if let Some(entry) = debit(&DebitRequest::new(&a), now) {
        return Datum::from(entry);
    }
    let name = pg_sys::lappend(
        pg_sys::lappend(
            ptr::null_mut(),
            pg_sys::makeString(pg_sys::pstrdup(c"credits_internal".as_ptr())).cast(),
        ),
        pg_sys::makeString(pg_sys::pstrdup(c"_debit".as_ptr())).cast(),
    );
    let types = [
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::NUMERICOID,
        pg_sys::TEXTOID,
        pg_sys::JSONBOID,
        pg_sys::BOOLOID,
    ];
    let oid = pg_sys::LookupFuncName(name, types.len() as i32, types.as_ptr(), false);
    let flinfo = pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>()) as *mut pg_sys::FmgrInfo;
    pg_sys::fmgr_info(oid, flinfo);
    let call = pg_sys::palloc0(
        std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
            + std::mem::size_of::<pg_sys::NullableDatum>() * types.len(),
    ) as pg_sys::FunctionCallInfo;
    (*call).flinfo = flinfo;
    (*call).fncollation = (*fcinfo).fncollation;
    (*call).nargs = types.len() as i16;
    let values = a.iter().copied().chain([Some(Datum::from(raise))]);
    for (arg, value) in (*call)
        .args
        .as_mut_slice(types.len())
        .iter_mut()
        .zip(values)
    {
        arg.value = value.unwrap_or(Datum::from(0));
        arg.isnull = value.is_none();
    }
    *slow = call;
    Datum::from(0)
}

export_keeping_sqlstate!(credits_debit_fast => debit_fast);
/// `credits_internal._debit_fast(account_id text, feature text, quantity numeric,
/// key text, metadata jsonb, now timestamptz) RETURNS bigint`: the new 'D'
/// entry's id, or NULL when the SQL path must decide.
#[pg_guard]
unsafe extern "C-unwind" fn debit_fast(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    let a = args(fcinfo);
    ret(fcinfo, debit(&DebitRequest::new(&a), a[5]).map(Datum::from))
}

export_keeping_sqlstate!(credits_debit_many_fast => debit_many_fast);
/// `credits_internal._debit_many_fast(account_ids text[], features text[],
/// quantities numeric[], keys text[], metadata jsonb[], now timestamptz)
/// RETURNS bigint[]`: the debits of a batch (arrays of one length; NULL
/// keys or metadata for none) the fast path takes, each row's new entry id;
/// NULL for a row the SQL path must decide, and for every later row of its
/// account, so that each account's rows are decided in the order given.
#[pg_guard]
unsafe extern "C-unwind" fn debit_many_fast(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    let a = args(fcinfo);
    let column = |i: usize, element| match a[i] {
        Some(array) => array_elements(array, element),
        None => Vec::new(),
    };
    let accounts = column(0, pg_sys::TEXTOID);
    let features = column(1, pg_sys::TEXTOID);
    let quantities = column(2, pg_sys::NUMERICOID);
    let keys = column(3, pg_sys::TEXTOID);
    let metadata = column(4, pg_sys::JSONBOID);
    let at = |v: &Vec<Option<Datum>>, i: usize| v.get(i).copied().flatten();
    let requests = (0..accounts.len())
        .map(|i| DebitRequest {
            account: at(&accounts, i),
            feature: at(&features, i),
            quantity: at(&quantities, i),
            key: at(&keys, i),
            metadata: at(&metadata, i),
        })
        .collect::<Vec<_>>();
    let entries = a[5].map_or_else(
        || vec![None; requests.len()],
        |now| debit_many(&requests, now),
    );
    let mut values = entries
        .iter()
        .map(|e| Datum::from(e.unwrap_or(0)))
        .collect::<Vec<_>>();
    let mut nulls = entries.iter().map(|e| e.is_none()).collect::<Vec<_>>();
    let mut dims = [values.len() as i32];
    let mut lbs = [1];
    let array = pg_sys::construct_md_array(
        values.as_mut_ptr(),
        nulls.as_mut_ptr(),
        1,
        dims.as_mut_ptr(),
        lbs.as_mut_ptr(),
        pg_sys::INT8OID,
        8,
        true,
        pg_sys::TYPALIGN_DOUBLE as std::ffi::c_char,
    );
    Datum::from(array)
}

/// A debit's arguments.
#[derive(Clone, Copy)]
pub(super) struct DebitRequest {
    account: Option<Datum>,
    feature: Option<Datum>,
    quantity: Option<Datum>,
    key: Option<Datum>,
    metadata: Option<Datum>,
}

impl DebitRequest {
    /// From the arguments (account_id, feature, quantity, key, metadata, ...) of a call.
    fn new(args: &[Option<Datum>]) -> DebitRequest {
        DebitRequest {
            account: args[0],
            feature: args[1],
            quantity: args[2],
            key: args[3],
            metadata: args[4],
        }
    }
}

/// One debit at `now`, or None: the SQL path decides.
fn debit(req: &DebitRequest, now: Option<Datum>) -> Option<i64> {
    let now_ts = usable_now(now?)?;
    // SAFETY: called from a SQL function in a transaction; every pointer
    // below comes from PostgreSQL and lives until the end of the call.
    unsafe {
        // (before anything is locked: an invalid request is the SQL path's)
        let charge = Charge::validate(req)?;
        with_own_commands_visible(|| {
            let schema = catalog_cache::shards_of(req.account?)?;
            let charge = charge.priced(&schema)?;
            let accounts = Table::open(schema.accounts, pg_sys::RowExclusiveLock);
            let seen = accounts.lookup(schema.accounts_key, req.account?)?;
            if Account::row_striped(&accounts, &seen) {
                let counters = striped_counters(&schema, &accounts, seen, req.account?, now_ts)?;
                return stripes::spend(&schema, counters.account(), req.account?, &charge, now_ts);
            }
            let mut account =
                LockedAccount::lock_seen(&schema, &accounts, seen, req.account?, now_ts)?;
            let totals = account.fits(charge.amount)?;
            let tables = DebitTables::open(
                &schema,
                &accounts,
                req.key.is_some(),
                account.closing.is_some(),
            )?;
            let mut writes = Writes::begin(&tables.list());
            let entry = account.charge(&schema, &tables, &mut writes, &charge, totals);
            account.finish(&accounts, &mut writes);
            writes.finish();
            drop(account);
            if entry.is_some() {
                // What later statements (and calls in this statement) must see.
                pg_sys::CommandCounterIncrement();
            }
            entry
        })
    }
}

/// The rows of a batch the fast path takes (see credits_debit_many_fast).
fn debit_many(requests: &[DebitRequest], now: Datum) -> Vec<Option<i64>> {
    let mut entries = vec![None; requests.len()];
    let Some(now_ts) = usable_now(now) else {
        return entries;
    };
    // SAFETY: as in debit().
    unsafe {
        // Each account's rows in the order given, accounts in key order (the
        // accounts' collation is "C": bytes), so that batches (and the
        // worker, which also goes in key order) lock them in one order.
        let mut order = (0..requests.len())
            .filter(|&i| requests[i].account.is_some())
            .map(|i| (text_bytes(requests[i].account.unwrap()), i))
            .collect::<Vec<_>>();
        order.sort();
        with_own_commands_visible(|| {
            let schema = catalog_cache::schema()?;
            let accounts = Table::open(schema.accounts, pg_sys::RowExclusiveLock);
            let keys = requests.iter().any(|r| r.key.is_some());
            let tables = DebitTables::open(&schema, &accounts, keys, true)?;
            let mut writes = Writes::begin(&tables.list());
            let mut charged = false;
            for group in order.chunk_by(|x, y| x.0 == y.0) {
                let account_id = requests[group[0].1].account?;
                let Some(seen) = accounts.lookup(schema.accounts_key, account_id) else {
                    continue;
                };
                if Account::row_striped(&accounts, &seen) {
                    // (each row from a stripe, in its own subtransaction)
                    let Some(counters) =
                        striped_counters(&schema, &accounts, seen, account_id, now_ts)
                    else {
                        continue;
                    };
                    for &(_, i) in group {
                        let spent = Charge::validate(&requests[i])
                            .and_then(|charge| charge.priced(&schema))
                            .and_then(|charge| {
                                stripes::spend(
                                    &schema,
                                    counters.account(),
                                    account_id,
                                    &charge,
                                    now_ts,
                                )
                            });
                        let Some(entry) = spent else {
                            break;
                        };
                        entries[i] = Some(entry);
                    }
                    continue;
                }
                let Some(mut account) =
                    LockedAccount::lock_seen(&schema, &accounts, seen, account_id, now_ts)
                else {
                    continue;
                };
                for &(_, i) in group {
                    let Some(entry) =
                        debit_one(&schema, &tables, &mut writes, &mut account, &requests[i])
                    else {
                        break;
                    };
                    entries[i] = Some(entry);
                    charged = true;
                    writes.next_row();
                }
                account.finish(&accounts, &mut writes);
            }
            writes.finish();
            if charged {
                pg_sys::CommandCounterIncrement();
            }
            Some(())
        });
    }
    entries
}

/// A striped account as a lookup found it (`seen`), if its stripes may be
/// spent from: its counters, budgets included, must still sit below every
/// event as the plan, the thresholds and its alert are now (they were when
/// the budgets were handed out); a plan made smaller since is the SQL
/// path's, which folds them back.
unsafe fn striped_counters(
    schema: &Schema,
    accounts: &Table,
    seen: Found,
    account_id: Datum,
    now_ts: i64,
) -> Option<LockedAccount> {
    let counters = LockedAccount::locked(schema, accounts, seen, account_id, now_ts)?;
    (counters.closing.is_none() && counters.fits(Decimal::ZERO).is_some()).then_some(counters)
}

/// One row of a batch on its locked account, or None: it and the account's
/// later rows are the SQL path's.
unsafe fn debit_one(
    schema: &Schema,
    tables: &DebitTables,
    writes: &mut Writes,
    account: &mut LockedAccount,
    req: &DebitRequest,
) -> Option<i64> {
    let charge = Charge::validate(req)?.priced(schema)?;
    let totals = account.fits(charge.amount)?;
    account.charge(schema, tables, writes, &charge, totals)
}

/// `now` as microseconds, unless infinite: an infinite clock has no UTC
/// day, which the SQL path reports.
fn usable_now(now: Datum) -> Option<i64> {
    let now_ts = now.value() as i64;
    (now_ts != i64::MIN && now_ts != i64::MAX).then_some(now_ts)
}

/// Runs `f` with a snapshot that sees this transaction's own commands, or
/// returns None where the SQL path decides.
///
/// Every lookup reads the calling statement's snapshot; without one (no
/// caller known to do that), the SQL path takes its own. On a standby the
/// SQL path's first write reports 25006, as PostgreSQL's own writes do.
/// Calls in one statement (SELECT credits.debit(...) FROM usage_rows) share
/// its snapshot, which does not see the account row an earlier call of the
/// statement updated (locking that version would fail, sending every call
/// after the first to the SQL path). As SPI does for a volatile function,
/// they read with a copy that sees this transaction's own commands; only
/// when there are any since.
unsafe fn with_own_commands_visible<T>(f: impl FnOnce() -> Option<T>) -> Option<T> {
    if !pg_sys::ActiveSnapshotSet() || pg_sys::RecoveryInProgress() {
        return None;
    }
    let own_commands = pg_sys::GetCurrentCommandId(false) > (*pg_sys::GetActiveSnapshot()).curcid;
    if own_commands {
        pg_sys::PushCopiedSnapshot(pg_sys::GetActiveSnapshot());
        pg_sys::UpdateActiveSnapshotCommandId();
    }
    // (popped on every return; an error's abort pops it otherwise)
    let result = f();
    if own_commands {
        pg_sys::PopActiveSnapshot();
    }
    result
}

/// A debit's request, checked as the slow path checks it.
pub(super) struct Charge {
    req: DebitRequest,
    /// The metadata as JSON text (for the key's fingerprint).
    metadata_text: Option<Datum>,
    pub feature_id: i16,
    /// cost x quantity: positive, exact to 4 places.
    pub amount: Decimal,
}

struct Unpriced {
    req: DebitRequest,
    metadata_text: Option<Datum>,
}

impl Charge {
    pub(super) fn has_key(&self) -> bool {
        self.req.key.is_some()
    }

    /// A key of a bad length or bad metadata is the slow path's to report.
    unsafe fn validate(req: &DebitRequest) -> Option<Unpriced> {
        req.account?;
        if let Some(key) = req.key {
            let length = pg_sys::toast_raw_datum_size(key) - pg_sys::VARHDRSZ;
            if !(1..=255).contains(&length) {
                return None;
            }
        }
        Some(Unpriced {
            req: *req,
            metadata_text: metadata_text(req.metadata)?,
        })
    }
}

impl Unpriced {
    /// The feature and the amount: cost x quantity, positive, below 10^15,
    /// exact to 4 places (as the slow path validates it).
    unsafe fn priced(self, schema: &Schema) -> Option<Charge> {
        let (feature_id, cost) = catalog_cache::feature(schema, self.req.feature?)?;
        let quantity = Decimal::from_datum(self.req.quantity?)?;
        if quantity <= Decimal::ZERO || quantity >= Decimal::from_i64(1_000_000_000_000_000) {
            return None;
        }
        let product = Decimal::from_datum(cost)?.mul(quantity)?;
        if !product.is_exact_to(4) {
            return None;
        }
        Some(Charge {
            req: self.req,
            metadata_text: self.metadata_text,
            feature_id,
            amount: product.trim_scale(),
        })
    }
}

/// The tables a debit writes, open, and checked to be writable below SQL.
pub(super) struct DebitTables<'a> {
    /// The table whose row holds the counters the debit moves: the
    /// account's, or a stripe's (stripes.rs).
    pub counters: &'a Table,
    pub ledger: Table,
    idempotency: Option<Table>,
    closed_windows: Option<Table>,
}

impl<'a> DebitTables<'a> {
    /// With the idempotency keys if `keys`, the closed windows if `closing`.
    /// None if a table has a statement-level trigger (an audit trigger
    /// with a transition table, one that refuses a statement), which fires
    /// only for a statement: such a table is written by the SQL path.
    pub(super) unsafe fn open(
        schema: &Schema,
        counters: &'a Table,
        keys: bool,
        closing: bool,
    ) -> Option<DebitTables<'a>> {
        let tables = DebitTables {
            counters,
            ledger: Table::open(schema.ledger, pg_sys::RowExclusiveLock),
            idempotency: keys.then(|| Table::open(schema.idempotency, pg_sys::RowExclusiveLock)),
            closed_windows: match closing {
                true => Some(Table::open(
                    schema.closing()?.closed_windows,
                    pg_sys::RowExclusiveLock,
                )),
                false => None,
            },
        };
        (!tables.list().iter().any(|t| t.has_statement_triggers())).then_some(tables)
    }

    pub(super) fn list(&self) -> Vec<&Table> {
        let mut tables = vec![self.counters, &self.ledger];
        tables.extend(&self.idempotency);
        tables.extend(&self.closed_windows);
        tables
    }
}

/// An account locked for debits, which are decided one after another
/// against its counters in memory; finish() writes the counters.
pub(super) struct LockedAccount {
    account_id: Datum,
    locked: Found,
    a: Account,
    /// The instant its debits decide and are stamped at, and its UTC day and month.
    now: Datum,
    today: i32,
    this_month: i32,
    daily_limit: Option<Decimal>,
    monthly_limit: Decimal,
    reserved: Decimal,
    /// Used in today's window and this month's, with the debits so far.
    daily_used: Decimal,
    monthly_used: Decimal,
    /// Its ended windows, closed with its first debit.
    pub closing: Option<close::Closing>,
    charged: bool,
    /// What its stripes hold, when finish() is to set it (stripes.rs).
    pub stripe_budget: Option<Decimal>,
}

impl LockedAccount {
    /// Locks the account a lookup found (`seen`, not striped: callers ask
    /// Account::row_striped first) before anything is decided; None if the
    /// fast path cannot take its debits (striped since the lookup, or a
    /// window to close that had run out, or one of an account with holds).
    unsafe fn lock_seen(
        schema: &Schema,
        accounts: &Table,
        seen: Found,
        account_id: Datum,
        now_ts: i64,
    ) -> Option<LockedAccount> {
        // (A striped account's debits are stripes.rs's, or the SQL path's,
        // which takes its stripes before its row; one striped since the
        // lookup, when set_stripes commits in between, is declined here.)
        let account = LockedAccount::locked(
            schema,
            accounts,
            accounts.lock_found(seen)?,
            account_id,
            now_ts,
        )?;
        (!account.a.striped()).then_some(account)
    }

    /// An account the caller has locked (`locked`, its newest version; or
    /// a row read without a lock, to check what fits() says of it).
    pub(super) unsafe fn locked(
        schema: &Schema,
        accounts: &Table,
        locked: Found,
        account_id: Datum,
        now_ts: i64,
    ) -> Option<LockedAccount> {
        let a = Account::read(accounts, &locked)?;
        if !ids_follow_history(schema, account_id)? {
            return None;
        }
        // A clock behind the account (a transaction that began before a
        // boundary another session already crossed for it, or before its
        // last write) decides and stamps at the account's time.
        let now_ts = a.now(now_ts);
        let today = clock::utc_day(now_ts);
        let this_month = clock::utc_month_start(today);
        let (daily_limit, allowance) = catalog_cache::plan(schema, a.plan)?;

        // Ended windows (the account's first call of a day or month) are
        // closed in the same writes as the debit; one that had run out opens
        // with a reset event, which is the SQL path's to emit.
        // (An account with holds closes its month in SQL: what its holds
        // keep aside is looked up there.)
        let value = |datum| Decimal::from_datum(datum);
        let reserved = value(a.reserved)?;
        let closing = if !close::passed(&a, today, this_month) {
            None
        } else if reserved > Decimal::ZERO {
            return None;
        } else {
            close::closing(
                &a,
                daily_limit,
                allowance,
                Decimal::ZERO.to_datum(),
                today,
                this_month,
            )
        };
        if let Some(closing) = &closing {
            let relations = schema.closing()?;
            let events = Table::open(relations.events, pg_sys::AccessShareLock);
            let mut events_key =
                events.open_scan(relations.events_key, 2, pg_sys::GetActiveSnapshot());
            if !closing
                .resets(&events, &mut events_key, account_id)?
                .is_empty()
            {
                return None;
            }
        }
        Some(LockedAccount {
            account_id,
            now: Datum::from(now_ts),
            today,
            this_month,
            daily_limit: match daily_limit {
                Some(limit) => Some(value(limit)?),
                None => None,
            },
            monthly_limit: value(allowance)?.add(value(a.purchased)?)?,
            reserved,
            // (windows rolled, as credits_internal._in_window)
            daily_used: if a.day == today {
                value(a.daily_used)?
            } else {
                Decimal::ZERO
            },
            monthly_used: if a.month == this_month {
                value(a.monthly_used)?
            } else {
                Decimal::ZERO
            },
            closing,
            charged: false,
            stripe_budget: None,
            locked,
            a,
        })
    }

    /// The (daily, monthly) used after a debit of `amount`, if the fast
    /// path may take it: one that leaves every window short of an event,
    /// the daily window not full, monthly usage below the lowest threshold
    /// (a month used up is an event whatever the thresholds). That also
    /// keeps it within every limit; a debit over a limit, or one that makes
    /// an event due, is the SQL path's, which draws on grants, raises UC001
    /// or emits the event.
    pub(super) unsafe fn fits(&self, amount: Decimal) -> Option<(Decimal, Decimal)> {
        let value = |datum| Decimal::from_datum(datum);
        let new_daily = self.daily_used.add(amount)?;
        let new_monthly = self.monthly_used.add(amount)?;
        let committed = new_monthly.add(self.reserved)?;
        if let Some(limit) = self.daily_limit {
            if new_daily.add(self.reserved)? >= limit {
                return None;
            }
        }
        // (A threshold this arithmetic cannot hold is the SQL path's too.)
        let hundred = Decimal::from_i64(100);
        let lowest = match lowest_threshold() {
            Some(threshold) => value(threshold.into_datum()?)?.min(hundred),
            None => hundred,
        };
        if committed.mul(hundred)? >= self.monthly_limit.mul(lowest)? {
            return None;
        }
        // Nor one that brings what is available to the account's own alert
        // (credits.set_alert: r credits or p % of the monthly limit), judged
        // on the allowance alone, which grants only add to: left <= r is
        // used + r >= limit, and left * 100 <= limit * p is
        // used * 100 + limit * p >= limit * 100, for each window.
        let a = &self.a;
        if a.alert_remaining.is_some() || a.alert_percent.is_some() {
            let daily = match self.daily_limit {
                Some(limit) => Some((new_daily.add(self.reserved)?, limit)),
                None => None,
            };
            for (used, limit) in std::iter::once((committed, self.monthly_limit)).chain(daily) {
                if let Some(r) = a.alert_remaining {
                    if used.add(value(r)?)? >= limit {
                        return None;
                    }
                }
                if let Some(p) = a.alert_percent {
                    if used.mul(hundred)?.add(self.monthly_limit.mul(value(p)?)?)?
                        >= limit.mul(hundred)?
                    {
                        return None;
                    }
                }
            }
        }
        Some((new_daily, new_monthly))
    }

    /// Writes a debit that fits() accepted (`totals`: its result): the key,
    /// the closed windows with the account's first debit, the ledger entry
    /// (after the closing's 'F' entries, as it is later). Its entry id, or
    /// None, nothing written, when its key is already used (by this
    /// transaction, or by a twin that held the account lock before us and
    /// committed): a replay or UC005, the SQL path's.
    unsafe fn charge(
        &mut self,
        schema: &Schema,
        tables: &DebitTables,
        writes: &mut Writes,
        charge: &Charge,
        totals: (Decimal, Decimal),
    ) -> Option<i64> {
        let closing = match (&self.closing, &tables.closed_windows) {
            (Some(closing), Some(closed)) => Some(closing.prepare(
                schema,
                closed,
                &tables.ledger,
                self.account_id,
                self.a.plan,
            )?),
            _ => None,
        };
        let entry = write_entry(
            schema,
            tables,
            writes,
            self.account_id,
            self.now,
            charge,
            |writes| {
                if let (Some(prepared), Some(closed)) = (closing, &tables.closed_windows) {
                    prepared.write(writes, closed, &tables.ledger);
                }
            },
        )?;
        self.closing = None;
        (self.daily_used, self.monthly_used) = totals;
        self.charged = true;
        count_charge(self.a.plan, charge);
        Some(entry)
    }

    /// Sets the counters the next finish() writes: after a refill of the
    /// stripes (stripes.rs), `totals` from fits(`budget`).
    pub(super) fn hand_to_stripes(&mut self, budget: Decimal, totals: (Decimal, Decimal)) {
        (self.daily_used, self.monthly_used) = totals;
        self.stripe_budget = Some(budget);
        self.charged = true;
    }

    /// Its row.
    pub(super) fn account(&self) -> &Account {
        &self.a
    }

    /// Its stripes' number.
    pub(super) fn stripes(&self) -> i16 {
        self.a.stripes
    }

    /// The UTC day and month it decides in.
    pub(super) fn window_days(&self) -> (i32, i32) {
        (self.today, self.this_month)
    }

    pub(super) fn monthly_limit(&self) -> Decimal {
        self.monthly_limit
    }

    /// Writes the account's counters, if it was charged.
    pub(super) unsafe fn finish(&self, accounts: &Table, writes: &mut Writes) {
        if !self.charged {
            return;
        }
        let column = |name| accounts.col(name).expect("a column Account::read found");
        let mut row = Row::copy_of(accounts, self.locked.slot);
        row.set(column(c"day"), Some(Datum::from(self.today)));
        row.set(column(c"daily_used"), Some(self.daily_used.to_datum()));
        row.set(column(c"month"), Some(Datum::from(self.this_month)));
        row.set(column(c"monthly_used"), Some(self.monthly_used.to_datum()));
        row.set(column(c"last_at"), Some(self.now));
        if self.a.month != self.this_month {
            row.set(column(c"monthly_epoch"), Some(Datum::from(0i64)));
        }
        if let Some(budget) = self.stripe_budget {
            row.set(column(c"stripe_budget"), Some(budget.to_datum()));
        }
        let slot = row.complete().expect("a copy of the row has every column");
        writes.update(accounts, self.locked.slot, slot);
    }
}

/// Writes a debit's ledger entry at `now`, its key first: None, nothing
/// written, when the key is already used (by this transaction, or by a twin
/// that held the lock before us and committed): a replay or UC005, the SQL
/// path's. `between` writes what comes after the key and before the entry
/// (the closed windows' 'F' entries, which are earlier). Its entry id.
pub(super) unsafe fn write_entry(
    schema: &Schema,
    tables: &DebitTables,
    writes: &mut Writes,
    account_id: Datum,
    now: Datum,
    charge: &Charge,
    between: impl FnOnce(&mut Writes),
) -> Option<i64> {
    let ledger = &tables.ledger;
    let req = &charge.req;
    let entry = schema.next_entry_id();
    let mut ledger_row = Row::new(ledger);
    ledger_row.set(ledger.col(c"entry_id")?, Some(entry));
    ledger_row.set(ledger.col(c"account_id")?, Some(account_id));
    ledger_row.set(ledger.col(c"at")?, Some(now));
    ledger_row.set(ledger.col(c"kind")?, Some(Datum::from(b'D' as i8)));
    ledger_row.set(
        ledger.col(c"feature_id")?,
        Some(Datum::from(charge.feature_id)),
    );
    ledger_row.set(ledger.col(c"amount")?, Some(charge.amount.to_datum()));
    ledger_row.set(ledger.col(c"from_grants")?, None);
    ledger_row.set(ledger.col(c"ref")?, None);
    ledger_row.set(ledger.col(c"metadata")?, req.metadata);
    let ledger_slot = ledger_row.complete()?;

    if let (Some(key), Some(table)) = (req.key, &tables.idempotency) {
        let mut row = Row::new(table);
        row.set(table.col(c"account_id")?, Some(account_id));
        row.set(table.col(c"idempotency_key")?, Some(key));
        row.set(table.col(c"entry_id")?, Some(entry));
        let request = debit_request(req.feature, req.quantity, charge.metadata_text);
        row.set(table.col(c"request")?, Some(request));
        let slot = row.complete()?;
        if !writes.insert_unless_exists(table, slot) {
            return None;
        }
    }
    between(writes);
    writes.insert(ledger, ledger_slot);
    Some(entry.value() as i64)
}

/// Counts a charge of an account on `plan` (credits.stats).
pub(super) unsafe fn count_charge(plan: Datum, charge: &Charge) {
    stats::count(
        stats::Kind::Charge,
        pgrx::varlena::text_to_rust_str_unchecked(plan.cast_mut_ptr()).as_bytes(),
        charge.feature_id,
    );
}
