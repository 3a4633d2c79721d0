-- Errors keep their SQLSTATE on every path, the code below SQL included:
-- there pgrx alone would report any SQLSTATE it does not know as XX000
-- (src/pg/sqlstate.rs).
-- A trigger of the operator's on the ledger that refuses an entry with a
-- SQLSTATE of its own: the caller gets that SQLSTATE from every debit
-- path, and nothing is written.
SET credits.clock_override = '2031-03-10 12:00:00+00';
SET client_min_messages = warning;
SELECT credits.subscribe('trig', 'pro');
RESET client_min_messages;
CREATE FUNCTION public.refuse_entry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'entry refused by the audit trigger' USING ERRCODE = 'U9001';
END
$$;
CREATE TRIGGER refuse_entry BEFORE INSERT ON credits.ledger
    FOR EACH ROW WHEN (NEW.account_id = 'trig') EXECUTE FUNCTION public.refuse_entry();
SELECT credits.debit('trig', 'agent', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.try_debit('trig', 'agent', 1, 'trig-key');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM credits.debit_many(ARRAY['trig'], ARRAY['agent'], ARRAY[1]);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS entries, (SELECT monthly_used FROM credits.accounts WHERE account_id = 'trig') AS used
  FROM credits.ledger WHERE account_id = 'trig' AND kind = 'D';
DROP TRIGGER refuse_entry ON credits.ledger;
DROP FUNCTION public.refuse_entry();
SELECT credits.debit('trig', 'agent', 1) > 0 AS debited_after;

-- The same for windows closed below SQL: by the account's next call, and
-- by a maintenance batch.
CREATE FUNCTION public.refuse_window() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'closed window refused by the audit trigger' USING ERRCODE = 'U9002';
END
$$;
CREATE TRIGGER refuse_window BEFORE INSERT ON credits.closed_windows
    FOR EACH ROW WHEN (NEW.account_id = 'trig') EXECUTE FUNCTION public.refuse_window();
SET credits.clock_override = '2031-03-11 00:00:05+00';
SELECT credits.debit('trig', 'agent', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT windows FROM credits_internal._close_windows_after(NULL, credits.now(), 100000);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS closed FROM credits.closed_windows WHERE account_id = 'trig';
DROP TRIGGER refuse_window ON credits.closed_windows;
DROP FUNCTION public.refuse_window();
SELECT credits.debit('trig', 'agent', 1) > 0 AS debited_after;
SELECT count(*) AS closed FROM credits.closed_windows WHERE account_id = 'trig';
SELECT * FROM credits.verify() WHERE account_id = 'trig';
