-- The ledger is append-only, and verify() catches any drift between the
-- stored balances and what the ledger implies.
\set SHOW_CONTEXT never
UPDATE credits.ledger SET amount = 0 WHERE kind = 'D';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM credits.ledger;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE credits.ledger;
\echo :LAST_ERROR_SQLSTATE
-- For superusers too, even with ordinary triggers switched off.
SET session_replication_role = replica;
UPDATE credits.ledger SET amount = 0 WHERE kind = 'D';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM credits.ledger;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE credits.ledger;
\echo :LAST_ERROR_SQLSTATE
RESET session_replication_role;
-- Tamper with stored balances (as a superuser could) and verify() reports it.
BEGIN;
UPDATE credits.accounts SET monthly_used = monthly_used + 1, daily_used = daily_used - 0.5 WHERE account_id = 'bad';
UPDATE credits.accounts SET plan = 'pro' WHERE account_id = 'rf';
UPDATE credits.accounts SET purchased = 1 WHERE account_id = 'gr';
UPDATE credits.grants SET remaining = remaining + 1 WHERE account_id = 'gr_free';
SET LOCAL credits.clock_override = '2026-11-02 12:00:00+00';
SELECT * FROM credits.verify();
ROLLBACK;
SET credits.clock_override = '2027-10-05 09:00:00+00';
SELECT * FROM credits.verify();
-- The ledger row is small: the fixed part of a debit entry.
SELECT pg_column_size(l.*) AS debit_row_bytes FROM credits.ledger l
 WHERE kind = 'D' AND metadata IS NULL ORDER BY entry_id LIMIT 1;
