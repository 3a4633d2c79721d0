//! The code below SQL on a Citus cluster: an account's rows live in shard
//! relations (`accounts_102008`, `ledger_102012`, ...) on the node Citus
//! placed them on, and the relations named `credits.accounts` etc. are empty
//! shells there. So every call below SQL works on the shards of its
//! account's node, found here, or declines (the SQL path, which Citus routes,
//! decides then); it never writes a shell.
//!
//! What Citus's metadata says (which tables are distributed, their hash
//! ranges, which shards this node holds) is read once per session and read
//! again after a relcache invalidation of any of the extension's tables
//! (Citus sends one when a shard is created, moved or dropped).

use crate::pg::fmgr::{call_nullable, text_bytes};
use crate::pg::rows::{Schema, ShardIds, Table};
use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::prelude::*;
use std::ffi::CString;

/// This node's view of a distributed install.
pub(crate) struct Citus {
    /// Per shard index (the hash ranges of credits.accounts, in order): the
    /// range's first and last hash value and the accounts shard's id.
    ranges: Vec<(i32, i32, i64)>,
    /// Per shard index: the shard relations when this node holds them.
    local: Vec<Option<Schema>>,
}

/// The per-account tables whose shards the code below SQL opens (as
/// `load` fills ShardIds: in this order).
const TABLES: [&str; 6] = [
    "accounts",
    "ledger",
    "idempotency",
    "stripes",
    "closed_windows",
    "events",
];

impl Citus {
    /// The distributed install `base` (the shells) belongs to; None when
    /// credits.accounts is not distributed (a single node, Citus or not).
    pub(crate) unsafe fn load(base: &Schema) -> Option<Citus> {
        let catalog = Oid::from(pg_sys::PG_CATALOG_NAMESPACE);
        if pg_sys::get_relname_relid(c"pg_dist_partition".as_ptr(), catalog) == pg_sys::InvalidOid {
            return None;
        }
        // Citus's placements as committed now: the statement's snapshot (which
        // SPI reads with in a transaction that has written nothing) can
        // predate the move whose invalidation brought this reload, and a map
        // read with it would keep this session writing to the shard the move
        // left behind (the Citus tier lost debits that way, once in ~12 runs).
        pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
        let loaded = Self::load_now(base);
        pg_sys::PopActiveSnapshot();
        loaded
    }

    /// (load, reading with the active snapshot)
    unsafe fn load_now(base: &Schema) -> Option<Citus> {
        Spi::connect(|client| {
            let distributed = client
                .select(
                    "SELECT 1 FROM pg_catalog.pg_dist_partition
                      WHERE logicalrelid = 'credits.accounts'::pg_catalog.regclass",
                    None,
                    &[],
                )
                .ok()?
                .len();
            if distributed == 0 {
                return None;
            }
            let group = client
                .select(
                    "SELECT groupid::bigint FROM pg_catalog.pg_dist_local_group",
                    None,
                    &[],
                )
                .ok()?
                .first()
                .get_one::<i64>()
                .ok()??;
            // Each table's shards in hash order, and whether this node has
            // a placement of each; reference tables (plans, features) have
            // one shard, placed on every node.
            let shards = |table: &str| -> Option<Vec<(i64, i32, i32, bool)>> {
                let rows = client
                    .select(
                        "SELECT s.shardid, coalesce(s.shardminvalue, '0')::int, coalesce(s.shardmaxvalue, '0')::int,
                                EXISTS (SELECT 1 FROM pg_catalog.pg_dist_placement p, pg_catalog.pg_dist_local_group g
                                         WHERE p.shardid = s.shardid AND p.groupid = g.groupid)
                           FROM pg_catalog.pg_dist_shard s
                          WHERE s.logicalrelid = $1::pg_catalog.regclass
                          ORDER BY coalesce(s.shardminvalue, '0')::int",
                        None,
                        &[format!("credits.{table}").into()],
                    )
                    .ok()?;
                let mut out = Vec::new();
                for row in rows {
                    out.push((
                        row.get::<i64>(1).ok()??,
                        row.get::<i32>(2).ok()??,
                        row.get::<i32>(3).ok()??,
                        row.get::<bool>(4).ok()??,
                    ));
                }
                Some(out)
            };
            let per_table = TABLES
                .iter()
                .map(|t| shards(t))
                .collect::<Option<Vec<_>>>()?;
            let plans = *shards("plans")?.first()?;
            let features = *shards("features")?.first()?;
            let accounts = &per_table[0];
            if per_table.iter().any(|t| t.len() != accounts.len()) {
                return None;
            }
            let ranges = accounts
                .iter()
                .map(|&(id, lo, hi, _)| (lo, hi, id))
                .collect();
            let local = (0..accounts.len())
                .map(|i| {
                    let ids = ShardIds {
                        accounts: per_table[0][i].0,
                        ledger: per_table[1][i].0,
                        idempotency: per_table[2][i].0,
                        stripes: per_table[3][i].0,
                        closed_windows: per_table[4][i].0,
                        events: per_table[5][i].0,
                        plans: plans.0,
                        features: features.0,
                    };
                    // (every colocated shard of the index here, or none)
                    let here = per_table.iter().all(|t| t[i].3) && plans.3 && features.3;
                    if here {
                        base.on_shards(ids, group)
                    } else {
                        None
                    }
                })
                .collect();
            Some(Citus { ranges, local })
        })
    }

