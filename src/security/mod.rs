//! Least privilege: three roles and what each may do. Runs last, after
//! every object exists, so nothing is left callable by PUBLIC by accident.

use pgrx::prelude::*;

extension_sql_file!("privileges.sql", name = "privileges", finalize);
