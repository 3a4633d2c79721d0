//! Accounts: subscribe / plan changes, purchases, one-off grants.

use pgrx::prelude::*;

pub(crate) mod row;

extension_sql_file!("accounts.sql", name = "accounts", requires = ["internal"]);
