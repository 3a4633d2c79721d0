//! `credits.debit` and `credits.try_debit`, and their fast path below SQL.
//!
//! Every AI request calls `debit`, and executing SQL statements was most of
//! its cost (executor start-up of each statement, not the row work). The
//! fast path does the same row work through the access methods PostgreSQL's
//! own logical replication apply uses: index lookups, a tuple lock, and
//! `ExecSimpleRelationInsert` / `ExecSimpleRelationUpdate`, which keep
//! indexes, NOT NULL constraints and row triggers (the plan foreign key) as
//! an INSERT or UPDATE would.
//!
//! It decides only the common case: the account exists and is up to date
//! (no window to close), the charge fits the allowance (no grants), the key,
//! if any, is new, and the arguments are valid. For anything else it writes
//! nothing and declines, and `credits._debit` (metering.sql) decides: it
//! brings the account up to date and tries the fast path once more, or takes
//! the slow path, which decides every case and raises every error.
//!
//! Exactness is the SQL path's: the account row is locked before anything is
//! decided (at READ COMMITTED the lock follows the row to its newest version,
//! as an UPDATE's re-check would; at REPEATABLE READ or SERIALIZABLE a row
//! changed since the snapshot declines, and the slow path fails with 40001),
//! and every writer of an account's keys holds that lock.
//!
//! Nothing here depends on the caller's search_path: relations and functions
//! are found by name in schema credits, built-ins are called directly.

use crate::metering::catalog_cache::{self, varlena_bytes, Feature, Plan};
use crate::metering::requests::{args, call, debit_request, metadata_ok, ret, v1_functions};
use crate::metering::thresholds::lowest_threshold;
use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::prelude::*;
use std::ffi::CStr;
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

/// The fast path; if it declined, `credits._debit` (metering.sql), which
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
/// set to a call of credits._debit with the same arguments.
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
            pg_sys::makeString(pg_sys::pstrdup(c"credits".as_ptr())).cast(),
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

/// `credits._debit_fast(account_id text, feature text, quantity numeric,
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

/// The account row's values the decision needs.
struct Account {
    plan: Datum,
    purchased: Datum,
    day: i32,
    daily_used: Datum,
    month: i32,
    monthly_used: Datum,
    reserved: Datum,
}

