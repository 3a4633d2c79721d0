-- Scale-out on Citus (docs/citus.md; the Citus tests are tests/citus):
-- without Citus, credits.distribute() refuses with UC014 and changes nothing.
\set VERBOSITY default
SELECT credits.distribute();
\echo :LAST_ERROR_SQLSTATE
SELECT credits_internal._distributed() AS distributed;
-- (the ledger keeps its single-node keys)
SELECT count(*) AS single_node_keys FROM pg_indexes
 WHERE schemaname = 'credits' AND indexname IN ('ledger_account_idx', 'holds_hold_id_idx', 'events_account_idx');
-- What does not run on a distributed install yet runs here.
SELECT credits_internal._refuse_distributed('maintenance');

-- The account forms of the calls that take an entry or hold id (on Citus
-- they are delegated to the account's node): the same as the id forms for
-- the right account; for another account the id is not found.
SET client_min_messages = warning;
SELECT credits.subscribe('af_1', 'pro'), credits.subscribe('af_2', 'pro');
RESET client_min_messages;
SELECT credits.debit('af_1', 'agent', 5) AS af_debit \gset
SELECT credits.refund_for('af_2', :af_debit, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.refund_for('af_1', :af_debit, 2) > :af_debit AS refunded;
SELECT credits.refund_for(NULL, :af_debit, 2);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.reserve('af_1', 'agent', 4) AS af_hold \gset
SELECT credits.settle_for('af_2', :af_hold, 3);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.settle_for('af_1', :af_hold, 3) > :af_hold AS settled;
SELECT credits.settle(:af_hold, 3) = credits.settle_for('af_1', :af_hold, 3) AS same_entry;
SELECT credits.reserve('af_1', 'agent', 4) AS af_hold2 \gset
SELECT credits.release_for('af_2', :af_hold2);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.release_for('af_1', :af_hold2);
SELECT credits.grant('af_1', 7, 'promotional') AS af_grant \gset
SELECT credits.void_grant_for('af_2', :af_grant);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.void_grant_for('af_1', :af_grant, 'withdrawn') > :af_grant AS voided;
-- (amounts as double precision, as a Python float or a JavaScript number)
SELECT credits.refund_for('af_1', :af_debit, 0.5::float8) > :af_debit AS refunded_float;
SELECT credits.reserve('af_1', 'agent', 2) AS af_hold3 \gset
SELECT credits.settle_for('af_1', :af_hold3, 0.12345::float8);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.settle_for('af_1', :af_hold3, 1.25::float8) > :af_hold3 AS settled_float;
SELECT monthly_used, reserved, granted_remaining FROM credits.balance('af_1');
SELECT * FROM credits.verify() WHERE account_id LIKE 'af_%';

-- Moving a node's id sequence forward (_advance_sequence: before a node
-- writes an account whose ids another node made, and for the event feed's
-- watermark): every later value is above the floor, and it never goes back.
CREATE TEMP SEQUENCE ids_seq;
SELECT setval('ids_seq', 1000);
SELECT credits_internal._advance_sequence('ids_seq', 1500);
SELECT nextval('ids_seq') = 1501 AS past_a_small_gap;
SELECT credits_internal._advance_sequence('ids_seq', 100);
SELECT nextval('ids_seq') > 1501 AS never_back;
SELECT credits_internal._advance_sequence('ids_seq', 5000000000);
SELECT nextval('ids_seq') = 5000000001 AS past_a_wide_gap;
