-- Fusion bandwidth derived from credits (SPEC rule 10).
\set SHOW_CONTEXT never
SHOW credits.bandwidth_cutoff;
-- Created on or after the cut-off: 20 GB per 100 credits of monthly limit.
SET credits.clock_override = '2025-08-14 00:00:00+00';
SELECT credits.subscribe('bw_new', 'pro');
SELECT credits.bandwidth_allowance('bw_new') AS gb;
SELECT credits.purchase('bw_new', 150);
SELECT credits.bandwidth_allowance('bw_new') AS gb;
-- Created before: 25 GB per 100 purchased credits (none purchased: none).
SET credits.clock_override = '2025-08-13 23:59:59.999+00';
SELECT credits.subscribe('bw_old', 'pro');
SELECT credits.bandwidth_allowance('bw_old') AS gb;
SELECT credits.purchase('bw_old', 200);
SELECT credits.bandwidth_allowance('bw_old') AS gb;
-- The cut-off is a setting.
SET credits.bandwidth_cutoff = '2025-01-01';
SELECT credits.bandwidth_allowance('bw_old') AS gb;
RESET credits.bandwidth_cutoff;
SELECT credits.bandwidth_allowance('nobody');
\echo :LAST_ERROR_SQLSTATE