fn debit(req: &DebitRequest) -> Option<i64> {
    let (account_id, feature, quantity, now) =
        (req.account?, req.feature?, req.quantity?, req.now?);
    let now_ts = now.value() as i64;
    // An infinite clock has no UTC day: the SQL path reports it.
    if now_ts == i64::MIN || now_ts == i64::MAX {
        return None;
    }
    let today = utc_day(now_ts);
    let this_month = utc_month_start(today);
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
        if !metadata_ok(req.metadata) {
            return None;
        }
        // Every lookup reads the calling statement's snapshot; without one
        // (no caller known to do that), the SQL path takes its own.
        if !pg_sys::ActiveSnapshotSet() {
            return None;
        }
        let repeatable = pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32;
        let schema = Schema::find()?;

        // The feature and the amount: cost x quantity, positive, below 10^15,
        // exact to 4 places (as the slow path validates it).
        catalog_cache::refresh(schema.features, schema.plans);
        let (feature_id, cost) = catalog_cache::feature(feature, || {
            let table = Table::open(schema.features, pg_sys::AccessShareLock);
            let row = table.lookup(schema.features_key, feature)?;
            Some(Feature {
                id: row.get(table.col(c"feature_id")?)?.value() as i16,
                cost: varlena_bytes(row.get(table.col(c"cost")?)?),
            })
        })?;
        let feature_id = Datum::from(feature_id);
        if numeric_cmp(quantity, numeric_from_i64(0)) <= 0
            || numeric_cmp(quantity, numeric_from_i64(1_000_000_000_000_000)) >= 0
        {
            return None;
        }
        let product = numeric(pg_sys::numeric_mul, cost, quantity);
        let rounded = call(pg_sys::numeric_round, &[product, Datum::from(4i32)]);
        if numeric_cmp(rounded, product) != 0 {
            return None;
        }
        let amount = call(pg_sys::numeric_trim_scale, &[product]);

        // The account, locked before anything is decided.
        let accounts = Table::open(schema.accounts, pg_sys::RowExclusiveLock);
        let locked = accounts.lock(schema.accounts_key, account_id, repeatable)?;
        let a = Account {
            plan: locked.get(accounts.col(c"plan")?)?,
            purchased: locked.get(accounts.col(c"purchased")?)?,
            day: locked.get(accounts.col(c"day")?)?.value() as i32,
            daily_used: locked.get(accounts.col(c"daily_used")?)?,
            month: locked.get(accounts.col(c"month")?)?.value() as i32,
            monthly_used: locked.get(accounts.col(c"monthly_used")?)?,
            reserved: locked.get(accounts.col(c"reserved")?)?,
        };
        // A window to close is the SQL path's work (credits._windows_passed).
        let zero = numeric_from_i64(0);
        if (a.day < today && numeric_cmp(a.daily_used, zero) > 0) || a.month < this_month {
            return None;
        }

        let idempotency = req.key.map(|key| {
            (
                Table::open(schema.idempotency, pg_sys::RowExclusiveLock),
                key,
            )
        });

        // Every limit, windows rolled (credits._in_window): the daily limit
        // caps all spending, the allowance is what the fast path draws on.
        let (daily_limit, allowance) = catalog_cache::plan(a.plan, || {
            let table = Table::open(schema.plans, pg_sys::AccessShareLock);
            let row = table.lookup(schema.plans_key, a.plan)?;
            Some(Plan {
                daily_limit: row
                    .get(table.col(c"daily_limit")?)
                    .map(|d| varlena_bytes(d)),
                monthly_allowance: varlena_bytes(row.get(table.col(c"monthly_allowance")?)?),
            })
        })?;
        let daily_used = if a.day == today { a.daily_used } else { zero };
        let monthly_used = if a.month == this_month {
            a.monthly_used
        } else {
            zero
        };
        let new_daily = numeric(pg_sys::numeric_add, daily_used, amount);
        let new_monthly = numeric(pg_sys::numeric_add, monthly_used, amount);
        let monthly_limit = numeric(pg_sys::numeric_add, allowance, a.purchased);
        let committed = numeric(pg_sys::numeric_add, new_monthly, a.reserved);
        // The fast path takes only a debit that leaves every window short of
        // an event: the daily window not full, monthly usage below the lowest
        // threshold (a month used up is an event whatever the thresholds).
        // That also keeps it within every limit; a debit over a limit, or
        // one that makes an event due, is the SQL path's, which draws on
        // grants, raises UC001 or emits the event.
        if let Some(limit) = daily_limit {
            if numeric_cmp(numeric(pg_sys::numeric_add, new_daily, a.reserved), limit) >= 0 {
                return None;
            }
        }
        let hundred = numeric_from_i64(100);
        let lowest = lowest_threshold()
            .and_then(|t| t.into_datum())
            .filter(|t| numeric_cmp(*t, hundred) < 0)
            .unwrap_or(hundred);
        if numeric_cmp(
            numeric(pg_sys::numeric_mul, committed, hundred),
            numeric(pg_sys::numeric_mul, monthly_limit, lowest),
        ) >= 0
        {
            return None;
        }

        // Write: the key, the account's counters, the ledger entry.
        let entry = call(pg_sys::nextval_oid, &[Datum::from(schema.ledger_seq)]);
        let ledger = Table::open(schema.ledger, pg_sys::RowExclusiveLock);
        let mut ledger_row = Row::new(&ledger);
        ledger_row.set(ledger.col(c"entry_id")?, Some(entry));
        ledger_row.set(ledger.col(c"account_id")?, Some(account_id));
        ledger_row.set(ledger.col(c"at")?, Some(now));
        ledger_row.set(ledger.col(c"kind")?, Some(Datum::from(b'D' as i8)));
        ledger_row.set(ledger.col(c"feature_id")?, Some(feature_id));
        ledger_row.set(ledger.col(c"amount")?, Some(amount));
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
            let request = debit_request(Some(feature), Some(quantity), req.metadata);
            row.set(table.col(c"request")?, Some(request));
        }
        let key_slot = match &key_row {
            Some(row) => Some(row.complete()?),
            None => None,
        };

        let mut account_row = Row::copy_of(&accounts, locked.slot);
        account_row.set(accounts.col(c"day")?, Some(Datum::from(today)));
        account_row.set(accounts.col(c"daily_used")?, Some(new_daily));
        account_row.set(accounts.col(c"month")?, Some(Datum::from(this_month)));
        account_row.set(accounts.col(c"monthly_used")?, Some(new_monthly));
        if a.month != this_month {
            account_row.set(accounts.col(c"monthly_epoch")?, Some(Datum::from(0i64)));
        }
        let account_slot = account_row.complete()?;

        let mut tables = vec![&accounts, &ledger];
        if let Some((table, _)) = &idempotency {
            tables.push(table);
        }
        let mut writes = Writes::begin(&tables);
        // The key first: a key already used (by this transaction, or by a
        // twin that held the account lock before us and committed) is a
        // replay or UC005, the SQL path's. The unique index tells in the
        // same descent that inserts the key; the row is then deleted.
        if let Some(key_slot) = key_slot {
            if !writes.insert_new_key(2, key_slot) {
                writes.finish();
                return None;
            }
        }
        writes.update(0, locked.slot, account_slot);
        writes.insert(1, ledger_slot);
        writes.finish();
        drop(locked);
        // What later statements (and calls in this statement) must see.
        pg_sys::CommandCounterIncrement();

        Some(entry.value() as i64)
    }
}

