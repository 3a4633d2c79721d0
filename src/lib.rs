//! `credits`: prepaid AI usage credits metered and enforced inside the
//! PostgreSQL transaction. This file only wires the modules together; each
//! domain keeps its SQL beside its Rust.

use pgrx::prelude::*;

mod accounts;
mod clock;
mod gucs;
mod metering;
mod reporting;
mod schema;

pgrx::pg_module_magic!();

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
