//! Numeric arithmetic on datums, through PostgreSQL's own functions (the
//! SQL path's arithmetic, so both paths round and compare alike).

use crate::pg::fmgr::{call, SessionDatums};
use pgrx::pg_sys::{self, Datum};

pub(crate) unsafe fn add(a: Datum, b: Datum) -> Datum {
    call(pg_sys::numeric_add, &[a, b])
}

pub(crate) unsafe fn sub(a: Datum, b: Datum) -> Datum {
    call(pg_sys::numeric_sub, &[a, b])
}

/// -1, 0 or 1, as `a` is below, equal to or above `b`.
pub(crate) unsafe fn cmp(a: Datum, b: Datum) -> i32 {
    call(pg_sys::numeric_cmp, &[a, b]).value() as i32
}

/// The numeric `v`, made once per session (callers pass constants, and
/// PostgreSQL's numeric functions never modify their arguments): the
/// month-end reset asks for zero several times per account.
pub(crate) unsafe fn from_i64(v: i64) -> Datum {
    thread_local! {
        static MADE: SessionDatums<i64> = const { SessionDatums::new() };
    }
    MADE.with(|made| made.get(v, || call(pg_sys::int8_numeric, &[Datum::from(v)])))
}
