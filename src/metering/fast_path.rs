//! `credits.debit` and `credits.try_debit`, and their fast path below SQL.
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
//! Nothing here depends on the caller's search_path: relations and functions
//! are found by name in schema credits, built-ins are called directly.

use crate::accounts::row::Account;
use crate::clock;
use crate::maintenance::close;
use crate::metering::requests::{debit_request, metadata_text};
use crate::metering::stats;
use crate::metering::thresholds::lowest_threshold;
use crate::pg::decimal::Decimal;
use crate::pg::fmgr::{args, call, ret, v1_functions};
use crate::pg::rows::{Row, Table, Writes};
use crate::schema::catalog_cache;
use pgrx::pg_sys::{self, Datum};
use pgrx::prelude::*;
use std::ptr;

v1_functions!(
    pg_finfo_credits_debit,
    pg_finfo_credits_try_debit,
    pg_finfo_credits_debit_fast
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
    let entry = decide(fcinfo, raise, &mut slow);
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
    if let Some(entry) = debit(&DebitRequest::new(&a, now)) {
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

/// `credits_internal._debit_fast(account_id text, feature text, quantity numeric,
/// key text, metadata jsonb, now timestamptz) RETURNS bigint`: the new 'D'
/// entry's id, or NULL when the SQL path must decide.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn credits_debit_fast(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    let a = args(fcinfo);
    ret(fcinfo, debit(&DebitRequest::new(&a, a[5])).map(Datum::from))
}

struct DebitRequest {
    account: Option<Datum>,
    feature: Option<Datum>,
    quantity: Option<Datum>,
    key: Option<Datum>,
    metadata: Option<Datum>,
    now: Option<Datum>,
}

impl DebitRequest {
    /// From the arguments (account_id, feature, quantity, key, metadata, ...) of a call.
    fn new(args: &[Option<Datum>], now: Option<Datum>) -> DebitRequest {
        DebitRequest {
            account: args[0],
            feature: args[1],
            quantity: args[2],
            key: args[3],
            metadata: args[4],
            now,
        }
    }
}

fn debit(req: &DebitRequest) -> Option<i64> {
    let (account_id, feature, quantity, now) =
        (req.account?, req.feature?, req.quantity?, req.now?);
    let now_ts = now.value() as i64;
    // An infinite clock has no UTC day: the SQL path reports it.
    if now_ts == i64::MIN || now_ts == i64::MAX {
        return None;
    }
    // SAFETY: called from a SQL function in a transaction; every pointer
    // below comes from PostgreSQL and lives until the end of the call.
    unsafe {
        // A key of a bad length or bad metadata is the slow path's to report.
        if let Some(key) = req.key {
            let length = pg_sys::toast_raw_datum_size(key) - pg_sys::VARHDRSZ;
            if !(1..=255).contains(&length) {
                return None;
            }
        }
        let metadata_text = metadata_text(req.metadata)?;
        // Every lookup reads the calling statement's snapshot; without one
        // (no caller known to do that), the SQL path takes its own. On a
        // standby the SQL path's first write reports 25006, as PostgreSQL's
        // own writes do.
        if !pg_sys::ActiveSnapshotSet() || pg_sys::RecoveryInProgress() {
            return None;
        }
        // Calls in one statement (SELECT credits.debit(...) FROM usage_rows)
        // share its snapshot, which does not see the account row an earlier
        // call of the statement updated (locking that version would fail,
        // sending every call after the first to the SQL path). As SPI does
        // for a volatile function, read with a copy that sees this
        // transaction's own commands; only when there are any since.
        let own_commands =
            pg_sys::GetCurrentCommandId(false) > (*pg_sys::GetActiveSnapshot()).curcid;
        if own_commands {
            pg_sys::PushCopiedSnapshot(pg_sys::GetActiveSnapshot());
            pg_sys::UpdateActiveSnapshotCommandId();
        }
        // (popped on every return; an error's abort pops it otherwise)
        let entry = debit_at_snapshot(req, account_id, feature, quantity, now_ts, metadata_text);
        if own_commands {
            pg_sys::PopActiveSnapshot();
        }
        entry
    }
}

/// debit(), once its snapshot is set: decide and write.
unsafe fn debit_at_snapshot(
    req: &DebitRequest,
    account_id: Datum,
    feature: Datum,
    quantity: Datum,
    now_ts: i64,
    metadata_text: Option<Datum>,
) -> Option<i64> {
    let schema = catalog_cache::schema()?;

    // The feature and the amount: cost x quantity, positive, below 10^15,
    // exact to 4 places (as the slow path validates it).
    let (feature_id, cost) = catalog_cache::feature(&schema, feature)?;
    let feature_id = Datum::from(feature_id);
    let quantity_value = Decimal::from_datum(quantity)?;
    if quantity_value <= Decimal::ZERO || quantity_value >= Decimal::from_i64(1_000_000_000_000_000)
    {
        return None;
    }
    let product = Decimal::from_datum(cost)?.mul(quantity_value)?;
    if !product.is_exact_to(4) {
        return None;
    }
    let amount = product.trim_scale();

    // The account, locked before anything is decided.
    let accounts = Table::open(schema.accounts, pg_sys::RowExclusiveLock);
    let locked = accounts.lock(schema.accounts_key, account_id)?;
    let a = Account::read(&accounts, &locked)?;
    // A clock behind the account (a transaction that began before a
    // boundary another session already crossed for it, or before its
    // last write) decides and stamps at the account's time.
    let now_ts = a.now(now_ts);
    let now = Datum::from(now_ts);
    let today = clock::utc_day(now_ts);
    let this_month = clock::utc_month_start(today);
    let (daily_limit, allowance) = catalog_cache::plan(&schema, a.plan)?;

    // Ended windows (the account's first call of a day or month) are
    // closed in the same writes as the debit; one that had run out opens
    // with a reset event, which is the SQL path's to emit.
    // (An account with holds closes its month in SQL: what its holds
    // keep aside is looked up there.)
    let closing = if !close::passed(&a, today, this_month) {
        None
    } else if Decimal::from_datum(a.reserved)? > Decimal::ZERO {
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
    let closing = match closing {
        Some(closing) => {
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
            let closed = Table::open(relations.closed_windows, pg_sys::RowExclusiveLock);
            Some((closing, closed))
        }
        None => None,
    };

    let idempotency = req.key.map(|key| {
        (
            Table::open(schema.idempotency, pg_sys::RowExclusiveLock),
            key,
        )
    });

    // Every limit, windows rolled (credits_internal._in_window): the daily limit
    // caps all spending, the allowance is what the fast path draws on.
    let value = |datum| Decimal::from_datum(datum);
    let daily_used = if a.day == today {
        value(a.daily_used)?
    } else {
        Decimal::ZERO
    };
    let monthly_used = if a.month == this_month {
        value(a.monthly_used)?
    } else {
        Decimal::ZERO
    };
    let reserved = value(a.reserved)?;
    let new_daily = daily_used.add(amount)?;
    let new_monthly = monthly_used.add(amount)?;
    let monthly_limit = value(allowance)?.add(value(a.purchased)?)?;
    let committed = new_monthly.add(reserved)?;
    // The fast path takes only a debit that leaves every window short of
    // an event: the daily window not full, monthly usage below the lowest
    // threshold (a month used up is an event whatever the thresholds).
    // That also keeps it within every limit; a debit over a limit, or
    // one that makes an event due, is the SQL path's, which draws on
    // grants, raises UC001 or emits the event.
    if let Some(limit) = daily_limit {
        if new_daily.add(reserved)? >= value(limit)? {
            return None;
        }
    }
    // (A threshold this arithmetic cannot hold is the SQL path's too.)
    let hundred = Decimal::from_i64(100);
    let lowest = match lowest_threshold() {
        Some(threshold) => value(threshold.into_datum()?)?.min(hundred),
        None => hundred,
    };
    if committed.mul(hundred)? >= monthly_limit.mul(lowest)? {
        return None;
    }
    // Nor one that brings what is available to the account's own alert
    // (credits.set_alert: r credits or p % of the monthly limit), judged
    // on the allowance alone, which grants only add to: left <= r is
    // used + r >= limit, and left * 100 <= limit * p is
    // used * 100 + limit * p >= limit * 100, for each window.
    if a.alert_remaining.is_some() || a.alert_percent.is_some() {
        let daily = match daily_limit {
            Some(limit) => Some((new_daily.add(reserved)?, value(limit)?)),
            None => None,
        };
        for (used, limit) in std::iter::once((committed, monthly_limit)).chain(daily) {
            if let Some(r) = a.alert_remaining {
                if used.add(value(r)?)? >= limit {
                    return None;
                }
            }
            if let Some(p) = a.alert_percent {
                if used.mul(hundred)?.add(monthly_limit.mul(value(p)?)?)? >= limit.mul(hundred)? {
                    return None;
                }
            }
        }
    }

    // Write: the key, the closed windows, the account's counters, the
    // ledger entry (after the closing's 'F' entries, as it is later).
    let ledger = Table::open(schema.ledger, pg_sys::RowExclusiveLock);
    // A statement-level trigger (an audit trigger with a transition
    // table, one that refuses a statement) fires only for a statement:
    // a table that has one is written by the SQL path.
    if accounts.has_statement_triggers()
        || ledger.has_statement_triggers()
        || idempotency
            .as_ref()
            .is_some_and(|(table, _)| table.has_statement_triggers())
        || closing
            .as_ref()
            .is_some_and(|(_, table)| table.has_statement_triggers())
    {
        return None;
    }
    let closing = match &closing {
        Some((closing, closed)) => Some((
            closing.prepare(&schema, closed, &ledger, account_id, a.plan)?,
            closed,
        )),
        None => None,
    };
    let entry = call(pg_sys::nextval_oid, &[Datum::from(schema.ledger_seq)]);
    let mut ledger_row = Row::new(&ledger);
    ledger_row.set(ledger.col(c"entry_id")?, Some(entry));
    ledger_row.set(ledger.col(c"account_id")?, Some(account_id));
    ledger_row.set(ledger.col(c"at")?, Some(now));
    ledger_row.set(ledger.col(c"kind")?, Some(Datum::from(b'D' as i8)));
    ledger_row.set(ledger.col(c"feature_id")?, Some(feature_id));
    ledger_row.set(ledger.col(c"amount")?, Some(amount.to_datum()));
    ledger_row.set(ledger.col(c"from_grants")?, None);
    ledger_row.set(ledger.col(c"ref")?, None);
    ledger_row.set(ledger.col(c"metadata")?, req.metadata);
    let ledger_slot = ledger_row.complete()?;

    let mut key_row = None;
    if let Some((table, key)) = &idempotency {
        let row = key_row.insert(Row::new(table));
        row.set(table.col(c"account_id")?, Some(account_id));
        row.set(table.col(c"idempotency_key")?, Some(*key));
        row.set(table.col(c"entry_id")?, Some(entry));
        let request = debit_request(Some(feature), Some(quantity), metadata_text);
        row.set(table.col(c"request")?, Some(request));
    }
    let key_slot = match &key_row {
        Some(row) => Some(row.complete()?),
        None => None,
    };

    let mut account_row = Row::copy_of(&accounts, locked.slot);
    account_row.set(accounts.col(c"day")?, Some(Datum::from(today)));
    account_row.set(accounts.col(c"daily_used")?, Some(new_daily.to_datum()));
    account_row.set(accounts.col(c"month")?, Some(Datum::from(this_month)));
    account_row.set(accounts.col(c"monthly_used")?, Some(new_monthly.to_datum()));
    account_row.set(accounts.col(c"last_at")?, Some(now));
    if a.month != this_month {
        account_row.set(accounts.col(c"monthly_epoch")?, Some(Datum::from(0i64)));
    }
    let account_slot = account_row.complete()?;

    let mut tables = vec![&accounts, &ledger];
    if let Some((table, _)) = &idempotency {
        tables.push(table);
    }
    if let Some((_, table)) = &closing {
        tables.push(table);
    }
    let mut writes = Writes::begin(&tables);
    // The key first: a key already used (by this transaction, or by a
    // twin that held the account lock before us and committed) is a
    // replay or UC005, the SQL path's.
    if let (Some(key_slot), Some((table, _))) = (key_slot, &idempotency) {
        if !writes.insert_unless_exists(table, key_slot) {
            writes.finish();
            return None;
        }
    }
    if let Some((prepared, table)) = &closing {
        prepared.write(&mut writes, table, &ledger);
    }
    writes.update(&accounts, locked.slot, account_slot);
    writes.insert(&ledger, ledger_slot);
    writes.finish();
    drop(locked);
    stats::count(
        stats::Kind::Charge,
        pgrx::varlena::text_to_rust_str_unchecked(a.plan.cast_mut_ptr()).as_bytes(),
        feature_id.value() as i16,
    );
    // What later statements (and calls in this statement) must see.
    pg_sys::CommandCounterIncrement();

    Some(entry.value() as i64)
}
