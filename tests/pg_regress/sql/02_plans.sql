-- Plan changes (SPEC rule 5) and purchases (rule 6).
\set SHOW_CONTEXT never
SET credits.clock_override = '2026-06-10 09:00:00+00';
-- Free -> Pro is an upgrade: a fresh window of Pro's full 100; Free's unused 17 are forfeited.
SELECT credits.subscribe('up', 'free');
SELECT credits.debit('up', 'code_generation', 8) IS NOT NULL AS debited;
SELECT credits.subscribe('up', 'pro');
SELECT plan, daily_limit, monthly_limit, monthly_used, monthly_remaining, available FROM credits.balance('up');
SELECT kind, amount, metadata FROM credits.ledger WHERE account_id = 'up' ORDER BY entry_id;
-- Subscribing to the plan the account already has changes nothing.
SELECT credits.subscribe('up', 'pro');
SELECT count(*) AS entries FROM credits.ledger WHERE account_id = 'up';
-- Buying more on Pro raises the monthly limit at once, in full...
SELECT credits.purchase('up', 50);
SELECT monthly_limit, monthly_remaining FROM credits.balance('up');
-- ...and it recurs next month, with the used part reset (no rollover).
SELECT credits.debit('up', 'agent', 120) IS NOT NULL AS debited;
SET credits.clock_override = '2026-07-01 00:00:00+00';
SELECT monthly_limit, monthly_used, monthly_remaining FROM credits.balance('up');
-- Free may not buy.
SELECT credits.purchase('free_1', 10);
\echo :LAST_ERROR_SQLSTATE
-- Pro (150 with purchases) -> legacy_basic (0 + 50 carried) is a downgrade: usage is kept,
-- remaining = max(0, new limit - used).
SELECT credits.debit('up', 'agent', 70) IS NOT NULL AS debited;
SELECT credits.subscribe('up', 'legacy_basic');
SELECT plan, monthly_limit, monthly_used, monthly_remaining, available FROM credits.balance('up');
SELECT credits.try_debit('up', 'agent') AS denied;
-- The operator sets the Legacy Basic allowance in the catalog; it applies at once.
UPDATE credits.plans SET monthly_allowance = 40 WHERE plan = 'legacy_basic';
SELECT monthly_limit, monthly_used, monthly_remaining FROM credits.balance('up');
-- Moving to Free drops purchases (Free may not buy); still a downgrade (25 < 90).
SELECT credits.subscribe('up', 'free');
SELECT plan, daily_limit, monthly_limit, monthly_used, monthly_remaining, available FROM credits.balance('up');
-- Enterprise: the allowance is set per account with purchase().
SELECT credits.subscribe('ent', 'enterprise');
SELECT credits.purchase('ent', 5000);
SELECT plan, monthly_limit, available FROM credits.balance('ent');
-- An unknown plan is refused and nothing is written.
SELECT count(*) AS entries_before FROM credits.ledger;
SELECT credits.subscribe('ent', 'platinum');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.subscribe('newcomer', 'platinum');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS entries_after FROM credits.ledger;
SELECT count(*) AS newcomer_accounts FROM credits.accounts WHERE account_id = 'newcomer';
UPDATE credits.plans SET monthly_allowance = 0 WHERE plan = 'legacy_basic';
SELECT * FROM credits.verify();