/// Days since 2000-01-01 (PostgreSQL's date) of a timestamptz, in UTC.
fn utc_day(ts: i64) -> i32 {
    ts.div_euclid(86_400_000_000) as i32
}

/// The first day of the UTC month of `day` (credits._utc_month).
fn utc_month_start(day: i32) -> i32 {
    let (mut y, mut m, mut d) = (0, 0, 0);
    // SAFETY: plain arithmetic on integers.
    unsafe {
        pg_sys::j2date(
            day + pg_sys::POSTGRES_EPOCH_JDATE as i32,
            &mut y,
            &mut m,
            &mut d,
        );
        pg_sys::date2j(y, m, 1) - pg_sys::POSTGRES_EPOCH_JDATE as i32
    }
}

unsafe fn numeric(f: unsafe fn(pg_sys::FunctionCallInfo) -> Datum, a: Datum, b: Datum) -> Datum {
    call(f, &[a, b])
}

unsafe fn numeric_cmp(a: Datum, b: Datum) -> i32 {
    numeric(pg_sys::numeric_cmp, a, b).value() as i32
}

unsafe fn numeric_from_i64(v: i64) -> Datum {
    call(pg_sys::int8_numeric, &[Datum::from(v)])
}

/// The extension's relations, found by name in schema credits.
struct Schema {
    accounts: Oid,
    accounts_key: Oid,
    plans: Oid,
    plans_key: Oid,
    features: Oid,
    features_key: Oid,
    ledger: Oid,
    ledger_seq: Oid,
    idempotency: Oid,
}

impl Schema {
    unsafe fn find() -> Option<Schema> {
        let ns = pg_sys::get_namespace_oid(c"credits".as_ptr(), true);
        if ns == pg_sys::InvalidOid {
            return None;
        }
        let rel = |name: &CStr| -> Option<Oid> {
            // SAFETY: a syscache lookup by name.
            let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), ns) };
            (oid != pg_sys::InvalidOid).then_some(oid)
        };
        Some(Schema {
            accounts: rel(c"accounts")?,
            accounts_key: rel(c"accounts_pkey")?,
            plans: rel(c"plans")?,
            plans_key: rel(c"plans_pkey")?,
            features: rel(c"features")?,
            features_key: rel(c"features_feature_key")?,
            ledger: rel(c"ledger")?,
            ledger_seq: rel(c"ledger_entry_id_seq")?,
            idempotency: rel(c"idempotency")?,
        })
    }
}

/// An open table; its lock is kept to the end of the transaction.
struct Table {
    rel: pg_sys::Relation,
}

impl Table {
    unsafe fn open(oid: Oid, lock: u32) -> Table {
        Table {
            rel: pg_sys::table_open(oid, lock as pg_sys::LOCKMODE),
        }
    }

