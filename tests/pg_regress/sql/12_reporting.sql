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
