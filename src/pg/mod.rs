//! PostgreSQL's C API as the code below SQL uses it: the V1 calling
//! convention and built-in functions (`fmgr`), numerics (`numeric`; exact
//! fixed-point arithmetic on their values in `decimal`),
//! rows read and written without executing a statement (`rows`), and errors
//! raised under Rust code kept with their SQLSTATE (`sqlstate`). Used by the
//! debit fast path (metering) and by window closing (maintenance).

pub(crate) mod decimal;
pub(crate) mod fmgr;
pub(crate) mod numeric;
pub(crate) mod rows;
pub(crate) mod sqlstate;