    /// The attribute number of a column, by name.
    unsafe fn col(&self, name: &CStr) -> Option<i32> {
        let desc = (*self.rel).rd_att;
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        attrs
            .iter()
            .find(|a| !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()) == name)
            .map(|a| a.attnum as i32)
    }

    /// The row whose unique index `index` (on one text column) holds `key`,
    /// as the calling statement's snapshot sees it.
    unsafe fn lookup(&self, index: Oid, key: Datum) -> Option<Found> {
        let index_rel = pg_sys::index_open(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let mut scankey = pg_sys::ScanKeyData::default();
        pg_sys::ScanKeyInit(
            &mut scankey,
            1,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::Oid::from(pg_sys::F_TEXTEQ),
            key,
        );
        // Compare in the index's collation, whatever it is.
        scankey.sk_collation = *(*index_rel).rd_indcollation;
        let slot = pg_sys::table_slot_create(self.rel, ptr::null_mut());
        let scan = pg_sys::index_beginscan(self.rel, index_rel, pg_sys::GetActiveSnapshot(), 1, 0);
        pg_sys::index_rescan(scan, &mut scankey, 1, ptr::null_mut(), 0);
        let found =
            pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot);
        pg_sys::index_endscan(scan);
        pg_sys::index_close(index_rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        if found {
            Some(Found { slot })
        } else {
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            None
        }
    }

    /// The row of `index` = `key`, locked FOR NO KEY UPDATE in its newest
    /// version; None if there is none, it was deleted, or (REPEATABLE READ
    /// and up) it changed since the snapshot.
    unsafe fn lock(&self, index: Oid, key: Datum, repeatable: bool) -> Option<Found> {
        let found = self.lookup(index, key)?;
        let mut failure = pg_sys::TM_FailureData::default();
        let flags = if repeatable {
            0
        } else {
            pg_sys::TUPLE_LOCK_FLAG_FIND_LAST_VERSION
        };
        let mut tid = (*found.slot).tts_tid;
        let result = pg_sys::table_tuple_lock(
            self.rel,
            &mut tid,
            pg_sys::GetActiveSnapshot(),
            found.slot,
            pg_sys::GetCurrentCommandId(true),
            pg_sys::LockTupleMode::LockTupleNoKeyExclusive,
            pg_sys::LockWaitPolicy::LockWaitBlock,
            flags as u8,
            &mut failure,
        );
        (result == pg_sys::TM_Result::TM_Ok).then_some(found)
    }
}

/// A row found by a lookup, in a slot of its table.
struct Found {
    slot: *mut pg_sys::TupleTableSlot,
}

impl Found {
    unsafe fn get(&self, attnum: i32) -> Option<Datum> {
        let mut isnull = false;
        let value = pg_sys::slot_getattr(self.slot, attnum, &mut isnull);
        (!isnull).then_some(value)
    }
}

impl Drop for Found {
    fn drop(&mut self) {
        // SAFETY: the slot was made by table_slot_create and is dropped once.
        unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.slot) }
    }
}

impl Drop for Row {
    fn drop(&mut self) {
        // SAFETY: the slot was made by MakeSingleTupleTableSlot and is dropped once.
        unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.slot) }
    }
}

/// A new row for a table, every column given (NULL unless set).
/// Its slot is freed when it goes out of scope, written or not.
struct Row {
    slot: *mut pg_sys::TupleTableSlot,
    /// Per column: given yet?
    set: Vec<bool>,
}

impl Row {
    unsafe fn new(table: &Table) -> Row {
        let desc = (*table.rel).rd_att;
        let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsVirtual);
        pg_sys::ExecClearTuple(slot);
        let natts = (*desc).natts as usize;
        for i in 0..natts {
            *(*slot).tts_isnull.add(i) = true;
            *(*slot).tts_values.add(i) = Datum::from(0);
        }
        Row {
            slot,
            set: vec![false; natts],
        }
    }

    /// A copy of `from`'s row, to be changed column by column.
    unsafe fn copy_of(table: &Table, from: *mut pg_sys::TupleTableSlot) -> Row {
        let mut row = Row::new(table);
        pg_sys::slot_getallattrs(from);
        for i in 0..row.set.len() {
            *(*row.slot).tts_isnull.add(i) = *(*from).tts_isnull.add(i);
            *(*row.slot).tts_values.add(i) = *(*from).tts_values.add(i);
            row.set[i] = true;
        }
        row
    }

    unsafe fn set(&mut self, attnum: i32, value: Option<Datum>) {
        let i = (attnum - 1) as usize;
        *(*self.slot).tts_isnull.add(i) = value.is_none();
        *(*self.slot).tts_values.add(i) = value.unwrap_or(Datum::from(0));
        self.set[i] = true;
    }

    /// The slot, once every live column was given: a column this code does
    /// not know (a later version's) sends the debit to the SQL path, which
    /// knows its default.
    unsafe fn complete(&self) -> Option<*mut pg_sys::TupleTableSlot> {
        let desc = (*self.slot).tts_tupleDescriptor;
        let attrs = (*desc).attrs.as_slice(self.set.len());
        if attrs
            .iter()
            .zip(&self.set)
            .any(|(a, set)| !a.attisdropped && !set)
        {
            return None;
        }
        pg_sys::ExecStoreVirtualTuple(self.slot);
        Some(self.slot)
    }
}

/// The writes of one debit, made as an INSERT or UPDATE statement makes
/// them: one executor state, result relations with their indexes, AFTER
/// row triggers queued and fired at the end.
struct Writes {
    estate: *mut pg_sys::EState,
    relinfos: Vec<*mut pg_sys::ResultRelInfo>,
    epq: pg_sys::EPQState,
}

