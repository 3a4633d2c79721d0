-- Reporting views (the credits_reader role reads these). UTC days and months.
SET credits.clock_override = '2027-09-29 10:00:00+00';
SELECT credits.subscribe('rp_pro', 'pro');
SELECT credits.debit('rp_pro', 'code_generation', 3) AS d1 \gset
SELECT credits.debit('rp_pro', 'agent', 2.5) IS NOT NULL AS debited;
SELECT credits.refund(:d1, 1) IS NOT NULL AS refunded;
SELECT credits.grant('rp_pro', 10) IS NOT NULL AS granted;
SET credits.clock_override = '2027-09-30 23:00:00+00';
SELECT credits.debit('rp_pro', 'visual_editor_prompt', 4) IS NOT NULL AS debited;
SET credits.clock_override = '2027-10-01 08:00:00+00';
SELECT credits.purchase('rp_pro', 20);
SELECT credits.debit('rp_pro', 'agent', 1.25) IS NOT NULL AS debited;
SELECT credits.refund(:d1) IS NOT NULL AS refunded_the_rest_in_october;

SELECT to_char(day, 'YYYY-MM-DD') AS day, product, feature, debited, refunded, net, debits, refunds
  FROM credits.usage_daily WHERE account_id = 'rp_pro' ORDER BY day, feature;

SELECT to_char(month, 'YYYY-MM') AS month, product, feature, debited, refunded, net
  FROM credits.usage_monthly WHERE account_id = 'rp_pro' ORDER BY month, feature;

-- September's unused allowance (100 - 8.5 = 91.5) was forfeited when the
-- month ended (the October call closed the window): it shows in September.
SELECT to_char(month, 'YYYY-MM') AS month, debited, refunded, net_usage, forfeited, granted, purchased, expired
  FROM credits.account_months WHERE account_id = 'rp_pro' ORDER BY month;

SELECT plan, monthly_limit, monthly_used, granted_remaining, available
  FROM credits.usage_display WHERE account_id = 'rp_pro';

-- Tenant-wide: every account of this database, by month (only the months of this file).
SELECT to_char(t.month, 'YYYY-MM') AS month, t.active_accounts > 0 AS has_activity,
       t.debited >= m.debited AND t.forfeited >= m.forfeited AS includes_rp_pro
  FROM credits.tenant_months t
  JOIN credits.account_months m ON m.month = t.month AND m.account_id = 'rp_pro'
 ORDER BY t.month;
SELECT * FROM credits.verify();

-- Usage rollups: the monthly views read credits.usage_rollup plus the ledger
-- entries after rolled_through; a refresh changes no figure.
CREATE TEMP TABLE months_before AS SELECT * FROM credits.account_months;
CREATE TEMP TABLE usage_before AS SELECT * FROM credits.usage_monthly;
SET client_min_messages = warning;
CALL credits.refresh_rollups();
RESET client_min_messages;
SELECT pending_entries, rolled_through = (SELECT max(entry_id) FROM credits.ledger) AS all_rolled,
       last_error FROM credits.rollup_status;
SELECT count(*) > 0 AS has_rollup_rows FROM credits.usage_rollup WHERE account_id = 'rp_pro';
(SELECT * FROM credits.account_months EXCEPT ALL SELECT * FROM months_before)
UNION ALL
(SELECT * FROM months_before EXCEPT ALL SELECT * FROM credits.account_months);
(SELECT * FROM credits.usage_monthly EXCEPT ALL SELECT * FROM usage_before)
UNION ALL
(SELECT * FROM usage_before EXCEPT ALL SELECT * FROM credits.usage_monthly);

-- An entry after the rollups shows at once, added to the rolled-up figures.
SET credits.clock_override = '2027-10-02 09:00:00+00';
SELECT credits.debit('rp_pro', 'agent', 2) IS NOT NULL AS debited;
SELECT pending_entries FROM credits.rollup_status;
SELECT to_char(month, 'YYYY-MM') AS month, product, feature, debited, refunded, net, debits, refunds
  FROM credits.usage_monthly WHERE account_id = 'rp_pro' AND month = '2027-10-01' ORDER BY feature;
SELECT to_char(month, 'YYYY-MM') AS month, debited, refunded, net_usage, forfeited, granted, purchased
  FROM credits.account_months WHERE account_id = 'rp_pro' AND month = '2027-10-01';

-- verify() catches a rollup that disagrees with the ledger.
BEGIN;
UPDATE credits.usage_rollup SET amount = amount + 1
 WHERE account_id = 'rp_pro' AND month = '2027-09-01' AND kind = 'D'
   AND feature_id = (SELECT feature_id FROM credits.features WHERE feature = 'agent');
SELECT * FROM credits.verify();
ROLLBACK;
SELECT * FROM credits.verify();

-- Refreshing needs READ COMMITTED: an older snapshot could miss entries.
\set VERBOSITY sqlstate
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT credits_internal._refresh_rollups(1000);
ROLLBACK;
SELECT credits_internal._refresh_rollups(0);
CALL credits.refresh_rollups(wait => NULL);
\set VERBOSITY default