    /// This node's shards of plans and features (the same on every shard
    /// index: reference tables).
    pub(crate) fn catalog_shards(&self) -> Option<(Oid, Oid)> {
        self.local
            .iter()
            .flatten()
            .next()
            .map(|s| (s.plans, s.features))
    }

    /// The shard relations of `account_id` (a text datum) when this node
    /// holds them, locked against a shard move for the rest of the
    /// transaction; None when another node does.
    pub(crate) unsafe fn shards_of(&self, account_id: Datum) -> Option<Schema> {
        let index = self.index_of(account_id)?;
        let schema = self.local[index]?;
        lock_shard_metadata(self.ranges[index].2);
        Some(schema)
    }

    /// The shard groups this node holds, locked (see catalog_cache).
    pub(crate) unsafe fn local_groups(&self) -> Vec<(i64, Schema)> {
        self.ranges
            .iter()
            .zip(&self.local)
            .filter_map(|(&(_, _, accounts_shard), local)| {
                let schema = (*local)?;
                lock_shard_metadata(accounts_shard);
                Some((accounts_shard, schema))
            })
            .collect()
    }

    /// The shard index of an account: Citus hashes a text distribution
    /// column with hashtext in the column's collation ("C": the bytes).
    unsafe fn index_of(&self, account_id: Datum) -> Option<usize> {
        let bytes = text_bytes(account_id);
        let hash = hash_bytes(bytes.as_ptr(), bytes.len() as i32) as i32;
        self.ranges
            .iter()
            .position(|&(lo, hi, _)| lo <= hash && hash <= hi)
    }
}

extern "C-unwind" {
    /// PostgreSQL's hash of bytes (common/hashfn.c), which hashtext uses
    /// for a deterministic collation.
    fn hash_bytes(k: *const u8, keylen: i32) -> u32;
}

/// Takes the lock every Citus writer of a shard takes (ShareLock on the
/// shard's metadata): a shard move waits for it before it switches the
/// shard to its new node, so rows written under it are moved with the shard.
unsafe fn lock_shard_metadata(shard_id: i64) {
    type LockFn = unsafe extern "C-unwind" fn(i64, i32);
    thread_local! {
        static LOCK: std::cell::Cell<Option<LockFn>> = const { std::cell::Cell::new(None) };
    }
    let lock = LOCK.with(|cell| {
        cell.get().unwrap_or_else(|| {
            let library = CString::new("$libdir/citus").unwrap();
            let name = CString::new("LockShardDistributionMetadata").unwrap();
            let f = pg_sys::load_external_function(
                library.as_ptr(),
                name.as_ptr(),
                true,
                std::ptr::null_mut(),
            );
            // SAFETY: Citus's void LockShardDistributionMetadata(int64, LOCKMODE).
            let f = std::mem::transmute::<*mut std::ffi::c_void, LockFn>(f);
            cell.set(Some(f));
            f
        })
    });
    lock(shard_id, pg_sys::ShareLock as i32);
}

