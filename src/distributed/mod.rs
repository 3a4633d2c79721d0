//! Scale-out on Citus: `credits.distribute()` turns an install into a
//! distributed one (per-account tables sharded by account, catalogs
//! replicated, per-account calls delegated to the node holding the
//! account), and the code below SQL finds an account's shards on its node.
//! docs/citus.md says when and how.

use pgrx::prelude::*;

pub(crate) mod shards;

extension_sql_file!(
    "distribute.sql",
    name = "distribute",
    requires = [
        "internal",
        "metering",
        "holds",
        "accounts",
        "reporting",
        "maintenance",
        "float_amounts"
    ]
);
