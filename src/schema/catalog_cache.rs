//! The catalog, cached in each session for the code below SQL (the debit
//! fast path, window closing): the extension's relations (ten syscache
//! lookups by name), and the rows of plans and features (two of a debit's
//! four index lookups were catalog rows that change a few times a year).
//!
//! A change to plans or features (any statement, including TRUNCATE and a
//! restore's COPY) fires `credits_internal._catalog_changed()`, which queues a
//! relcache invalidation of the table; PostgreSQL delivers it to every
//! session when the change commits (and to the changing session at once).
//! The relations are found again after an invalidation of any of them (DDL,
//! DROP EXTENSION, a VACUUM's statistics) or of a schema. Every call below
//! SQL accepts pending invalidations before it reads the cache, so it sees a
//! change as soon as a statement would.

use crate::distributed::shards::Citus;
use crate::pg::fmgr::{text_bytes, v1_functions, varlena_bytes, varlena_datum};
use crate::pg::rows::{Schema, Table};
use pgrx::pg_sys::{self, Datum, Oid};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// A feature's id and cost (a numeric, as its bytes).
struct Feature {
    id: i16,
    cost: Vec<u8>,
}

/// A plan's limits (numerics, as their bytes).
struct Plan {
    daily_limit: Option<Vec<u8>>,
    monthly_allowance: Vec<u8>,
}

#[derive(Default)]
struct Cache {
    features: HashMap<Vec<u8>, Feature>,
    plans: HashMap<Vec<u8>, Plan>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    /// The relations last found (kept while stale: the invalidation
    /// callback matches oids against them).
    static SCHEMA: Cell<Option<Schema>> = const { Cell::new(None) };
    /// On a Citus cluster: where each account's shards are (found with SCHEMA).
    static CITUS: RefCell<Option<Citus>> = const { RefCell::new(None) };
    /// On a Citus cluster: this node's shards of plans and features (their
    /// catalog trigger invalidates the shard, not the shell).
    static CATALOG_SHARDS: Cell<Option<(Oid, Oid)>> = const { Cell::new(None) };
}
/// Set by the invalidation callbacks, which may run in the middle of a
/// lookup; the cache is emptied (the relations found again) at the next
/// read, never under a reader.
static ROWS_STALE: AtomicBool = AtomicBool::new(false);
static SCHEMA_STALE: AtomicBool = AtomicBool::new(false);

