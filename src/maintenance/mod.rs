//! Maintenance: durable window resets, expiries and the background worker
//! that runs them at UTC boundaries. The logic is SQL (`maintenance.sql`),
//! callable by hand as `CALL credits.run_maintenance()`; the worker is a thin
//! loop around it.

use pgrx::prelude::*;

pub mod worker;

extension_sql_file!("maintenance.sql", name = "maintenance", requires = ["events", "internal"]);
