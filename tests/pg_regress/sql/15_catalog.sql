-- The catalog documents the contract: every public function, table, view
-- and column has a comment (\df+ credits.*, \d+ credits.<name>).
SELECT 'function ' || p.oid::regprocedure::text AS undocumented
  FROM pg_proc p
 WHERE p.pronamespace = 'credits'::regnamespace AND p.proname !~ '^_'
   AND obj_description(p.oid, 'pg_proc') IS NULL
UNION ALL
SELECT 'relation ' || c.relname
  FROM pg_class c
 WHERE c.relnamespace = 'credits'::regnamespace AND c.relkind IN ('r', 'v') AND c.relname !~ '^_'
   AND obj_description(c.oid, 'pg_class') IS NULL
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname
  FROM pg_class c
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relnamespace = 'credits'::regnamespace AND c.relkind IN ('r', 'v') AND c.relname !~ '^_'
   AND col_description(c.oid, a.attnum) IS NULL
 ORDER BY 1;
-- (and nothing outside the extension's schema was touched)
SELECT obj_description('pg_catalog.now()'::regprocedure, 'pg_proc') AS built_in_now;
