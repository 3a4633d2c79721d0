-- Settings are validated when they are set (SPEC §4.9): a bad value is
-- refused by SET and ALTER SYSTEM with SQLSTATE 22023 and the setting keeps
-- its value, as PostgreSQL's own settings do; the next debit never finds it.
\set SHOW_CONTEXT never
SET credits.thresholds = '50,90';
SET credits.thresholds = '80;100';
\echo :LAST_ERROR_SQLSTATE
SET credits.thresholds = '0,100';
SET credits.thresholds = '-5';
SET credits.thresholds = '80,,abc';
SET credits.thresholds = '5.';
SHOW credits.thresholds;
SET credits.thresholds = ' 12.5 , 150 ';
SHOW credits.thresholds;
ALTER SYSTEM SET credits.thresholds = '80;100';
\echo :LAST_ERROR_SQLSTATE
RESET credits.thresholds;

SET credits.bandwidth_cutoff = '2025-02-30';
\echo :LAST_ERROR_SQLSTATE
SET credits.bandwidth_cutoff = 'tomorrow';
SET credits.bandwidth_cutoff = '2025-8-14';
SET credits.bandwidth_cutoff = '2024-02-29';
SHOW credits.bandwidth_cutoff;
RESET credits.bandwidth_cutoff;

SET credits.clock_override = 'yesterday';
\echo :LAST_ERROR_SQLSTATE
SET credits.clock_override = '2026-03-01 00:00:00';
SET credits.clock_override = '2026-02-29 00:00:00+00';
SET credits.clock_override = '2026-03-01 24:00:00+00';
SET credits.clock_override = '2026-03-01T00:00:00Z';
SELECT to_char(credits.now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS clock_utc;
SET credits.clock_override = '2026-03-01 10:30:15.123456-05:30';
SELECT to_char(credits.now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS clock_utc;
RESET credits.clock_override;
-- The worker's integer settings have ranges PostgreSQL checks.
ALTER SYSTEM SET credits.maintenance_batch_size = 0;
\echo :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET credits.maintenance_nice = 20;
\echo :LAST_ERROR_SQLSTATE
