//! Errors raised below the code in Rust reach the caller with their own
//! SQLSTATE. pgrx's guard turns an error raised by PostgreSQL under Rust
//! code into a panic and raises it again at the function's boundary, with
//! the SQLSTATE mapped through its list of PostgreSQL's own codes: any
//! other (this extension's UC001..., a user trigger's, Citus's) becomes
//! XX000, and an application that decides on the SQLSTATE decides wrong.
//! `keeping_sqlstate` runs a guarded function with an error context
//! callback on an unguarded frame: the callback notes an error's code and
//! message when it is raised, and when the guard raises the same message
//! again as XX000, puts the code back.

use pgrx::{pg_sys, PgLogLevel, PgSqlErrorCode};
use std::ffi::{c_int, c_void, CStr};

extern "C-unwind" {
    // (elog.c; not in pgrx's bindings)
    fn errcode(sqlerrcode: c_int) -> c_int;
}

/// The error being raised below, as the callback saw it.
#[derive(Default)]
struct Raised {
    code: i32,
    message: u64, // (a hash: this frame may be left by longjmp, so it owns nothing)
}

/// `f()` (which calls a `#[pg_guard]` function), with the SQLSTATE of an
/// error raised under it kept. This frame must hold nothing to drop: an
/// error leaves it by longjmp.
#[inline(always)]
pub(crate) unsafe fn keeping_sqlstate<T>(f: impl FnOnce() -> T) -> T {
    let mut raised = Raised::default();
    let mut callback = pg_sys::ErrorContextCallback {
        previous: pg_sys::error_context_stack,
        callback: Some(note_or_restore),
        arg: (&mut raised as *mut Raised).cast(),
    };
    pg_sys::error_context_stack = &mut callback;
    let result = f();
    pg_sys::error_context_stack = callback.previous;
    result
}

/// The error context callback: PostgreSQL calls it for every message
/// raised below (errfinish), the original error first and then the
/// guard's XX000 of the same message.
unsafe extern "C-unwind" fn note_or_restore(arg: *mut c_void) {
    let raised = &mut *arg.cast::<Raised>();
    // (CopyErrorData must not allocate in ErrorContext, where errfinish runs this)
    let context = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
    let data = pg_sys::CopyErrorData();
    pg_sys::MemoryContextSwitchTo(context);
    let error = &*data;
    if error.elevel >= PgLogLevel::ERROR as i32 {
        let message = if error.message.is_null() {
            0
        } else {
            hash(CStr::from_ptr(error.message).to_bytes())
        };
        let internal = PgSqlErrorCode::ERRCODE_INTERNAL_ERROR as i32;
        if error.sqlerrcode == internal
            && raised.code != 0
            && raised.code != internal
            && raised.message == message
        {
            errcode(raised.code);
        } else {
            *raised = Raised {
                code: error.sqlerrcode,
                message,
            };
        }
    }
    pg_sys::FreeErrorData(data);
}

fn hash(bytes: &[u8]) -> u64 {
    // FNV-1a: to recognise the same message raised again, not a secret
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Exports the V1 function `$exported` as a call of `$guarded` (its body,
/// a `#[pg_guard]` function) through `keeping_sqlstate`.
macro_rules! export_keeping_sqlstate {
    ($exported:ident => $guarded:ident) => {
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $exported(
            fcinfo: pgrx::pg_sys::FunctionCallInfo,
        ) -> pgrx::pg_sys::Datum {
            $crate::pg::sqlstate::keeping_sqlstate(|| $guarded(fcinfo))
        }
    };
}
pub(crate) use export_keeping_sqlstate;
