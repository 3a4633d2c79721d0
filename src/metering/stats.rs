//! Activity counters in shared memory (`credits.stats`): charges, denials,
//! refunds and holds per database, plan and feature, as pg_stat_statements
//! keeps its counters. A denied `debit` raises UC001 and rolls its
//! transaction back, so nothing in a table can record it; a counter in
//! shared memory survives the rollback. Counters count calls, not committed
//! results (a charge rolled back later still counted), since the server
//! started or `credits.stats_reset()`.
//!
//! A fixed array of slots, one per (database, plan, feature) seen: a slot
//! is claimed once (its key written, then published), after which every
//! count is one atomic add, with no lock on the debit path. Two backends
//! may claim a slot for the same key at once; readers add them up.
//! Without shared_preload_libraries there is no shared memory: nothing is
//! counted and the view is empty.

use pgrx::pg_sys::{self, Datum};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use crate::pg::fmgr::v1_functions;

const SLOTS: usize = 1024;
/// Plans are at most 63 bytes (schema.sql); a longer name is cut here.
const NAME: usize = 64;

const FREE: u32 = 0;
const CLAIMED: u32 = 1;
const READY: u32 = 2;

/// What is counted, in the order of a slot's counters.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Charge = 0,
    Denial = 1,
    Refund = 2,
    Hold = 3,
}

struct Slot {
    state: AtomicU32,
    database: AtomicU32,
    feature: AtomicI32,
    plan: [AtomicU64; NAME / 8],
    counts: [AtomicU64; 4],
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            state: AtomicU32::new(FREE),
            database: AtomicU32::new(0),
            feature: AtomicI32::new(0),
            plan: [const { AtomicU64::new(0) }; NAME / 8],
            counts: [const { AtomicU64::new(0) }; 4],
        }
    }
}

pub(crate) struct Stats {
    slots: [Slot; SLOTS],
}

// SAFETY: atomics only, no pointers: valid in every process that maps it.
unsafe impl PGRXSharedMemory for Stats {}

static STATS: PgAtomic<Stats> = unsafe { PgAtomic::new(c"credits_stats") };

/// Whether the shared memory exists (the library was preloaded: set in the
/// postmaster, inherited by every backend it forks).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// From _PG_init, while shared_preload_libraries loads.
// (pg_shmem_init! tests features of PostgreSQL versions this crate does not build for)
#[allow(unexpected_cfgs)]
pub(crate) fn init() {
    pg_shmem_init!(
        STATS = Stats {
            slots: [const { Slot::new() }; SLOTS]
        }
    );
    ENABLED.store(true, Ordering::Relaxed);
}

/// A plan name as the slot stores it: zero-padded words.
fn plan_words(plan: &[u8]) -> [u64; NAME / 8] {
    let mut bytes = [0u8; NAME];
    let n = plan.len().min(NAME);
    bytes[..n].copy_from_slice(&plan[..n]);
    let mut words = [0u64; NAME / 8];
    for (i, w) in words.iter_mut().enumerate() {
        *w = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
    }
    words
}

/// Count one `kind` for this database, `plan` and feature.
pub(crate) fn count(kind: Kind, plan: &[u8], feature: i16) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: MyDatabaseId is this backend's database, set before any call.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let words = plan_words(plan);
    let slots = &STATS.get().slots;
    let matches = |s: &Slot| {
        s.database.load(Ordering::Relaxed) == database
            && s.feature.load(Ordering::Relaxed) == feature as i32
            && s.plan
                .iter()
                .zip(words)
                .all(|(a, w)| a.load(Ordering::Relaxed) == w)
    };
    for slot in slots {
        match slot.state.load(Ordering::Acquire) {
            READY if matches(slot) => {
                slot.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
                return;
            }
            FREE => {
                // Claim it (or lose it to another backend, and look on).
                if slot
                    .state
                    .compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    slot.database.store(database, Ordering::Relaxed);
                    slot.feature.store(feature as i32, Ordering::Relaxed);
                    for (a, w) in slot.plan.iter().zip(words) {
                        a.store(w, Ordering::Relaxed);
                    }
                    slot.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
                    slot.state.store(READY, Ordering::Release);
                    return;
                }
            }
            _ => {}
        }
    }
    // Every slot taken: this key is not counted (the view says how many slots are used).
}

v1_functions!(pg_finfo_credits_count, pg_finfo_credits_stats_reset);

/// `credits_internal._count(kind "char", plan text, feature smallint)`: one
/// count from SQL (C = charge, N = denial, R = refund, H = hold).
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn credits_count(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    let args = crate::pg::fmgr::args(fcinfo);
    let (Some(kind), Some(plan), Some(feature)) = (args[0], args[1], args[2]) else {
        return Datum::from(0);
    };
    let kind = match kind.value() as u8 {
        b'C' => Kind::Charge,
        b'N' => Kind::Denial,
        b'R' => Kind::Refund,
        _ => Kind::Hold,
    };
    let plan = pgrx::varlena::text_to_rust_str_unchecked(plan.cast_mut_ptr());
    count(kind, plan.as_bytes(), feature.value() as i16);
    Datum::from(0)
}

/// `credits.stats_reset()`: this database's counters back to zero.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn credits_stats_reset(_fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    if ENABLED.load(Ordering::Relaxed) {
        let database = pg_sys::MyDatabaseId.to_u32();
        for slot in &STATS.get().slots {
            if slot.state.load(Ordering::Acquire) == READY
                && slot.database.load(Ordering::Relaxed) == database
            {
                for c in &slot.counts {
                    c.store(0, Ordering::Relaxed);
                }
            }
        }
    }
    Datum::from(0)
}

/// `credits_internal._stats()`: this database's slots, one row each (plan,
/// feature id, charges, denials, refunds, holds).
#[pg_extern(sql = false)]
fn stats() -> TableIterator<
    'static,
    (
        name!(plan, String),
        name!(feature_id, i16),
        name!(charges, i64),
        name!(denials, i64),
        name!(refunds, i64),
        name!(holds, i64),
    ),
> {
    let mut rows = Vec::new();
    if ENABLED.load(Ordering::Relaxed) {
        // SAFETY: this backend's database.
        let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
        for slot in &STATS.get().slots {
            if slot.state.load(Ordering::Acquire) != READY
                || slot.database.load(Ordering::Relaxed) != database
            {
                continue;
            }
            let mut bytes = Vec::with_capacity(NAME);
            for w in &slot.plan {
                bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(NAME);
            let n = |k: Kind| slot.counts[k as usize].load(Ordering::Relaxed) as i64;
            rows.push((
                String::from_utf8_lossy(&bytes[..end]).into_owned(),
                slot.feature.load(Ordering::Relaxed) as i16,
                n(Kind::Charge),
                n(Kind::Denial),
                n(Kind::Refund),
                n(Kind::Hold),
            ));
        }
    }
    TableIterator::new(rows)
}
