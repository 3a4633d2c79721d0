//! Rows read and written without executing a statement, through the access
//! methods PostgreSQL's own logical replication apply uses: index lookups,
//! tuple locks, and `ExecSimpleRelationInsert` / `ExecSimpleRelationUpdate`,
//! which keep indexes, NOT NULL and CHECK constraints and row triggers as an
//! INSERT or UPDATE would.
//!
//! Nothing here depends on the caller's search_path: relations are found by
//! name in schema credits.

use crate::distributed::shards::shard_relation;
use crate::pg::fmgr::call;
use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::prelude::*;
use std::ffi::CStr;
use std::ptr;

/// The extension's relations, found by name in schema credits (kept for
/// the session by schema::catalog_cache).
#[derive(Clone, Copy)]
pub(crate) struct Schema {
    namespace: Oid,
    pub accounts: Oid,
    pub accounts_key: Oid,
    pub plans: Oid,
    pub plans_key: Oid,
    pub features: Oid,
    pub features_key: Oid,
    pub ledger: Oid,
    pub ledger_seq: Oid,
    pub idempotency: Oid,
    /// (table, its key on (account_id, stripe)): None in a schema from
    /// before stripes, whose accounts have none.
    pub stripes: Option<(Oid, Oid)>,
    /// On a Citus cluster: the shards these relations are; None on a
    /// single node.
    pub shard: Option<Shard>,
}

/// The shards of a Schema on a Citus cluster.
#[derive(Clone, Copy)]
pub(crate) struct Shard {
    pub ids: ShardIds,
    /// The node's group: the low bits of the ids it makes.
    pub group: i64,
    /// The ledger shard's key, on (account_id, entry_id).
    pub ledger_key: Oid,
}

/// The shards of one account's rows on a Citus cluster (colocated: one per
/// table), and of the catalogs (reference tables: one shard each).
#[derive(Clone, Copy)]
pub(crate) struct ShardIds {
    pub accounts: i64,
    pub ledger: i64,
    pub idempotency: i64,
    pub stripes: i64,
    pub closed_windows: i64,
    pub events: i64,
    pub plans: i64,
    pub features: i64,
}

/// The relations closing windows writes and reads besides those of every
/// debit, looked up only when a window is to close.
pub(crate) struct ClosingSchema {
    pub closed_windows: Oid,
    pub events: Oid,
    /// (account_id, kind, window_kind, window_key, threshold)
    pub events_key: Oid,
}

impl Schema {
    pub(crate) unsafe fn find() -> Option<Schema> {
        let namespace = pg_sys::get_namespace_oid(c"credits".as_ptr(), true);
        if namespace == pg_sys::InvalidOid {
            return None;
        }
        let rel = |name| relation(namespace, name);
        Some(Schema {
            namespace,
            accounts: rel(c"accounts")?,
            accounts_key: rel(c"accounts_pkey")?,
            plans: rel(c"plans")?,
            plans_key: rel(c"plans_pkey")?,
            features: rel(c"features")?,
            features_key: rel(c"features_feature_key")?,
            ledger: rel(c"ledger")?,
            ledger_seq: rel(c"ledger_entry_id_seq")?,
            idempotency: rel(c"idempotency")?,
            stripes: rel(c"stripes").zip(rel(c"stripes_pkey")),
            shard: None,
        })
    }

    /// The same relations' shards `ids` on this node (None if one is
    /// missing); `group` is the node's.
    pub(crate) fn on_shards(&self, ids: ShardIds, group: i64) -> Option<Schema> {
        let rel = |name, id| shard_relation(self.namespace, name, id);
        Some(Schema {
            namespace: self.namespace,
            accounts: rel("accounts", ids.accounts)?,
            accounts_key: rel("accounts_pkey", ids.accounts)?,
            plans: rel("plans", ids.plans)?,
            plans_key: rel("plans_pkey", ids.plans)?,
            features: rel("features", ids.features)?,
            features_key: rel("features_feature_key", ids.features)?,
            ledger: rel("ledger", ids.ledger)?,
            ledger_seq: self.ledger_seq,
            idempotency: rel("idempotency", ids.idempotency)?,
            stripes: Some((
                rel("stripes", ids.stripes)?,
                rel("stripes_pkey", ids.stripes)?,
            )),
            shard: Some(Shard {
                ids,
                group,
                ledger_key: rel("ledger_pkey", ids.ledger)?,
            }),
        })
    }

