//! Reporting: the usage display (`balance`), the ledger audit (`verify`,
//! and `ledger_balance`, a balance rebuilt from ledger rows alone), the
//! usage rollups and the views analysts read.

use pgrx::prelude::*;

extension_sql_file!(
    "reporting.sql",
    name = "reporting",
    requires = ["internal", "rollups"]
);
extension_sql_file!("rollups.sql", name = "rollups", requires = ["internal"]);
extension_sql_file!("replay.sql", name = "replay", requires = ["internal"]);
extension_sql_file!(
    "views.sql",
    name = "reporting_views",
    requires = ["reporting", "rollups"]
);
