-- Every bad input fails with a documented SQLSTATE, names the bad value,
-- and writes nothing.
\set SHOW_CONTEXT never
SET credits.clock_override = '2026-11-02 10:00:00+00';
SELECT credits.subscribe('bad', 'pro');
CREATE TEMP VIEW written AS
SELECT (SELECT count(*) FROM credits.ledger) AS ledger,
       (SELECT count(*) FROM credits.accounts) AS accounts,
       (SELECT count(*) FROM credits.grants) AS grants,
       (SELECT count(*) FROM credits.idempotency) AS keys,
       (SELECT sum(monthly_used) FROM credits.accounts) AS used;
CREATE TEMP TABLE before AS SELECT * FROM written;
-- UC004: amounts (zero, negative, NaN, infinite, 5 decimals, NULL, absurd).
SELECT credits.debit('bad', 'agent', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('bad', 'agent', -1);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('bad', 'agent', 'NaN');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('bad', 'agent', 'Infinity');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('bad', 'agent', '-Infinity');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('bad', 'agent', 1.00001);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('bad', 'agent', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('bad', 'agent', 1e20);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.try_debit('bad', 'agent', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.purchase('bad', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.purchase('bad', 'NaN');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.grant('bad', -5);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.grant('bad', 1.23456);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.refund((SELECT max(entry_id) FROM credits.ledger WHERE kind = 'D'), 0);
\echo :LAST_ERROR_SQLSTATE
-- Trailing zeros are not extra places: 1.50000 is 1.5.
SELECT credits.debit('bad', 'agent', 1.50000) IS NOT NULL AS debited;
-- UC002: unknown account.
SELECT credits.debit('nobody', 'agent');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.try_debit('nobody', 'agent');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.purchase('nobody', 5);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.grant('nobody', 5);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM credits.balance('nobody');
\echo :LAST_ERROR_SQLSTATE
-- UC003: unknown feature or plan.
SELECT credits.debit('bad', 'image_generation');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.subscribe('bad', 'gold');
\echo :LAST_ERROR_SQLSTATE
-- UC009: NULL, empty or oversized identifiers; bad grant kind or expiry.
SELECT credits.debit(NULL, 'agent');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('bad', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('', 'agent');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.subscribe(repeat('x', 300), 'pro');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.subscribe('bad', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('bad', 'agent', 1, '');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.grant('bad', 5, 'gift');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.grant('bad', 5, 'promotional', '2026-11-01 00:00:00+00');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.grant('bad', 5, 'promotional', 'infinity');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.refund(NULL);
\echo :LAST_ERROR_SQLSTATE
-- UC011: refund of something that is not a debit.
SELECT credits.refund(-1);
\echo :LAST_ERROR_SQLSTATE
-- Nothing was written by any failed call (only the one good debit of 1.5).
SELECT w.ledger - b.ledger AS new_entries, w.accounts - b.accounts AS new_accounts,
       w.grants - b.grants AS new_grants, w.keys - b.keys AS new_keys, w.used - b.used AS new_usage
  FROM written w, before b;
-- The clock override is for superusers only.
CREATE ROLE credits_app_test LOGIN;
SET ROLE credits_app_test;
SET credits.clock_override = '2030-01-01 00:00:00+00';
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
DROP ROLE credits_app_test;
SELECT * FROM credits.verify();
