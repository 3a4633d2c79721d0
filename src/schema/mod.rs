//! The fixed schema (tables, seed catalogs, ledger guards) and the internal
//! helpers every public function shares.

use pgrx::prelude::*;

extension_sql_file!("schema.sql", name = "schema", bootstrap);
extension_sql_file!("internal.sql", name = "internal", requires = [now]);