impl Writes {
    unsafe fn begin(tables: &[&Table]) -> Writes {
        let estate = pg_sys::CreateExecutorState();
        let mut rtable = ptr::null_mut();
        for table in tables {
            let rte = PgBox::<pg_sys::RangeTblEntry>::alloc_node(pg_sys::NodeTag::T_RangeTblEntry)
                .into_pg();
            (*rte).rtekind = pg_sys::RTEKind::RTE_RELATION;
            (*rte).relid = (*(*table.rel).rd_rel).oid;
            (*rte).relkind = (*(*table.rel).rd_rel).relkind;
            (*rte).rellockmode = pg_sys::RowExclusiveLock as i32;
            rtable = pg_sys::lappend(rtable, rte.cast());
        }
        pg_sys::ExecInitRangeTable(estate, rtable);
        (*estate).es_output_cid = pg_sys::GetCurrentCommandId(true);
        (*estate).es_snapshot = pg_sys::GetActiveSnapshot();
        let relinfos = tables
            .iter()
            .enumerate()
            .map(|(i, table)| {
                let relinfo =
                    PgBox::<pg_sys::ResultRelInfo>::alloc_node(pg_sys::NodeTag::T_ResultRelInfo)
                        .into_pg();
                // SAFETY: a fresh ResultRelInfo for an open table of this range table.
                unsafe {
                    pg_sys::InitResultRelInfo(
                        relinfo,
                        table.rel,
                        (i + 1) as pg_sys::Index,
                        ptr::null_mut(),
                        0,
                    );
                    pg_sys::ExecOpenIndices(relinfo, false);
                }
                relinfo
            })
            .collect::<Vec<_>>();
        // Registered as the statement's result relations, so the AFTER
        // triggers fired at the end (the plan foreign key re-checked when
        // this transaction wrote the account row before) find them open.
        for relinfo in &relinfos {
            (*estate).es_opened_result_relations =
                pg_sys::lappend((*estate).es_opened_result_relations, relinfo.cast());
        }
        let mut writes = Writes {
            estate,
            relinfos,
            epq: std::mem::zeroed(),
        };
        pg_sys::EvalPlanQualInit(
            &mut writes.epq,
            estate,
            ptr::null_mut(),
            ptr::null_mut(),
            -1,
        );
        pg_sys::AfterTriggerBeginQuery();
        writes
    }

    unsafe fn insert(&mut self, table: usize, slot: *mut pg_sys::TupleTableSlot) {
        pg_sys::ExecSimpleRelationInsert(self.relinfos[table], self.estate, slot);
    }

    /// Inserts a row whose unique index may already hold its key: true if
    /// it did not; if it did, the row is deleted again (nothing else was
    /// written: no triggers on this internal table) and false returned.
    unsafe fn insert_new_key(&mut self, table: usize, slot: *mut pg_sys::TupleTableSlot) -> bool {
        let relinfo = self.relinfos[table];
        let rel = (*relinfo).ri_RelationDesc;
        pg_sys::simple_table_tuple_insert(rel, slot);
        let mut conflict = false;
        let conflicts = pg_sys::ExecInsertIndexTuples(
            relinfo,
            slot,
            self.estate,
            false,
            true,
            &mut conflict,
            ptr::null_mut(),
        );
        let mut tid = (*slot).tts_tid;
        if conflicts.is_null() {
            return true;
        }
        // Deleting a row inserted by this very command needs the next one.
        pg_sys::CommandCounterIncrement();
        pg_sys::simple_table_tuple_delete(rel, &mut tid, pg_sys::GetActiveSnapshot());
        false
    }

    unsafe fn update(
        &mut self,
        table: usize,
        old: *mut pg_sys::TupleTableSlot,
        new: *mut pg_sys::TupleTableSlot,
    ) {
        pg_sys::ExecSimpleRelationUpdate(
            self.relinfos[table],
            self.estate,
            &mut self.epq,
            old,
            new,
        );
    }

    unsafe fn finish(mut self) {
        pg_sys::AfterTriggerEndQuery(self.estate);
        // Their indexes, and any relation a trigger opened.
        pg_sys::ExecCloseResultRelations(self.estate);
        pg_sys::EvalPlanQualEnd(&mut self.epq);
        pg_sys::ExecResetTupleTable((*self.estate).es_tupleTable, false);
        pg_sys::FreeExecutorState(self.estate);
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: opened by table_open; the lock stays to the transaction's end.
        unsafe { pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE) }
    }
}
