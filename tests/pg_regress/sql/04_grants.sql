-- One-off grants: consumed after the monthly allowance, soonest-expiring first.
\set SHOW_CONTEXT never
SET credits.clock_override = '2026-08-03 12:00:00+00';
SELECT credits.subscribe('gr', 'pro');
SELECT credits.grant('gr', 10, 'purchased') AS g_never \gset
SELECT credits.grant('gr', 5, 'promotional', '2026-08-20 00:00:00+00') AS g_late \gset
SELECT credits.grant('gr', 3, 'adjustment', '2026-08-10 00:00:00+00') AS g_soon \gset
SELECT monthly_remaining, granted_remaining, available FROM credits.balance('gr');
-- 98 from the allowance: no grant is touched.
SELECT credits.debit('gr', 'agent', 98) IS NOT NULL AS debited;
SELECT grant_id = :g_soon AS soon, grant_id = :g_late AS late, remaining FROM credits.grants WHERE account_id = 'gr' ORDER BY grant_id;
-- 6 more: 2 from the allowance, then 3 from the soonest-expiring grant, then 1 from the next.
SELECT credits.debit('gr', 'agent', 6) AS d \gset
SELECT amount, from_grants FROM credits.ledger WHERE entry_id = :d;
SELECT grant_id = :g_soon AS soon, grant_id = :g_late AS late, remaining FROM credits.grants WHERE account_id = 'gr' ORDER BY grant_id;
-- A partial refund goes back to the grants first, the last drawn first.
SELECT credits.refund(:d, 2) IS NOT NULL AS refunded;
SELECT grant_id = :g_soon AS soon, grant_id = :g_late AS late, remaining FROM credits.grants WHERE account_id = 'gr' ORDER BY grant_id;
SELECT monthly_used, monthly_remaining, granted_remaining, available FROM credits.balance('gr');
-- After its expiry a grant is no longer available.
SET credits.clock_override = '2026-08-20 00:00:00+00';
SELECT granted_remaining, available FROM credits.balance('gr');
-- A new month: the allowance is back, unexpired grants remain.
SET credits.clock_override = '2026-09-01 00:00:00+00';
SELECT monthly_remaining, granted_remaining, available FROM credits.balance('gr');
-- A daily limit caps spending from grants too.
SELECT credits.subscribe('gr_free', 'free');
SELECT credits.grant('gr_free', 100) IS NOT NULL AS granted;
SELECT credits.debit('gr_free', 'agent', 10) IS NOT NULL AS debited;
SELECT credits.debit('gr_free', 'agent', 1);
\echo :LAST_ERROR_SQLSTATE
SET credits.clock_override = '2026-09-02 00:00:00+00';
SELECT credits.debit('gr_free', 'agent', 10) IS NOT NULL AS debited;
SET credits.clock_override = '2026-09-03 00:00:00+00';
SELECT credits.debit('gr_free', 'agent', 10) IS NOT NULL AS debited;
SELECT monthly_used, monthly_remaining, granted_remaining FROM credits.balance('gr_free');
-- Grants with an idempotency key are applied once.
SELECT credits.grant('gr_free', 7, idempotency_key => 'promo-2026-09') AS k1 \gset
SELECT credits.grant('gr_free', 7, idempotency_key => 'promo-2026-09') = :k1 AS same_entry;
SELECT credits.grant('gr_free', 8, idempotency_key => 'promo-2026-09');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM credits.verify();
