-- credits 0.1.0 -> 0.2.0
--
-- Every schema change made after 0.1.0 goes here as well as into the code
-- that creates a fresh install, so that an upgraded database and a fresh
-- one are identical (tests/client/tests/upgrade.rs compares them).

-------------------------------------------------------------------------------
-- Reporting views (src/reporting/views.sql) and their privileges
-- (src/security/privileges.sql).
-------------------------------------------------------------------------------

-- Reporting views for analysts (the credits_reader role). All amounts are
-- credits; all periods are UTC calendar days and months. They read the
-- ledger, so they are exact and include everything committed.
--   usage_daily / usage_monthly  usage per account and period by product
--                                and feature: debited, refunded, net;
--   account_months               per account and month: usage, refunds,
--                                forfeited allowance, grants, purchases,
--                                expired grant credits;
--   tenant_months                the same summed over all accounts;
--   usage_display                every account's balance() as of now.

CREATE VIEW usage_daily AS
SELECT l.account_id,
       credits._utc_day(l.at) AS day,
       f.product,
       f.feature,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'D'), 0) AS debited,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'R'), 0) AS refunded,
       coalesce(sum(CASE l.kind WHEN 'D' THEN l.amount ELSE -l.amount END), 0) AS net,
       count(*) FILTER (WHERE l.kind = 'D') AS debits,
       count(*) FILTER (WHERE l.kind = 'R') AS refunds
  FROM credits.ledger l
  JOIN credits.features f ON f.feature_id = l.feature_id
 WHERE l.kind IN ('D', 'R')
 GROUP BY l.account_id, credits._utc_day(l.at), f.product, f.feature;
COMMENT ON VIEW usage_daily IS 'Usage per account, UTC day, product and feature: debited, refunded (on the day of the refund), net.';

CREATE VIEW usage_monthly AS
SELECT u.account_id,
       date_trunc('month', u.day)::date AS month,
       u.product,
       u.feature,
       sum(u.debited) AS debited,
       sum(u.refunded) AS refunded,
       sum(u.net) AS net,
       sum(u.debits) AS debits,
       sum(u.refunds) AS refunds
  FROM credits.usage_daily u
 GROUP BY u.account_id, date_trunc('month', u.day), u.product, u.feature;
COMMENT ON VIEW usage_monthly IS 'Usage per account, UTC month, product and feature.';

CREATE VIEW account_months AS
SELECT l.account_id,
       -- a month-end forfeit is stamped at the next month's first instant; it belongs to the month it ends
       CASE WHEN l.kind = 'F' AND l.metadata ->> 'reason' = 'month_end'
            THEN to_date(l.metadata ->> 'month', 'YYYY-MM') ELSE credits._utc_month(l.at) END AS month,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'D'), 0) AS debited,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'R'), 0) AS refunded,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'D'), 0)
         - coalesce(sum(l.amount) FILTER (WHERE l.kind = 'R'), 0) AS net_usage,
       coalesce(sum(l.from_grants) FILTER (WHERE l.kind = 'D'), 0)
         - coalesce(sum(l.from_grants) FILTER (WHERE l.kind = 'R'), 0) AS net_from_grants,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'F'), 0) AS forfeited,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'G'), 0) AS granted,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'P'), 0) AS purchased,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'E'), 0) AS expired
  FROM credits.ledger l
 GROUP BY 1, 2;
COMMENT ON VIEW account_months IS 'Per account and UTC month: usage, refunds, forfeited allowance, grants, purchases, expired grant credits.';

CREATE VIEW tenant_months AS
SELECT m.month,
       count(*) FILTER (WHERE m.debited > 0) AS active_accounts,
       sum(m.debited) AS debited,
       sum(m.refunded) AS refunded,
       sum(m.net_usage) AS net_usage,
       sum(m.forfeited) AS forfeited,
       sum(m.granted) AS granted,
       sum(m.purchased) AS purchased,
       sum(m.expired) AS expired
  FROM credits.account_months m
 GROUP BY m.month;
COMMENT ON VIEW tenant_months IS 'All accounts per UTC month: active accounts, usage, refunds, forfeits, grants, purchases, expiries.';

CREATE VIEW usage_display AS
SELECT a.account_id, b.*
  FROM credits.accounts a
 CROSS JOIN LATERAL credits.balance(a.account_id) b;
COMMENT ON VIEW usage_display IS 'balance() of every account as of credits.now(): the usage display.';

GRANT SELECT ON credits.usage_daily, credits.usage_monthly, credits.account_months,
                credits.tenant_months, credits.usage_display
TO credits_reader, credits_admin;
GRANT EXECUTE ON FUNCTION credits._utc_day(timestamptz), credits._utc_month(timestamptz),
                          credits.balance(text)
TO credits_reader, credits_admin;
