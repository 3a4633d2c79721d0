-- Install the extension. Every later file starts from this database.
CREATE EXTENSION credits;
SELECT extname, extversion FROM pg_extension WHERE extname = 'credits';
-- The seeded catalogs (SPEC rule 1 and 7).
SELECT plan, daily_limit, monthly_allowance, may_purchase FROM credits.plans ORDER BY plan;
SELECT feature, product, cost, unit FROM credits.features ORDER BY feature;
