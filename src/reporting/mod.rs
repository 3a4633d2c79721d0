//! Reporting: the usage display (`balance`) and the ledger audit (`verify`).

use pgrx::prelude::*;

extension_sql_file!("reporting.sql", name = "reporting", requires = ["internal"]);
extension_sql_file!(
    "views.sql",
    name = "reporting_views",
    requires = ["reporting"]
);