    /// A new ledger entry's id: the sequence's next value, and on a Citus
    /// cluster the node's group in its low 16 bits (as the column's default
    /// there, credits_internal._next_id), so nodes never make the same id.
    pub(crate) unsafe fn next_entry_id(&self) -> Datum {
        let next = call(pg_sys::nextval_oid, &[Datum::from(self.ledger_seq)]);
        match self.shard {
            None => next,
            Some(shard) => Datum::from((next.value() as i64) << 16 | shard.group),
        }
    }

    /// Is `oid` the schema or one of its relations?
    pub(crate) fn holds(&self, oid: Oid) -> bool {
        [
            self.namespace,
            self.accounts,
            self.accounts_key,
            self.plans,
            self.plans_key,
            self.features,
            self.features_key,
            self.ledger,
            self.ledger_seq,
            self.idempotency,
        ]
        .contains(&oid)
            || self
                .stripes
                .is_some_and(|(table, key)| oid == table || oid == key)
    }

    pub(crate) unsafe fn closing(&self) -> Option<ClosingSchema> {
        if let Some(Shard { ids, .. }) = self.shard {
            let rel = |name, id| shard_relation(self.namespace, name, id);
            return Some(ClosingSchema {
                closed_windows: rel("closed_windows", ids.closed_windows)?,
                events: rel("events", ids.events)?,
                events_key: rel("events_once", ids.events)?,
            });
        }
        let rel = |name| relation(self.namespace, name);
        Some(ClosingSchema {
            closed_windows: rel(c"closed_windows")?,
            events: rel(c"events")?,
            events_key: rel(c"events_once")?,
        })
    }
}

/// A relation of a schema by name (a syscache lookup).
fn relation(namespace: Oid, name: &CStr) -> Option<Oid> {
    // SAFETY: a syscache lookup by name.
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), namespace) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// An open table; its lock is kept to the end of the transaction.
pub(crate) struct Table {
    rel: pg_sys::Relation,
}

impl Table {
    pub(crate) unsafe fn open(oid: Oid, lock: u32) -> Table {
        Table {
            rel: pg_sys::table_open(oid, lock as pg_sys::LOCKMODE),
        }
    }

    /// Has it statement-level triggers on INSERT or UPDATE (an audit trigger
    /// with a transition table, a trigger that refuses a statement)? Only a
    /// statement fires them: the writes here are not statements.
    pub(crate) unsafe fn has_statement_triggers(&self) -> bool {
        let t = (*self.rel).trigdesc;
        !t.is_null()
            && ((*t).trig_insert_before_statement
                || (*t).trig_insert_after_statement
                || (*t).trig_update_before_statement
                || (*t).trig_update_after_statement
                || (*t).trig_insert_new_table
                || (*t).trig_update_old_table
                || (*t).trig_update_new_table)
    }

    /// The attribute number of a column, by name.
    pub(crate) unsafe fn col(&self, name: &CStr) -> Option<i32> {
        let desc = (*self.rel).rd_att;
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        // The name with its terminating NUL against the start of each
        // fixed-size attname: one comparison, no strlen (a debit looks up
        // a score of columns).
        let name = name.to_bytes_with_nul();
        attrs
            .iter()
            .find(|a| {
                !a.attisdropped
                    && std::slice::from_raw_parts(a.attname.data.as_ptr() as *const u8, name.len())
                        == name
            })
            .map(|a| a.attnum as i32)
    }

    /// The row whose unique index `index` (on one text column) holds `key`,
    /// as the calling statement's snapshot sees it.
    pub(crate) unsafe fn lookup(&self, index: Oid, key: Datum) -> Option<Found> {
        let equal = (pg_sys::BTEqualStrategyNumber, pg_sys::F_TEXTEQ, key);
        let mut scan = self.scan(index, &[equal], pg_sys::GetActiveSnapshot());
        scan.next().then(|| scan.into_row())
    }

    /// The last row (in the order of `index`, on a text column and more)
    /// whose first column is `key`, as the latest snapshot sees it.
    pub(crate) unsafe fn last_of(&self, index: Oid, key: Datum) -> Option<Found> {
        let equal = (pg_sys::BTEqualStrategyNumber, pg_sys::F_TEXTEQ, key);
        let mut scan = self.scan(index, &[equal], pg_sys::GetLatestSnapshot());
        scan.step(pg_sys::ScanDirection::BackwardScanDirection)
            .then(|| scan.into_row())
    }

