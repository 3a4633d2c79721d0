-- The catalog shows the contract: schema credits holds the public API and
-- nothing else (\df credits.* lists exactly this); the helpers live in
-- credits_internal, which PUBLIC cannot use.
SELECT p.oid::regprocedure AS public_routine, p.prokind AS kind
  FROM pg_proc p
 WHERE p.pronamespace = 'credits'::regnamespace
 ORDER BY p.proname, p.oid;
SELECT c.relname AS public_relation, c.relkind AS kind
  FROM pg_class c
 WHERE c.relnamespace = 'credits'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p')
 ORDER BY 1;
SELECT t.typname AS public_type
  FROM pg_type t
 WHERE t.typnamespace = 'credits'::regnamespace AND t.typtype IN ('c', 'd', 'e', 'b')
   AND t.typrelid = 0 AND t.typcategory <> 'A'
 ORDER BY 1;
-- every helper belongs to the extension, and no role outside it can run one
SELECT count(*) > 40 AS helpers_moved,
       bool_and(EXISTS (SELECT 1 FROM pg_depend d
                         WHERE d.objid = p.oid AND d.deptype = 'e'
                           AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'credits'))) AS members,
       bool_or(has_function_privilege('public', p.oid, 'EXECUTE')) AS public_may_run_one
  FROM pg_proc p
 WHERE p.pronamespace = 'credits_internal'::regnamespace;
-- the application runs none but the conversion of double precision amounts,
-- which is inlined into its own statements
SELECT p.oid::regprocedure AS app_may_run
  FROM pg_proc p
 WHERE p.pronamespace = 'credits_internal'::regnamespace
   AND has_function_privilege('credits_app', p.oid, 'EXECUTE')
 ORDER BY p.proname;
SELECT has_schema_privilege('public', 'credits_internal', 'USAGE') AS public_usage,
       has_schema_privilege('credits_app', 'credits_internal', 'USAGE') AS app_usage;

-- The catalog documents the contract: every public function, table, view
-- and column has a comment (\df+ credits.*, \d+ credits.<name>).
SELECT 'function ' || p.oid::regprocedure::text AS undocumented
  FROM pg_proc p
 WHERE p.pronamespace = 'credits'::regnamespace
   AND obj_description(p.oid, 'pg_proc') IS NULL
UNION ALL
SELECT 'relation ' || c.relname
  FROM pg_class c
 WHERE c.relnamespace = 'credits'::regnamespace AND c.relkind IN ('r', 'v')
   AND obj_description(c.oid, 'pg_class') IS NULL
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname
  FROM pg_class c
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relnamespace = 'credits'::regnamespace AND c.relkind IN ('r', 'v')
   AND col_description(c.oid, a.attnum) IS NULL
 ORDER BY 1;
-- (and nothing outside the extension's schemas was touched)
SELECT obj_description('pg_catalog.now()'::regprocedure, 'pg_proc') AS built_in_now;
