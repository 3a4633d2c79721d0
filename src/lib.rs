//! `credits`: prepaid AI usage credits metered and enforced inside the
//! PostgreSQL transaction. This file only wires the modules together; each
//! domain keeps its SQL beside its Rust.

use pgrx::prelude::*;

mod accounts;
mod clock;
mod distributed;
mod gucs;
mod maintenance;
mod metering;
mod pg;
mod reporting;
mod schema;
mod security;

pgrx::pg_module_magic!();

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // An error raised by PostgreSQL inside Rust code (a lock timeout, a
    // read-only transaction) reaches the client as PostgreSQL raised it:
    // pgrx would add a Rust backtrace to its DETAIL wherever RUST_BACKTRACE
    // is set in the server's environment (SPEC §4.10).
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    gucs::init();
    schema::init();
    // The worker can only be registered from shared_preload_libraries;
    // without it every call still sees its windows roll on time.
    // SAFETY: a flag the postmaster sets while it loads preloaded libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        gucs::init_worker_settings();
        metering::stats::init();
        maintenance::worker::register();
    }
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    /// The worker runs in pgrx's test database, as it would in production.
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'credits'",
            "credits.database = 'pgrx_tests'",
            "credits.maintenance_max_nap = 1",
        ]
    }
}
