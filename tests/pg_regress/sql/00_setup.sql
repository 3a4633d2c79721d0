-- Install the extension. Every later file starts from this database.
CREATE EXTENSION credits;
SELECT e.extname, e.extversion = a.default_version AS current_version
  FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname WHERE e.extname = 'credits';
-- The seeded catalogs (SPEC rule 1 and 7).
SELECT plan, daily_limit, monthly_allowance, may_purchase FROM credits.plans ORDER BY plan;
SELECT feature, product, cost, unit FROM credits.features ORDER BY feature;