/// Registers the invalidation callbacks (once per process, from _PG_init).
pub(crate) fn init() {
    // SAFETY: registering callbacks with static functions, at load time.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_changed), Datum::from(0));
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::NAMESPACEOID as i32,
            Some(namespace_changed),
            Datum::from(0),
        );
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn relcache_changed(_arg: Datum, relid: Oid) {
    // InvalidOid: every relation (after a cache reset).
    let every = relid == pg_sys::InvalidOid;
    let known = SCHEMA.with(Cell::get);
    let catalog_shard = CATALOG_SHARDS
        .with(Cell::get)
        .is_some_and(|(plans, features)| relid == plans || relid == features);
    if every || catalog_shard || known.is_some_and(|s| relid == s.features || relid == s.plans) {
        ROWS_STALE.store(true, Ordering::Relaxed);
    }
    if every || known.is_some_and(|s| s.holds(relid)) {
        SCHEMA_STALE.store(true, Ordering::Relaxed);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn namespace_changed(_arg: Datum, _cache: i32, _hash: u32) {
    SCHEMA_STALE.store(true, Ordering::Relaxed);
}

/// The extension's relations, the cache brought up to date with committed
/// changes first; None if the schema is missing or incomplete, or
/// distributed by Citus (whose calls take `shards_of`). Called once per
/// call below SQL, before any lookup.
pub(crate) unsafe fn schema() -> Option<Schema> {
    let schema = current()?;
    CITUS.with(|c| c.borrow().is_none()).then_some(schema)
}

/// The relations holding `account_id`'s rows (a text datum): the
/// extension's on a single node; on a Citus cluster the shards of the
/// account on this node, locked against a move, or None when they are on
/// another node (the caller declines: the SQL path, routed by Citus, decides).
pub(crate) unsafe fn shards_of(account_id: Datum) -> Option<Schema> {
    let schema = current()?;
    let shards = CITUS.with(|c| c.borrow().as_ref().map(|citus| citus.shards_of(account_id)));
    match shards {
        None => Some(schema),
        Some(None) => None,
        // (with the map stale, decline: the rows go where Citus routes the
        // SQL path)
        Some(Some(shards)) => map_still_current().then_some(shards),
    }
}

/// On a Citus cluster, the shard groups this node holds, each as (its
/// accounts shard's id, its relations), locked against a move for the rest
/// of the transaction; none on a single node.
pub(crate) unsafe fn local_shard_groups() -> Vec<(i64, Schema)> {
    loop {
        if current().is_none() {
            return Vec::new();
        }
        let groups = CITUS.with(|c| {
            c.borrow()
                .as_ref()
                .map(|citus| citus.local_groups())
                .unwrap_or_default()
        });
        // (with the map stale, read it again: maintenance cannot decline)
        if map_still_current() {
            return groups;
        }
    }
}

/// After the caller took shard locks through the map: is the map still
/// current? A move that switched one of those shards to another node while
/// the caller waited for its lock has committed by now, and its
/// invalidation is here; a map read before it would send the caller's
/// writes to the shard the move left behind.
unsafe fn map_still_current() -> bool {
    pg_sys::AcceptInvalidationMessages();
    !SCHEMA_STALE.load(Ordering::Relaxed)
}

/// Is the install distributed by Citus (as far as this session knows)?
pub(crate) unsafe fn distributed() -> bool {
    current().is_some() && CITUS.with(|c| c.borrow().is_some())
}

unsafe fn current() -> Option<Schema> {
    pg_sys::AcceptInvalidationMessages();
    if ROWS_STALE.swap(false, Ordering::Relaxed) {
        CACHE.with(|c| *c.borrow_mut() = Cache::default());
    }
    let known = SCHEMA.with(Cell::get);
    if !SCHEMA_STALE.swap(false, Ordering::Relaxed) && known.is_some() {
        return known;
    }
    let Some(found) = Schema::find() else {
        // Nothing kept: the next call looks again (and no rows are cached
        // for relations this session no longer knows).
        SCHEMA.with(|s| s.set(None));
        CITUS.with(|c| *c.borrow_mut() = None);
        CATALOG_SHARDS.with(|c| c.set(None));
        CACHE.with(|c| *c.borrow_mut() = Cache::default());
        return None;
    };
    // Found again: rows cached under other relations are not theirs.
    if known.is_some_and(|k| k.features != found.features || k.plans != found.plans) {
        CACHE.with(|c| *c.borrow_mut() = Cache::default());
    }
    let citus = Citus::load(&found);
    CATALOG_SHARDS.with(|c| c.set(citus.as_ref().and_then(Citus::catalog_shards)));
    CITUS.with(|c| *c.borrow_mut() = citus);
    // (rows cached from other shards of the catalogs are theirs too: the
    // same rows, replicated)
    SCHEMA.with(|s| s.set(Some(found)));
    Some(found)
}

/// The feature named by `name` (a text datum): its id and cost (a datum
/// of this call); None if there is none.
pub(crate) unsafe fn feature(schema: &Schema, name: Datum) -> Option<(i16, Datum)> {
    let load = || {
        let table = Table::open(schema.features, pg_sys::AccessShareLock);
        let row = table.lookup(schema.features_key, name)?;
        Some(Feature {
            id: row.get(table.col(c"feature_id")?)?.value() as i16,
            cost: varlena_bytes(row.get(table.col(c"cost")?)?),
        })
    };
    cached(
        |c| &mut c.features,
        name,
        load,
        |f| (f.id, varlena_datum(&f.cost)),
    )
}

/// The plan named by `name` (a text datum): its daily limit and monthly
/// allowance (datums of this call); None if there is none.
pub(crate) unsafe fn plan(schema: &Schema, name: Datum) -> Option<(Option<Datum>, Datum)> {
    let load = || {
        let table = Table::open(schema.plans, pg_sys::AccessShareLock);
        let row = table.lookup(schema.plans_key, name)?;
        Some(Plan {
            daily_limit: row
                .get(table.col(c"daily_limit")?)
                .map(|d| varlena_bytes(d)),
            monthly_allowance: varlena_bytes(row.get(table.col(c"monthly_allowance")?)?),
        })
    };
    let view = |p: &Plan| {
        (
            p.daily_limit.as_deref().map(|b| varlena_datum(b)),
            varlena_datum(&p.monthly_allowance),
        )
    };
    cached(|c| &mut c.plans, name, load, view)
}

/// The row of one cached table named by `name`, loaded on a miss, as `view`
/// makes it for this call. Nothing is stored if an invalidation came in
/// while loading (the next read starts afresh).
unsafe fn cached<V, R>(
    table: fn(&mut Cache) -> &mut HashMap<Vec<u8>, V>,
    name: Datum,
    load: impl FnOnce() -> Option<V>,
    view: impl Fn(&V) -> R,
) -> Option<R> {
    let key = text_bytes(name);
    let hit = CACHE.with(|c| table(&mut c.borrow_mut()).get(key).map(&view));
    if hit.is_some() {
        return hit;
    }
    let loaded = load()?;
    let found = view(&loaded);
    if !ROWS_STALE.load(Ordering::Relaxed) {
        CACHE.with(|c| table(&mut c.borrow_mut()).insert(key.to_vec(), loaded));
    }
    Some(found)
}

v1_functions!(pg_finfo_credits_catalog_changed);

/// `credits_internal._catalog_changed()`: a statement trigger on plans and features.
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn credits_catalog_changed(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    let context = (*fcinfo).context;
    if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
        pgrx::error!("credits_internal._catalog_changed() is a trigger function");
    }
    let trigger = context as *mut pg_sys::TriggerData;
    pg_sys::CacheInvalidateRelcache((*trigger).tg_relation);
    // A trigger returns a (here null) pointer, never SQL NULL.
    Datum::from(0)
}
