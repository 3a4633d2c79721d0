-- Refunds (SPEC rule 8: a failed generation is not charged).
\set SHOW_CONTEXT never
SET credits.clock_override = '2026-06-15 10:00:00+00';
SELECT credits.subscribe('rf', 'free');
-- The Regenerate flow: debit, the generation fails, refund in full.
SELECT credits.debit('rf', 'visual_editor_prompt', 4) AS d1 \gset
SELECT credits.refund(:d1, reason => 'generation failed') AS r1 \gset
SELECT daily_used, monthly_used, available FROM credits.balance('rf');
-- Repeating a full refund returns the same entry and writes nothing.
SELECT credits.refund(:d1) = :r1 AS same_entry;
SELECT count(*) AS refunds FROM credits.ledger WHERE ref = :d1;
-- Partial refunds, then one too many.
SELECT credits.debit('rf', 'agent', 3) AS d2 \gset
SELECT credits.refund(:d2, 1.25) IS NOT NULL AS refunded;
SELECT credits.refund(:d2, 1.75) IS NOT NULL AS refunded;
SELECT credits.refund(:d2, 0.0001);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('rf', 'agent', 3) AS d3 \gset
SELECT credits.refund(:d3, 2) IS NOT NULL AS refunded;
SELECT credits.refund(:d3, 1.5);
\echo :LAST_ERROR_SQLSTATE
-- A NULL amount refunds what is left (1).
SELECT credits.refund(:d3) AS r3 \gset
SELECT amount FROM credits.ledger WHERE entry_id = :r3;
SELECT daily_used, monthly_used FROM credits.balance('rf');
-- Refunding something that is not a debit.
SELECT credits.refund(:r1);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.refund(999999999);
\echo :LAST_ERROR_SQLSTATE
-- A refund after the day closed: the month gets the credit back, the closed
-- day does not (its window is gone: no rollover).
SELECT credits.debit('rf', 'agent', 6) AS d4 \gset
SET credits.clock_override = '2026-06-16 08:00:00+00';
SELECT credits.debit('rf', 'agent', 1) IS NOT NULL AS debited;
SELECT daily_used, monthly_used FROM credits.balance('rf');
SELECT credits.refund(:d4) IS NOT NULL AS refunded;
SELECT daily_used, monthly_used FROM credits.balance('rf');
-- A refund after the month closed is recorded but restores nothing.
SELECT credits.debit('rf', 'agent', 2) AS d5 \gset
SET credits.clock_override = '2026-07-01 00:00:00+00';
SELECT credits.refund(:d5) IS NOT NULL AS refunded;
SELECT daily_used, monthly_used, available FROM credits.balance('rf');
SELECT kind, amount, ref = :d5 AS refunds_d5 FROM credits.ledger WHERE entry_id = (SELECT max(entry_id) FROM credits.ledger);
SELECT * FROM credits.verify();
