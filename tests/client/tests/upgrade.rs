//! The upgrade chain: every released version (sql/released/credits--V.sql),
//! created and then upgraded with ALTER EXTENSION credits UPDATE, has exactly
//! the schema of a fresh install: functions, tables and columns in order,
//! constraints, indexes, triggers, views, privileges, comments, the tables
//! pg_dump keeps, and the seeded catalog rows. An upgraded database with data
//! keeps working.

mod common;

use common::*;
use postgres::Client;

/// Everything that makes up the extension's schema, one line per fact.
fn fingerprint(client: &mut Client) -> Vec<String> {
    // (privileges compared as a set: their order is the order of the GRANTs)
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION pg_temp.sorted_acl(aclitem[]) RETURNS text LANGUAGE sql
             AS $$ SELECT coalesce(string_agg(x::text, ',' ORDER BY x::text), '') FROM unnest($1) x $$",
        )
        .unwrap();
    let sql = "
        SELECT 'function ' || p.oid::regprocedure::text || E'\\n' || pg_get_functiondef(p.oid)
               || E'\\nacl ' || pg_temp.sorted_acl(p.proacl) || ' owner ' || pg_get_userbyid(p.proowner)
          FROM pg_proc p WHERE p.pronamespace IN ('credits'::regnamespace, 'credits_internal'::regnamespace)
        UNION ALL
        SELECT format('relation %s.%s kind %s acl %s options %s comment %s', c.relnamespace::regnamespace, c.relname, c.relkind,
                      pg_temp.sorted_acl(c.relacl), coalesce(c.reloptions::text, ''),
                      coalesce(obj_description(c.oid, 'pg_class'), ''))
          FROM pg_class c WHERE c.relnamespace IN ('credits'::regnamespace, 'credits_internal'::regnamespace)
        UNION ALL
        SELECT format('column %s.%s #%s %s collate %s not null %s default %s identity %s generated %s',
                      c.relname, a.attname, row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
                      format_type(a.atttypid, a.atttypmod), a.attcollation::regcollation, a.attnotnull,
                      coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity, a.attgenerated)
          FROM pg_class c
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
         WHERE c.relnamespace IN ('credits'::regnamespace, 'credits_internal'::regnamespace)
        UNION ALL
        SELECT format('constraint %s.%s %s', c.relname, k.conname, pg_get_constraintdef(k.oid))
          FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
         WHERE c.relnamespace IN ('credits'::regnamespace, 'credits_internal'::regnamespace)
        UNION ALL
        SELECT 'index ' || pg_get_indexdef(i.indexrelid)
          FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
         WHERE c.relnamespace IN ('credits'::regnamespace, 'credits_internal'::regnamespace)
        UNION ALL
        SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace IN ('credits'::regnamespace, 'credits_internal'::regnamespace) AND NOT t.tgisinternal
        UNION ALL
        SELECT format('view %s %s', c.relname, pg_get_viewdef(c.oid))
          FROM pg_class c WHERE c.relnamespace IN ('credits'::regnamespace, 'credits_internal'::regnamespace) AND c.relkind = 'v'
        UNION ALL
        SELECT format('type %s.%s', t.typnamespace::regnamespace, t.typname)
          FROM pg_type t WHERE t.typnamespace IN ('credits'::regnamespace, 'credits_internal'::regnamespace)
        UNION ALL
        SELECT format('domain %s over %s: %s', t.typname, format_type(t.typbasetype, t.typtypmod),
                      pg_get_constraintdef(k.oid))
          FROM pg_type t JOIN pg_constraint k ON k.contypid = t.oid
         WHERE t.typnamespace IN ('credits'::regnamespace, 'credits_internal'::regnamespace)
        UNION ALL
        SELECT format('dumped %s %s', x.cfg::regclass, x.cond)
          FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(cfg, cond)
         WHERE e.extname = 'credits'
        UNION ALL
        SELECT format('member %s', pg_describe_object(d.classid, d.objid, d.objsubid))
          FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
         WHERE e.extname = 'credits' AND d.deptype = 'e'
        UNION ALL
        SELECT format('plan %s', p) FROM credits.plans p
        UNION ALL
        SELECT format('feature %s', f) FROM credits.features f
        UNION ALL
        SELECT format('schema %s acl %s comment %s', n.nspname, pg_temp.sorted_acl(n.nspacl), obj_description(n.oid, 'pg_namespace'))
          FROM pg_namespace n WHERE n.nspname IN ('credits', 'credits_internal')";
    let mut facts: Vec<String> = client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    facts.sort();
    facts
}

const KEYED_DEBIT: &str =
    "SELECT credits.debit('u_pro', 'agent', 12.5, 'before-upgrade', '{\"job\": \"a-1\", \"n\": 2}')";

fn released_versions() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql/released");
    let mut versions: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|f| {
            let name = f.ok()?.file_name().into_string().ok()?;
            Some(
                name.strip_prefix("credits--")?
                    .strip_suffix(".sql")?
                    .to_string(),
            )
        })
        .collect();
    versions.sort();
    versions
}

#[test]
fn every_released_version_upgrades_to_exactly_a_fresh_install() {
    recreate_database("credits_fresh");
    let mut fresh = connect_db("credits_fresh");
    fresh.batch_execute("CREATE EXTENSION credits").unwrap();
    let current: String = fresh
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'credits'",
            &[],
        )
        .unwrap()
        .get(0);
    let expected = fingerprint(&mut fresh);
    assert!(
        expected.len() > 100,
        "the fingerprint sees the schema ({} facts)",
        expected.len()
    );

    let versions = released_versions();
    assert!(
        !versions.is_empty(),
        "sql/released holds the released versions"
    );
    for version in versions.iter().filter(|v| **v != current) {
        recreate_database("credits_upgraded");
        let mut db = connect_db("credits_upgraded");
        db.batch_execute(&format!("CREATE EXTENSION credits VERSION '{version}'"))
            .unwrap_or_else(|e| panic!("create at {version}: {e}"));
        // Data written by the old version must survive the upgrade.
        db.batch_execute(
            "SET credits.clock_override = '2027-08-03 10:00:00+00';
             SELECT credits.subscribe('u_pro', 'pro');
             SELECT credits.reserve('u_pro', 'agent', 4);",
        )
        .unwrap();
        let first: i64 = db.query_one(KEYED_DEBIT, &[]).unwrap().get(0);
        db.batch_execute("ALTER EXTENSION credits UPDATE")
            .unwrap_or_else(|e| panic!("update from {version}: {e}"));
        let got = fingerprint(&mut db);
        let missing: Vec<&String> = expected.iter().filter(|f| !got.contains(f)).collect();
        let extra: Vec<&String> = got.iter().filter(|f| !expected.contains(f)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{version} -> {current} differs from a fresh install.\nmissing after the upgrade: {missing:#?}\nonly after the upgrade: {extra:#?}"
        );
        db.batch_execute("SET credits.clock_override = '2027-08-03 10:05:00+00'")
            .unwrap();
        // The key recorded by the old version replays: its fingerprint is
        // computed the same way (in Rust since 0.2.0).
        let replayed: i64 = db.query_one(KEYED_DEBIT, &[]).unwrap().get(0);
        assert_eq!(replayed, first);
        assert_eq!(balance_of(&mut db, "u_pro", "monthly_used"), "12.5");
        assert_eq!(balance_of(&mut db, "u_pro", "reserved"), "4");
        assert_verified(&mut db);
    }
}
