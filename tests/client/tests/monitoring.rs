//! The monitoring recipe (docs/monitoring/postgres_exporter.yaml) runs:
//! every query in it succeeds as a member of credits_reader, the role the
//! exporter runs as, and returns the columns its metrics name.

mod common;

use common::*;

/// Each metric group's query and the columns it declares (labels and values).
fn queries() -> Vec<(String, Vec<String>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/monitoring/postgres_exporter.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(query) = line.strip_prefix("  query: \"") {
            groups.push((
                query
                    .strip_suffix('"')
                    .expect("a one-line query")
                    .to_string(),
                vec![],
            ));
        } else if let Some(column) = line.strip_prefix("    - ") {
            let column = column.strip_suffix(':').expect("a metric column");
            groups
                .last_mut()
                .expect("metrics follow a query")
                .1
                .push(column.to_string());
        }
    }
    groups
}

#[test]
fn every_exporter_query_runs_as_a_reader_and_returns_its_metrics() {
    let mut admin = connect();
    admin
        .batch_execute(
            "DO $$ BEGIN
                 IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 't_exporter') THEN
                     DROP OWNED BY t_exporter CASCADE; DROP ROLE t_exporter;
                 END IF;
             END $$;
             CREATE ROLE t_exporter LOGIN IN ROLE credits_reader;",
        )
        .unwrap();
    // Some activity, so every group has a row to show.
    let mut app = connect_at("2027-04-05 10:00:00+00");
    subscribe(&mut app, "mon_free", "free");
    app.batch_execute(
        "SELECT credits.debit('mon_free', 'agent', 10);
         SELECT credits.try_debit('mon_free', 'agent', 1);",
    )
    .unwrap();
    let groups = queries();
    assert!(
        groups.len() >= 4,
        "the recipe has its metric groups: {groups:?}"
    );
    let mut exporter = connect_db_as(&test_database(), "t_exporter");
    for (query, columns) in groups {
        let rows = exporter
            .query(query.as_str(), &[])
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        let first = rows.first().unwrap_or_else(|| panic!("{query}: no row"));
        let names: Vec<&str> = first.columns().iter().map(|c| c.name()).collect();
        assert_eq!(
            names, columns,
            "{query}: its columns are the metrics it declares"
        );
    }
}