    /// The rows in the order of `index` (on one text column) after the key
    /// `after` (from the first without one), as the calling statement's
    /// snapshot sees them.
    pub(crate) unsafe fn scan_after(&self, index: Oid, after: Option<Datum>) -> IndexScan {
        let greater = after.map(|key| (pg_sys::BTGreaterStrategyNumber, pg_sys::F_TEXT_GT, key));
        self.scan(index, greater.as_slice(), pg_sys::GetActiveSnapshot())
    }

    /// A scan of `index` with one (strategy, comparison, text value) key per
    /// leading column, compared in the index's collation.
    unsafe fn scan(
        &self,
        index: Oid,
        keys: &[(u32, u32, Datum)],
        snapshot: pg_sys::Snapshot,
    ) -> IndexScan {
        let mut scan = self.open_scan(index, keys.len(), snapshot);
        scan.restart(keys);
        scan
    }

    /// A scan of `index` on `nkeys` leading text columns, opened but not
    /// started: IndexScan::rescan_equal runs it for one key after another (a
    /// batch looks up account after account without setting up a scan for
    /// each).
    pub(crate) unsafe fn open_scan(
        &self,
        index: Oid,
        nkeys: usize,
        snapshot: pg_sys::Snapshot,
    ) -> IndexScan {
        let index_rel = pg_sys::index_open(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let scan = pg_sys::index_beginscan(self.rel, index_rel, snapshot, nkeys as i32, 0);
        IndexScan {
            index_rel,
            scan,
            context: pg_sys::CurrentMemoryContext,
            row: Found {
                slot: pg_sys::table_slot_create(self.rel, ptr::null_mut()),
            },
        }
    }

    /// The row whose unique index `index` on (text, smallint) holds
    /// (`key`, `number`), as the calling statement's snapshot sees it.
    pub(crate) unsafe fn lookup_numbered(
        &self,
        index: Oid,
        key: Datum,
        number: i16,
    ) -> Option<Found> {
        let keys = [
            (pg_sys::BTEqualStrategyNumber, pg_sys::F_TEXTEQ, key),
            (
                pg_sys::BTEqualStrategyNumber,
                pg_sys::F_INT2EQ,
                Datum::from(number),
            ),
        ];
        let mut scan = self.scan(index, &keys, pg_sys::GetActiveSnapshot());
        scan.next().then(|| scan.into_row())
    }

    /// The row of `index` = `key`, locked FOR NO KEY UPDATE in its newest
    /// version (see lock_into); None if there is none.
    pub(crate) unsafe fn lock(&self, index: Oid, key: Datum) -> Option<Found> {
        self.lock_found(self.lookup(index, key)?)
    }

    /// The row a lookup found, locked as lock() locks it.
    pub(crate) unsafe fn lock_found(&self, found: Found) -> Option<Found> {
        let tid = (*found.slot).tts_tid;
        match self.lock_into(tid, found, pg_sys::LockWaitPolicy::LockWaitBlock) {
            Lock::Locked(found) => Some(found),
            Lock::Busy | Lock::Gone => None,
        }
    }

    /// The row `seen` (by a scan of this statement), locked as lock() locks,
    /// unless another transaction holds it: then Busy, without waiting (as
    /// FOR NO KEY UPDATE SKIP LOCKED).
    pub(crate) unsafe fn try_lock_seen(&self, seen: &Found) -> Lock {
        let found = Found {
            slot: pg_sys::table_slot_create(self.rel, ptr::null_mut()),
        };
        self.lock_into(
            (*seen.slot).tts_tid,
            found,
            pg_sys::LockWaitPolicy::LockWaitSkip,
        )
    }

    /// Locks the row at `tid` as SELECT ... FOR NO KEY UPDATE does, reading
    /// the version locked into `into`: at READ COMMITTED the lock follows
    /// the row to its newest version (None if it was deleted); at
    /// REPEATABLE READ and up a row changed since the snapshot is a
    /// serialization failure (40001), to be retried.
    #[allow(unreachable_code)] // ereport!(ERROR) does not return
    unsafe fn lock_into(
        &self,
        mut tid: pg_sys::ItemPointerData,
        into: Found,
        wait: pg_sys::LockWaitPolicy::Type,
    ) -> Lock {
        let repeatable = pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32;
        let mut failure = pg_sys::TM_FailureData::default();
        let flags = if repeatable {
            0
        } else {
            pg_sys::TUPLE_LOCK_FLAG_FIND_LAST_VERSION
        };
        let result = pg_sys::table_tuple_lock(
            self.rel,
            &mut tid,
            pg_sys::GetActiveSnapshot(),
            into.slot,
            pg_sys::GetCurrentCommandId(true),
            pg_sys::LockTupleMode::LockTupleNoKeyExclusive,
            wait,
            flags as u8,
            &mut failure,
        );
        match result {
            pg_sys::TM_Result::TM_Ok => Lock::Locked(into),
            pg_sys::TM_Result::TM_WouldBlock => Lock::Busy,
            pg_sys::TM_Result::TM_Updated | pg_sys::TM_Result::TM_Deleted if repeatable => {
                ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                    "could not serialize access due to concurrent update"
                );
                unreachable!("ereport(ERROR) does not return")
            }
            _ => Lock::Gone,
        }
    }
}