/// The relation `name_shardid` in `namespace`, if this node has it.
pub(crate) fn shard_relation(namespace: Oid, name: &str, shard_id: i64) -> Option<Oid> {
    let name = CString::new(format!("{name}_{shard_id}")).ok()?;
    // SAFETY: a syscache lookup by name.
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), namespace) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// Runs `statements` (SPI) allowed to read and write the account's tables
/// where Citus would refuse: closing windows runs inside a query on the
/// account's shard (`_lock_account` routes it there), and Citus refuses
/// a query on distributed tables from there unless told it may. They only
/// touch the same account, on the same shard, which the caller holds.
pub(crate) fn nested_statements<R>(statements: impl FnOnce() -> R) -> R {
    // SAFETY: a GUC nest level, as a function's SET clause makes one; an
    // error on the way is cleaned up by the transaction's abort.
    unsafe {
        let distributed = crate::schema::catalog_cache::distributed();
        let level = pg_sys::NewGUCNestLevel();
        if distributed {
            pg_sys::set_config_option(
                c"citus.allow_nested_distributed_execution".as_ptr(),
                c"on".as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        let result = statements();
        pg_sys::AtEOXact_GUC(true, level);
        result
    }
}

/// Do this node's next ledger ids follow the account's last entry? Each
/// node makes ids from its own sequence, so an account whose entries were
/// made on another node (the coordinator, before a shard move) may have
/// ids ahead of this node's: the SQL path then moves the sequence on
/// (credits_internal._follow_history) and the fast path declines to it.
/// Always true on a single node.
pub(crate) unsafe fn ids_follow_history(schema: &Schema, account_id: Datum) -> Option<bool> {
    let Some(shard) = schema.shard else {
        return Some(true);
    };
    let ledger = Table::open(schema.ledger, pg_sys::AccessShareLock);
    let Some(last) = ledger.last_of(shard.ledger_key, account_id) else {
        return Some(true);
    };
    let last = last.get(ledger.col(c"entry_id")?)?.value() as i64;
    let made = call_nullable(
        pg_sys::pg_sequence_last_value,
        &[Datum::from(schema.ledger_seq)],
    )
    .map_or(0, |v| v.value() as i64);
    // An id is (sequence value << 16) | node group, and the next value
    // here is above `made`: so made equal to the last entry's value is
    // enough (it is, when this node made the account's last entry; with
    // `>` every debit of an account after its own went the SQL path).
    Some(made >= last >> 16)
}

/// Moves this node's sequences past the account's last entry and event
/// (credits_internal._follow_history, which every SQL-path writer runs in
/// _lock_account), for a writer below SQL that cannot decline instead
/// (closing windows).
pub(crate) unsafe fn follow_history(account_id: Datum) {
    nested_statements(|| {
        Spi::run_with_args(
            "SELECT credits_internal._follow_history($1)",
            &[pgrx::datum::DatumWithOid::from(
                crate::pg::fmgr::text_string(account_id),
            )],
        )
    })
    .expect("credits: the account's ids followed");
}

/// `credits_internal._distributed() RETURNS boolean`.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn credits_distributed(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    crate::pg::fmgr::ret(
        fcinfo,
        Some(Datum::from(crate::schema::catalog_cache::distributed())),
    )
}

/// `credits_internal._elsewhere(account_id text) RETURNS boolean`: on Citus,
/// are the account's shards on another node? (False on a single node.)
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn credits_elsewhere(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    use crate::schema::catalog_cache;
    let elsewhere = match crate::pg::fmgr::args(fcinfo)[0] {
        Some(account_id) => {
            catalog_cache::distributed() && catalog_cache::shards_of(account_id).is_none()
        }
        None => false,
    };
    crate::pg::fmgr::ret(fcinfo, Some(Datum::from(elsewhere)))
}
crate::pg::fmgr::v1_functions!(pg_finfo_credits_distributed, pg_finfo_credits_elsewhere);
