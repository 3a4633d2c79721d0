//! The V1 calling convention (`LANGUAGE c` functions) and calls of
//! PostgreSQL's built-in functions.

use pgrx::pg_sys::{self, Datum};

/// A built-in function of PostgreSQL on up to three non-null arguments,
/// with a call frame on the stack: a debit makes a dozen such calls
/// (numeric arithmetic, nextval), and building a frame on the heap for each
/// cost as much as the arithmetic.
pub(crate) unsafe fn call(
    f: unsafe fn(pg_sys::FunctionCallInfo) -> Datum,
    args: &[Datum],
) -> Datum {
    call_nullable(f, args).expect("a built-in function's result")
}

/// `call` of a function that may return NULL (None).
pub(crate) unsafe fn call_nullable(
    f: unsafe fn(pg_sys::FunctionCallInfo) -> Datum,
    args: &[Datum],
) -> Option<Datum> {
    // FunctionCallInfoBaseData ends in a flexible array of arguments.
    #[repr(C)]
    struct Frame {
        base: pg_sys::FunctionCallInfoBaseData,
        args: [pg_sys::NullableDatum; 3],
    }
    assert!(args.len() <= 3, "call() takes up to three arguments");
    let mut frame: Frame = std::mem::zeroed();
    frame.base.nargs = args.len() as i16;
    for (slot, &value) in frame.args.iter_mut().zip(args) {
        slot.value = value;
    }
    let result = f(&mut frame.base);
    (!frame.base.isnull).then_some(result)
}

/// The arguments of a V1 call, NULL as None.
pub(crate) unsafe fn args(fcinfo: pg_sys::FunctionCallInfo) -> Vec<Option<Datum>> {
    (0..(*fcinfo).nargs as usize)
        .map(|i| {
            if pgrx::fcinfo::pg_arg_is_null(fcinfo, i) {
                None
            } else {
                Some(pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, i))
            }
        })
        .collect()
}

/// Returns `value` from a V1 function, NULL as None.
pub(crate) unsafe fn ret(fcinfo: pg_sys::FunctionCallInfo, value: Option<Datum>) -> Datum {
    (*fcinfo).isnull = value.is_none();
    value.unwrap_or(Datum::from(0))
}

/// Declares V1 functions callable from SQL (`LANGUAGE c`).
macro_rules! v1_functions {
    ($($finfo:ident),* $(,)?) => {
        $(
            #[no_mangle]
            #[doc(hidden)]
            pub extern "C" fn $finfo() -> &'static pgrx::pg_sys::Pg_finfo_record {
                const V1: pgrx::pg_sys::Pg_finfo_record = pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
                &V1
            }
        )*
    };
}
pub(crate) use v1_functions;

/// The elements of a text[] datum, NULL as None.
pub(crate) unsafe fn text_array(array: Datum) -> Vec<Option<Datum>> {
    array_elements(array, pg_sys::TEXTOID)
}

/// The elements of an array of `element`, a variable-length type aligned
/// as an int (text, numeric, jsonb), NULL as None.
pub(crate) unsafe fn array_elements(array: Datum, element: pg_sys::Oid) -> Vec<Option<Datum>> {
    let array = pg_sys::pg_detoast_datum(array.cast_mut_ptr()) as *mut pg_sys::ArrayType;
    let (mut values, mut nulls, mut n) = (std::ptr::null_mut(), std::ptr::null_mut(), 0);
    pg_sys::deconstruct_array(
        array,
        element,
        -1,
        false,
        pg_sys::TYPALIGN_INT as std::ffi::c_char,
        &mut values,
        &mut nulls,
        &mut n,
    );
    (0..n as usize)
        .map(|i| (!*nulls.add(i)).then(|| *values.add(i)))
        .collect()
}

/// A text datum of `value`.
pub(crate) unsafe fn text(value: &str) -> Datum {
    Datum::from(pg_sys::cstring_to_text_with_len(
        value.as_ptr() as *const std::ffi::c_char,
        value.len() as i32,
    ))
}

/// A text datum's bytes, valid for this call.
pub(crate) unsafe fn text_bytes<'a>(value: Datum) -> &'a [u8] {
    let text = pg_sys::pg_detoast_datum_packed(value.cast_mut_ptr());
    pgrx::varlena::varlena_to_byte_slice(text)
}

/// A text datum's contents (invalid UTF-8 replaced).
pub(crate) unsafe fn text_string(value: Datum) -> String {
    String::from_utf8_lossy(text_bytes(value)).into_owned()
}

/// The bytes of a varlena datum (its whole value, header included).
pub(crate) unsafe fn varlena_bytes(value: Datum) -> Vec<u8> {
    let ptr = pg_sys::pg_detoast_datum_packed(value.cast_mut_ptr());
    let len = pgrx::varlena::varsize_any(ptr);
    std::slice::from_raw_parts(ptr as *const u8, len).to_vec()
}

/// Varlena datums made once per session and kept for its lifetime (copied
/// into TopMemoryContext), by key: values that never change, handed to any
/// number of calls (functions and tuple forming copy what they keep).
pub(crate) struct SessionDatums<K>(std::cell::RefCell<Vec<(K, Datum)>>);

impl<K: PartialEq + Copy> SessionDatums<K> {
    pub(crate) const fn new() -> Self {
        SessionDatums(std::cell::RefCell::new(Vec::new()))
    }

    /// The datum kept for `key`; made by `make` (in the caller's memory
    /// context) the first time.
    pub(crate) unsafe fn get(&self, key: K, make: impl FnOnce() -> Datum) -> Datum {
        let kept = self
            .0
            .borrow()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|&(_, d)| d);
        if let Some(datum) = kept {
            return datum;
        }
        let made = make();
        let caller = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let kept = varlena_datum(&varlena_bytes(made));
        pg_sys::MemoryContextSwitchTo(caller);
        self.0.borrow_mut().push((key, kept));
        kept
    }
}

/// A datum in the current memory context holding `bytes` (from varlena_bytes).
pub(crate) unsafe fn varlena_datum(bytes: &[u8]) -> Datum {
    let copy = pg_sys::palloc(bytes.len()) as *mut u8;
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), copy, bytes.len());
    Datum::from(copy)
}