/// What locking a row came to.
pub(crate) enum Lock {
    Locked(Found),
    /// Another transaction holds it (only when asked not to wait).
    Busy,
    /// Deleted meanwhile.
    Gone,
}

/// Leading columns a scan compares, at most (the events' key: account, kind).
const MAX_SCAN_KEYS: usize = 2;

/// A scan in index order (Table::lookup, Table::open_scan, Table::scan_after).
pub(crate) struct IndexScan {
    index_rel: pg_sys::Relation,
    scan: pg_sys::IndexScanDesc,
    /// Where it began: the index AM allocates scan state as it goes, which
    /// must live as long as the scan (a batch resets its per-account memory
    /// between rescans).
    context: pg_sys::MemoryContext,
    /// The current row, after next() returned true.
    pub row: Found,
}

impl IndexScan {
    /// (Re)starts the scan with one (strategy, comparison, text value) key
    /// per leading column, compared in the index's collation.
    unsafe fn restart(&mut self, keys: &[(u32, u32, Datum)]) {
        assert!(
            keys.len() <= MAX_SCAN_KEYS,
            "at most {MAX_SCAN_KEYS} scan keys"
        );
        // On the stack: every debit's account lookup starts a scan.
        let mut scankeys = [pg_sys::ScanKeyData::default(); MAX_SCAN_KEYS];
        for (i, (scankey, &(strategy, procedure, value))) in
            scankeys.iter_mut().zip(keys).enumerate()
        {
            pg_sys::ScanKeyInit(
                scankey,
                (i + 1) as pg_sys::AttrNumber,
                strategy as pg_sys::StrategyNumber,
                pg_sys::Oid::from(procedure),
                value,
            );
            scankey.sk_collation = *(*self.index_rel).rd_indcollation.add(i);
        }
        let caller = pg_sys::MemoryContextSwitchTo(self.context);
        let nkeys = keys.len() as i32;
        pg_sys::index_rescan(self.scan, scankeys.as_mut_ptr(), nkeys, ptr::null_mut(), 0);
        pg_sys::MemoryContextSwitchTo(caller);
    }

    /// Runs the scan (Table::open_scan) again for the rows whose leading
    /// columns equal `keys`, as `snapshot` sees them (the caller keeps it
    /// registered while it reads them).
    pub(crate) unsafe fn rescan_equal(&mut self, keys: &[Datum], snapshot: pg_sys::Snapshot) {
        (*self.scan).xs_snapshot = snapshot;
        let mut equal = [(0, 0, Datum::from(0)); MAX_SCAN_KEYS];
        for (slot, &key) in equal.iter_mut().zip(keys) {
            *slot = (pg_sys::BTEqualStrategyNumber, pg_sys::F_TEXTEQ, key);
        }
        self.restart(&equal[..keys.len()]);
    }

    pub(crate) unsafe fn next(&mut self) -> bool {
        self.step(pg_sys::ScanDirection::ForwardScanDirection)
    }

    unsafe fn step(&mut self, direction: pg_sys::ScanDirection::Type) -> bool {
        let caller = pg_sys::MemoryContextSwitchTo(self.context);
        let found = pg_sys::index_getnext_slot(self.scan, direction, self.row.slot);
        pg_sys::MemoryContextSwitchTo(caller);
        found
    }

    /// The current row, kept after the scan ends.
    unsafe fn into_row(self) -> Found {
        let row = Found {
            slot: self.row.slot,
        };
        self.end();
        std::mem::forget(self);
        row
    }

