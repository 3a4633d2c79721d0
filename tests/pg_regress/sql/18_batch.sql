-- debit_many: many debits in one call, each row decided as try_debit would
-- decide it, each account's rows in the order given; one result per row.
\set SHOW_CONTEXT never
SET credits.clock_override = '2031-02-10 09:00:00+00';
SELECT credits.subscribe('batch_free', 'free');    -- 10 a day, 25 a month
SELECT credits.subscribe('batch_pro', 'pro');      -- 100 a month

-- Every outcome: charged, replayed, refused (UC001, with its facts), rejected
-- (another error: nothing written for that row; the other rows stand).
SELECT ordinality, entry_id IS NOT NULL AS has_entry, outcome, sqlstate, message, detail - 'entry_id' AS detail
  FROM credits.debit_many(
         ARRAY['batch_free', 'batch_pro', 'batch_free', 'batch_free', 'nobody', 'batch_pro', 'batch_pro', 'batch_free'],
         ARRAY['agent', 'agent', 'agent', 'agent', 'agent', 'no_such_feature', 'agent', 'agent'],
         ARRAY[6, 1, 5, 3, 1, 1, 0, 1],
         ARRAY['b1', 'b2', NULL, NULL, NULL, NULL, NULL, 'b1']);
-- the free account: 6 and 3 charged, 5 refused in between (the order given)
SELECT kind, amount FROM credits.ledger WHERE account_id = 'batch_free' ORDER BY entry_id;
SELECT daily_used, monthly_used FROM credits.balance('batch_free');
-- the refusal's denied event is kept, as try_debit's is
SELECT kind, window_kind, payload ->> 'available' AS available
  FROM credits.events WHERE account_id = 'batch_free' ORDER BY event_id;

-- The same keys and requests again: the first entries, nothing charged twice.
SELECT count(*) AS entries_before FROM credits.ledger \gset
SELECT b.ordinality, b.outcome, b.entry_id = k.entry_id AS first_entry
  FROM credits.debit_many(ARRAY['batch_free', 'batch_pro'], ARRAY['agent', 'agent'], ARRAY[6, 1], ARRAY['b1', 'b2']) b
  JOIN credits.idempotency k ON k.account_id = (ARRAY['batch_free', 'batch_pro'])[b.ordinality]
                             AND k.idempotency_key = (ARRAY['b1', 'b2'])[b.ordinality];
SELECT count(*) - :entries_before AS new_entries FROM credits.ledger;
-- a key reused with another request: UC005 for that row, with the first entry
SELECT ordinality, outcome, sqlstate, detail ->> 'idempotency_key' AS key
  FROM credits.debit_many(ARRAY['batch_pro'], ARRAY['agent'], ARRAY[2], ARRAY['b2']);

-- A window running out mid-batch: the rows after it are decided after it.
SELECT credits.subscribe('batch_day', 'free');
SELECT ordinality, outcome, detail ->> 'window' AS "window", detail ->> 'available' AS available
  FROM credits.debit_many(ARRAY['batch_day', 'batch_day', 'batch_day', 'batch_day'],
                          ARRAY['agent', 'agent', 'agent', 'agent'], ARRAY[4, 4, 4, 2]);
SELECT kind, window_kind FROM credits.events WHERE account_id = 'batch_day' ORDER BY event_id;

-- Many rows of one account are one update of its row.
SELECT credits.subscribe('batch_many', 'pro');
SELECT pg_stat_force_next_flush();  -- (earlier transactions' counts out of the view below)
BEGIN;
SELECT count(*) FILTER (WHERE outcome = 'charged') AS charged
  FROM credits.debit_many(array_fill('batch_many'::text, ARRAY[50]), array_fill('agent'::text, ARRAY[50]),
                          array_fill(0.5, ARRAY[50]));
SELECT relname, n_tup_upd AS updates, n_tup_ins AS inserts FROM pg_stat_xact_user_tables
 WHERE schemaname = 'credits' AND relname IN ('accounts', 'ledger') ORDER BY relname;
COMMIT;
SELECT monthly_used FROM credits.balance('batch_many');

-- A new day: the first row of a batch closes the account's ended windows.
SET credits.clock_override = '2031-02-11 09:00:00+00';
SELECT ordinality, outcome FROM credits.debit_many(ARRAY['batch_free', 'batch_free'], ARRAY['agent', 'agent'], ARRAY[1, 2]);
SELECT window_kind, window_start, used FROM credits.closed_windows WHERE account_id = 'batch_free' ORDER BY window_start;
SELECT daily_used, monthly_used FROM credits.balance('batch_free');

-- Metadata per row; quantities default to 1 each.
SELECT ordinality, outcome FROM credits.debit_many(ARRAY['batch_pro', 'batch_pro'], ARRAY['agent', 'agent'],
                                                   metadata => ARRAY['{"request": "r1"}', NULL]::jsonb[]);
SELECT amount, metadata FROM credits.ledger WHERE account_id = 'batch_pro' ORDER BY entry_id DESC LIMIT 2;
-- bad metadata is that row's error
SELECT ordinality, outcome, sqlstate FROM credits.debit_many(ARRAY['batch_pro'], ARRAY['agent'], metadata => ARRAY['[1]']::jsonb[]);

-- Bad arrays: UC009 for the whole call, nothing written.
SELECT count(*) AS entries_before FROM credits.ledger \gset
SELECT * FROM credits.debit_many(ARRAY['batch_pro', 'batch_pro'], ARRAY['agent']);
SELECT * FROM credits.debit_many(ARRAY['batch_pro'], ARRAY['agent'], ARRAY[1, 2]);
SELECT * FROM credits.debit_many(NULL, ARRAY['agent']);
SELECT * FROM credits.debit_many(ARRAY[['batch_pro'], ['batch_pro']], ARRAY[['agent'], ['agent']]);
SELECT * FROM credits.debit_many(array_fill('batch_pro'::text, ARRAY[10001]), array_fill('agent'::text, ARRAY[10001]));
SELECT count(*) - :entries_before AS new_entries FROM credits.ledger;
-- no rows: no results
SELECT count(*) AS results FROM credits.debit_many(ARRAY[]::text[], ARRAY[]::text[]);

SELECT * FROM credits.verify();
RESET credits.clock_override;
