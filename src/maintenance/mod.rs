//! Maintenance: durable window resets, expiries and the background worker
//! that runs them at UTC boundaries. The runs are SQL (`maintenance.sql`),
//! callable by hand as `CALL credits.run_maintenance()`; closing an
//! account's windows is Rust (`close.rs`), shared with the debit fast path;
//! the worker is a thin loop around the SQL.

use pgrx::prelude::*;

pub(crate) mod close;
pub mod worker;

extension_sql_file!(
    "maintenance.sql",
    name = "maintenance",
    requires = ["events", "internal"]
);

/// In-process tests (`cargo pgrx test`): the worker is registered from
/// shared_preload_libraries and connected to the test database.
#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn the_worker_is_running_in_the_test_database() {
        // pg_stat_activity is a snapshot per transaction; the worker may
        // still be starting, so look a few times.
        for _ in 0..100 {
            let running = Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(NULL) a
                                  JOIN pg_catalog.pg_database d ON d.oid = a.datid
                                 WHERE a.backend_type = 'credits maintenance' AND d.datname = 'pgrx_tests')",
            );
            if running == Ok(Some(true)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            // SAFETY: drops the cached activity snapshot so the next look is fresh.
            unsafe { pg_sys::pgstat_clear_snapshot() };
        }
        panic!("no credits maintenance worker in pg_stat_activity");
    }

    #[pg_test]
    fn a_step_closes_the_windows_of_a_past_month_once() {
        Spi::run("SET credits.clock_override = '2031-05-31 23:00:00+00'").unwrap();
        Spi::run("SELECT credits.subscribe('pt_pro', 'pro'), credits.debit('pt_pro', 'agent', 12)")
            .unwrap();
        let step = "SELECT credits_internal._maintenance_step('2031-06-01 00:00:01+00', 100)";
        // Steps until the run reports a wait (> 0): one run, one window pair.
        for _ in 0..10 {
            if Spi::get_one::<f64>(step).unwrap().unwrap() > 0.0 {
                break;
            }
        }
        let forfeited = Spi::get_one::<pgrx::AnyNumeric>(
            "SELECT forfeited FROM credits.closed_windows WHERE account_id = 'pt_pro' AND window_kind = 'monthly'",
        );
        assert_eq!(forfeited.unwrap().unwrap().to_string(), "88");
        assert!(
            Spi::get_one::<f64>(step).unwrap().unwrap() > 0.0,
            "nothing is due twice"
        );
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM credits.ledger WHERE account_id = 'pt_pro' AND kind = 'F'"
            ),
            Ok(Some(1))
        );
    }
}