    unsafe fn end(&self) {
        pg_sys::index_endscan(self.scan);
        pg_sys::index_close(self.index_rel, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
}

impl Drop for IndexScan {
    fn drop(&mut self) {
        // SAFETY: begun by Table::scan, ended once (into_row forgets it).
        unsafe { self.end() }
        // (then `row` drops its slot)
    }
}

/// A row found by a lookup, in a slot of its table.
pub(crate) struct Found {
    pub slot: *mut pg_sys::TupleTableSlot,
}

impl Found {
    /// Column `attnum` (from Table::col). The row is deformed once, for
    /// every column, at the first read: callers read rows column by column.
    pub(crate) unsafe fn get(&self, attnum: i32) -> Option<Datum> {
        let slot = self.slot;
        let natts = (*(*slot).tts_tupleDescriptor).natts as i32;
        assert!((1..=natts).contains(&attnum), "column {attnum} of {natts}");
        if attnum > (*slot).tts_nvalid as i32 {
            pg_sys::slot_getallattrs(slot);
        }
        let i = (attnum - 1) as usize;
        (!*(*slot).tts_isnull.add(i)).then(|| *(*slot).tts_values.add(i))
    }
}

impl Drop for Found {
    fn drop(&mut self) {
        // SAFETY: the slot was made by table_slot_create and is dropped once.
        unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.slot) }
    }
}

/// A new row for a table, every column given (NULL unless set).
/// Its slot is freed when it goes out of scope, written or not.
pub(crate) struct Row {
    slot: *mut pg_sys::TupleTableSlot,
    /// Per column: given yet?
    set: Vec<bool>,
}

impl Row {
    pub(crate) unsafe fn new(table: &Table) -> Row {
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
    pub(crate) unsafe fn copy_of(table: &Table, from: *mut pg_sys::TupleTableSlot) -> Row {
        let mut row = Row::new(table);
        pg_sys::slot_getallattrs(from);
        for i in 0..row.set.len() {
            *(*row.slot).tts_isnull.add(i) = *(*from).tts_isnull.add(i);
            *(*row.slot).tts_values.add(i) = *(*from).tts_values.add(i);
            row.set[i] = true;
        }
        row
    }

    pub(crate) unsafe fn set(&mut self, attnum: i32, value: Option<Datum>) {
        let i = (attnum - 1) as usize;
        *(*self.slot).tts_isnull.add(i) = value.is_none();
        *(*self.slot).tts_values.add(i) = value.unwrap_or(Datum::from(0));
        self.set[i] = true;
    }

    /// The slot, once every live column was given; None for a column this
    /// code does not know (a later version's): the SQL path knows its
    /// default.
    pub(crate) unsafe fn complete(&self) -> Option<*mut pg_sys::TupleTableSlot> {
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

    /// The slot of a row that complete() accepted.
    pub(crate) fn slot(&self) -> *mut pg_sys::TupleTableSlot {
        self.slot
    }
}

impl Drop for Row {
    fn drop(&mut self) {
        // SAFETY: the slot was made by MakeSingleTupleTableSlot and is dropped once.
        unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.slot) }
    }
}

/// The writes of one call, made as INSERT and UPDATE statements make
/// them: one executor state, result relations with their indexes, AFTER
/// row triggers queued and fired at the end.
pub(crate) struct Writes {
    estate: *mut pg_sys::EState,
    relinfos: Vec<*mut pg_sys::ResultRelInfo>,
    epq: pg_sys::EPQState,
}

