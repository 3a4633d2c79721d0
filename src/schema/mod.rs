//! The fixed schema (tables, seed catalogs, ledger guards), the internal
//! helpers every public function shares, and the per-session cache of the
//! catalog tables for the code below SQL.

use pgrx::prelude::*;

pub(crate) mod catalog_cache;

/// Per-process setup, from _PG_init.
pub fn init() {
    catalog_cache::init();
}

extension_sql_file!("schema.sql", name = "schema", bootstrap);
extension_sql_file!("internal.sql", name = "internal", requires = [now]);
extension_sql_file!(
    "comments.sql",
    name = "comments",
    requires = [
        now,
        "accounts",
        "holds",
        "maintenance",
        "reporting",
        "reporting_views",
        "replay",
        "rollups",
        "float_amounts",
        "distribute"
    ]
);
