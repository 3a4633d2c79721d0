//! What a request must be before it is charged, in one copy for the SQL
//! functions and the debit fast path (fast_path.rs):
//!   `credits_internal._metadata_ok(jsonb)`        metadata is NULL or a JSON object of at most 4 kB;
//!   `credits_internal._fingerprint(VARIADIC text[])` a request's fingerprint, stored with its
//!                                        idempotency key (UC005 on a mismatch);
//!   `credits_internal._debit_request(feature, quantity, metadata)` a debit's fingerprint.
//! Fingerprints are md5(parts joined by chr(31), NULL as chr(30)) as a uuid:
//! the keys recorded by 0.1.0 (where this was SQL) still match.

use crate::pg::fmgr::{args, call, ret, text_array, text_bytes, v1_functions};
use md5::{Digest, Md5};
use pgrx::pg_sys::{self, Datum};

/// Metadata is stored on the ledger row it comes with: NULL, or a JSON
/// object of at most 4096 bytes as JSON text (SPEC §4.8: the limit does not
/// depend on how the value is stored; a compressed 1 MB value is 1 MB).
pub(crate) unsafe fn metadata_ok(metadata: Option<Datum>) -> bool {
    metadata_text(metadata).is_some()
}

/// Valid metadata as JSON text (a text datum; what its fingerprint hashes),
/// Some(None) for NULL; None when it is not valid metadata.
pub(crate) unsafe fn metadata_text(metadata: Option<Datum>) -> Option<Option<Datum>> {
    let Some(value) = metadata else {
        return Some(None);
    };
    // Its binary form, uncompressed, is no bigger than a few times its text:
    // far larger values are refused before they are printed.
    if pg_sys::toast_raw_datum_size(value) > 64 * 4096 {
        return None;
    }
    let jsonb = pg_sys::pg_detoast_datum(value.cast_mut_ptr()) as *const pg_sys::Jsonb;
    if (*jsonb).root.header & pg_sys::JB_FOBJECT == 0 {
        return None;
    }
    let text = text_of(pg_sys::jsonb_out, Datum::from(jsonb));
    (text_bytes(text).len() <= 4096).then_some(Some(text))
}

/// The fingerprint (a uuid datum) of a request made of text datums.
pub(crate) unsafe fn fingerprint(parts: &[Option<Datum>]) -> Datum {
    let mut joined: Vec<u8> = Vec::with_capacity(64);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            joined.push(0x1f);
        }
        match part {
            None => joined.push(0x1e),
            Some(text) => joined.extend_from_slice(text_bytes(*text)),
        }
    }
    // md5 in Rust: PostgreSQL's md5() goes through OpenSSL, whose per-call
    // set-up cost more than the rest of a debit's checks.
    let digest: [u8; 16] = Md5::digest(&joined).into();
    let uuid = pg_sys::palloc(16) as *mut u8;
    std::ptr::copy_nonoverlapping(digest.as_ptr(), uuid, 16);
    Datum::from(uuid)
}

/// A debit's fingerprint: feature, quantity (trailing zeros trimmed) and
/// metadata as JSON text (metadata_text: printed once per debit).
pub(crate) unsafe fn debit_request(
    feature: Option<Datum>,
    quantity: Option<Datum>,
    metadata_text: Option<Datum>,
) -> Datum {
    let quantity =
        quantity.map(|q| text_of(pg_sys::numeric_out, call(pg_sys::numeric_trim_scale, &[q])));
    let debit = pg_sys::cstring_to_text(c"debit".as_ptr());
    fingerprint(&[Some(Datum::from(debit)), feature, quantity, metadata_text])
}

/// A value as text, through its type's output function (what `::text` does).
unsafe fn text_of(output: unsafe fn(pg_sys::FunctionCallInfo) -> Datum, value: Datum) -> Datum {
    let cstring = call(output, &[value]);
    Datum::from(pg_sys::cstring_to_text(
        cstring.cast_mut_ptr::<std::ffi::c_char>() as *const _,
    ))
}

v1_functions!(
    pg_finfo_credits_metadata_ok,
    pg_finfo_credits_fingerprint,
    pg_finfo_credits_debit_request
);

/// `credits_internal._metadata_ok(value jsonb) RETURNS boolean`
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn credits_metadata_ok(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    Datum::from(metadata_ok(args(fcinfo)[0]))
}

/// `credits_internal._fingerprint(VARIADIC parts text[]) RETURNS uuid`
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn credits_fingerprint(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    let Some(array) = args(fcinfo)[0] else {
        return ret(fcinfo, None);
    };
    let parts = text_array(array);
    ret(fcinfo, Some(fingerprint(&parts)))
}

/// `credits_internal._debit_request(feature text, quantity numeric, metadata jsonb) RETURNS uuid`
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn credits_debit_request(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    let a = args(fcinfo);
    let metadata = a[2].map(|m| text_of(pg_sys::jsonb_out, m));
    ret(fcinfo, Some(debit_request(a[0], a[1], metadata)))
}