impl Writes {
    pub(crate) unsafe fn begin(tables: &[&Table]) -> Writes {
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
        // triggers fired at the end (user triggers, a foreign key checked
        // again: see update) find them open.
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

    /// The result relation of `table`, one of those the writes began with.
    fn relinfo(&self, table: &Table) -> *mut pg_sys::ResultRelInfo {
        *self
            .relinfos
            .iter()
            // SAFETY: result relations made by begin, alive until finish.
            .find(|r| unsafe { (***r).ri_RelationDesc } == table.rel)
            .expect("a table the writes began with")
    }

    pub(crate) unsafe fn insert(&mut self, table: &Table, slot: *mut pg_sys::TupleTableSlot) {
        pg_sys::ExecSimpleRelationInsert(self.relinfo(table), self.estate, slot);
    }

    /// INSERT ... ON CONFLICT DO NOTHING for one row: false, nothing
    /// written, if a unique index already holds its key (committed, or this
    /// transaction's). Callers hold the lock that orders every writer of
    /// these keys, so nobody inserts one between check and write.
    ///
    /// Without row triggers on INSERT (the extension's own tables), the row
    /// is inserted first and its unique index tells of a conflict in the
    /// same descent that inserts the key; the row is then deleted again.
    /// With them, the keys are checked first, so that triggers fire only for
    /// a row that stays, as for an INSERT.
    pub(crate) unsafe fn insert_unless_exists(
        &mut self,
        table: &Table,
        slot: *mut pg_sys::TupleTableSlot,
    ) -> bool {
        let relinfo = self.relinfo(table);
        let triggers = (*table.rel).trigdesc;
        if !triggers.is_null()
            && ((*triggers).trig_insert_before_row || (*triggers).trig_insert_after_row)
        {
            // The unique checks need each index's equality operators, which
            // ExecOpenIndices only looks up for an INSERT ... ON CONFLICT.
            // (kept with the executor state, for the next row)
            let caller = pg_sys::MemoryContextSwitchTo((*self.estate).es_query_cxt);
            for i in 0..(*relinfo).ri_NumIndices as usize {
                let info = *(*relinfo).ri_IndexRelationInfo.add(i);
                if (*info).ii_Unique && (*info).ii_UniqueOps.is_null() {
                    pg_sys::BuildSpeculativeIndexInfo(
                        *(*relinfo).ri_IndexRelationDescs.add(i),
                        info,
                    );
                }
            }
            pg_sys::MemoryContextSwitchTo(caller);
            let mut conflict_tid = pg_sys::ItemPointerData::default();
            if !pg_sys::ExecCheckIndexConstraints(
                relinfo,
                slot,
                self.estate,
                &mut conflict_tid,
                ptr::null_mut(),
            ) {
                return false;
            }
            self.insert(table, slot);
            return true;
        }
        if !(*(*table.rel).rd_att).constr.is_null() {
            pg_sys::ExecConstraints(relinfo, slot, self.estate);
        }
        pg_sys::simple_table_tuple_insert(table.rel, slot);
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
        pg_sys::simple_table_tuple_delete(table.rel, &mut tid, pg_sys::GetActiveSnapshot());
        false
    }

    /// An UPDATE of one row, `new` a copy of `old` with other columns than
    /// those a foreign key names or references (every caller's: counters).
    ///
    /// Such an update needs none of the foreign keys' triggers. PostgreSQL
    /// knows that too, except when this transaction wrote the old version:
    /// then it checks the key again (a query, and a KEY SHARE lock on the
    /// plan's row, a multixact when other transactions lock it as well), in
    /// case the check of that earlier write has not run yet. That check runs
    /// at the end of its statement, so once no trigger event is pending on
    /// the table, it has run; the triggers are then left out. This is what
    /// every debit after the first of an account in one transaction saved.
    pub(crate) unsafe fn update(
        &mut self,
        table: &Table,
        old: *mut pg_sys::TupleTableSlot,
        new: *mut pg_sys::TupleTableSlot,
    ) {
        let relinfo = self.relinfo(table);
        let triggers = (*relinfo).ri_TrigDesc;
        let keys_only = !triggers.is_null()
            && (0..(*triggers).numtriggers as usize).all(|i| {
                let trigger = (*triggers).triggers.add(i);
                pg_sys::RI_FKey_trigger_type((*trigger).tgfoid) != pg_sys::RI_TRIGGER_NONE as i32
            })
            && !pg_sys::AfterTriggerPendingOnRel((*(*table.rel).rd_rel).oid);
        if keys_only {
            (*relinfo).ri_TrigDesc = ptr::null_mut();
        }
        pg_sys::ExecSimpleRelationUpdate(relinfo, self.estate, &mut self.epq, old, new);
        (*relinfo).ri_TrigDesc = triggers;
    }

    /// Frees what the last row's writes allocated per row (index entries,
    /// constraint checks), before the next row of a long batch.
    pub(crate) unsafe fn next_row(&mut self) {
        let context = (*self.estate).es_per_tuple_exprcontext;
        if !context.is_null() {
            pg_sys::MemoryContextReset((*context).ecxt_per_tuple_memory);
        }
    }

    pub(crate) unsafe fn finish(mut self) {
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
