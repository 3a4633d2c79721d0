-- Idempotency keys never expire and are committed with the ledger row.
\set SHOW_CONTEXT never
SET credits.clock_override = '2026-10-05 09:00:00+00';
SELECT credits.subscribe('idem', 'pro');
SELECT credits.debit('idem', 'agent', 2.5, 'req-1', '{"model": "m1"}') AS first \gset
-- The same request again: the same entry, nothing charged twice.
SELECT credits.debit('idem', 'agent', 2.5, 'req-1', '{"model": "m1"}') = :first AS same_entry;
SELECT credits.debit('idem', 'agent', 2.50, 'req-1', '{"model": "m1"}') = :first AS same_entry_same_number;
SELECT monthly_used FROM credits.balance('idem');
-- try_debit shares the keys of debit.
SELECT credits.try_debit('idem', 'agent', 2.5, 'req-1', '{"model": "m1"}') = :first AS same_entry;
-- A different request under the same key is refused.
SELECT credits.debit('idem', 'agent', 3, 'req-1', '{"model": "m1"}');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('idem', 'code_generation', 2.5, 'req-1', '{"model": "m1"}');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('idem', 'agent', 2.5, 'req-1', '{"model": "m2"}');
\echo :LAST_ERROR_SQLSTATE
-- Keys belong to one account: another account may use the same key.
SELECT credits.subscribe('idem_2', 'pro');
SELECT credits.debit('idem_2', 'agent', 1, 'req-1') <> :first AS new_entry;
-- Keys never expire: months later the replay still returns the first entry.
SET credits.clock_override = '2027-10-05 09:00:00+00';
SELECT credits.debit('idem', 'agent', 2.5, 'req-1', '{"model": "m1"}') = :first AS same_entry;
SELECT monthly_used FROM credits.balance('idem');
-- A denied try_debit stores no key: a later retry with the same key can succeed.
SELECT credits.subscribe('idem_3', 'free');
SELECT credits.try_debit('idem_3', 'agent', 11, 'big') AS denied;
SELECT count(*) AS keys FROM credits.idempotency WHERE account_id = 'idem_3';
SELECT credits.try_debit('idem_3', 'agent', 10, 'big') IS NOT NULL AS debited;
-- A rolled-back debit leaves no key behind.
BEGIN;
SELECT credits.debit('idem_3', 'agent', 0, 'zero');
ROLLBACK;
BEGIN;
SELECT credits.subscribe('idem_4', 'pro');
SELECT credits.debit('idem_4', 'agent', 1, 'rolled-back') IS NOT NULL AS debited;
ROLLBACK;
SELECT count(*) AS rows_left FROM credits.idempotency WHERE idempotency_key = 'rolled-back';
SELECT count(*) AS accounts_left FROM credits.accounts WHERE account_id = 'idem_4';
SELECT * FROM credits.verify();
