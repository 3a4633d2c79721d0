-- Reporting views for analysts (the credits_reader role). All amounts are
-- credits; all periods are UTC calendar days and months. They are exact and
-- include everything committed: the monthly ones read the usage rollups
-- (src/reporting/rollups.sql) plus the ledger entries not rolled up yet.
--   usage_daily / usage_monthly  usage per account and period by product
--                                and feature: debited, refunded, net;
--   account_months               per account and month: usage, refunds,
--                                forfeited allowance, grants, purchases,
--                                expired grant credits;
-- usage_monthly and account_months name the account's plan in the month
-- (the plan it was on at the month's end, or now for the current month).
--   tenant_months                the same summed over all accounts;
--   usage_display                every account's balance() as of now;
--   account_plans                every account's plan and limits now;
--   forfeits_monthly             forfeited allowance per month, plan and
--                                cause (month_end, upgrade, hold);
--   rollup_status                how far the rollups have come.

CREATE VIEW usage_daily AS
SELECT l.account_id,
       credits_internal._utc_day(l.at) AS day,
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
 GROUP BY l.account_id, credits_internal._utc_day(l.at), f.product, f.feature;
COMMENT ON VIEW usage_daily IS 'Usage per account, UTC day, product and feature: debited, refunded (on the day of the refund), net.';

-- Ledger totals per account, reporting month, kind and feature: the rollups
-- plus the entries after them. A filter on account_id or month reaches both
-- branches (an index each), so one account's month reads a few rows.
CREATE VIEW credits_internal._ledger_months AS
SELECT r.account_id, r.month, r.kind, r.feature_id, r.amount, r.from_grants, r.entries
  FROM credits.usage_rollup r
UNION ALL
SELECT l.account_id, credits_internal._report_month(l.kind, l.at, l.metadata), l.kind, l.feature_id,
       l.amount, coalesce(l.from_grants, 0), 1::bigint
  FROM credits.ledger l
 WHERE l.entry_id > credits_internal._rolled_through();
COMMENT ON VIEW credits_internal._ledger_months IS 'Internal: usage_rollup plus the ledger entries not rolled up yet.';

-- The plan an account was on at the end of a month (now, for the current
-- month) is its last plan change before the month ended: a LATERAL
-- subquery in the view (read with the view's rights, as every table here;
-- Citus runs it on the account's shard), the same in account_months.
CREATE VIEW usage_monthly AS
SELECT m.*, p.plan
  FROM (SELECT u.account_id,
               u.month,
               f.product,
               f.feature,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'D'), 0) AS debited,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'R'), 0) AS refunded,
               coalesce(sum(CASE u.kind WHEN 'D' THEN u.amount ELSE -u.amount END), 0) AS net,
               coalesce(sum(u.entries) FILTER (WHERE u.kind = 'D'), 0) AS debits,
               coalesce(sum(u.entries) FILTER (WHERE u.kind = 'R'), 0) AS refunds
          FROM credits_internal._ledger_months u
          JOIN credits.features f ON f.feature_id = u.feature_id
         WHERE u.kind IN ('D', 'R')
         GROUP BY u.account_id, u.month, f.product, f.feature) m
  LEFT JOIN LATERAL (SELECT (l.metadata ->> 'plan') COLLATE "C" AS plan FROM credits.ledger l
                      WHERE l.account_id = m.account_id AND l.kind = 'S'
                        AND l.at < (m.month + interval '1 month')::timestamp AT TIME ZONE 'UTC'
                      ORDER BY l.entry_id DESC LIMIT 1) p ON true;
COMMENT ON VIEW usage_monthly IS 'Usage per account, UTC month, product and feature (refunds in the month of the refund).';

CREATE VIEW account_months AS
SELECT m.*, p.plan
  FROM (SELECT u.account_id,
               u.month,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'D'), 0) AS debited,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'R'), 0) AS refunded,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'D'), 0)
                 - coalesce(sum(u.amount) FILTER (WHERE u.kind = 'R'), 0) AS net_usage,
               coalesce(sum(u.from_grants) FILTER (WHERE u.kind = 'D'), 0)
                 - coalesce(sum(u.from_grants) FILTER (WHERE u.kind = 'R'), 0) AS net_from_grants,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'F'), 0) AS forfeited,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'G'), 0) AS granted,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'P'), 0) AS purchased,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'E'), 0) AS expired
          FROM credits_internal._ledger_months u
         GROUP BY u.account_id, u.month) m
  LEFT JOIN LATERAL (SELECT (l.metadata ->> 'plan') COLLATE "C" AS plan FROM credits.ledger l
                      WHERE l.account_id = m.account_id AND l.kind = 'S'
                        AND l.at < (m.month + interval '1 month')::timestamp AT TIME ZONE 'UTC'
                      ORDER BY l.entry_id DESC LIMIT 1) p ON true;
COMMENT ON VIEW account_months IS 'Per account and UTC month: usage, refunds, forfeited allowance, grants, purchases, expired grant credits.';

-- Summed directly, not over account_months: one group per month instead of
-- one per account and month (and a plain join, which the planner costs low
-- enough to leave JIT out of a one-month report).
CREATE VIEW tenant_months AS
SELECT t.month,
       coalesce(a.active_accounts, 0) AS active_accounts,
       t.debited, t.refunded, t.debited - t.refunded AS net_usage,
       t.forfeited, t.granted, t.purchased, t.expired
  FROM (SELECT u.month,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'D'), 0) AS debited,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'R'), 0) AS refunded,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'F'), 0) AS forfeited,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'G'), 0) AS granted,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'P'), 0) AS purchased,
               coalesce(sum(u.amount) FILTER (WHERE u.kind = 'E'), 0) AS expired
          FROM credits_internal._ledger_months u
         GROUP BY u.month) t
  LEFT JOIN (SELECT d.month, count(*) AS active_accounts
               FROM (SELECT u.month, u.account_id FROM credits_internal._ledger_months u
                      WHERE u.kind = 'D' GROUP BY u.month, u.account_id) d
              GROUP BY d.month) a ON a.month = t.month;
COMMENT ON VIEW tenant_months IS 'All accounts per UTC month: active accounts, usage, refunds, forfeits, grants, purchases, expiries.';

CREATE VIEW usage_display AS
SELECT a.account_id, d.*
  FROM credits.accounts a
 CROSS JOIN LATERAL credits_internal._display(a) d;
COMMENT ON VIEW usage_display IS 'balance() of every account as of credits.now(): the usage display.';

CREATE VIEW account_plans AS
SELECT a.account_id, a.plan, p.daily_limit, p.monthly_allowance, a.purchased,
       p.monthly_allowance + a.purchased AS monthly_limit, a.created_at
  FROM credits.accounts a
  JOIN credits.plans p ON p.plan = a.plan;
COMMENT ON VIEW account_plans IS 'Every account''s plan and limits now (no balance computed).';

-- Month-end forfeits are recorded per window (closed_windows, with the plan
-- the month ended on), upgrade forfeits name the plan left; a hold of a
-- closed month forfeits what it did not use when it resolves.
CREATE VIEW forfeits_monthly AS
SELECT credits_internal._report_month(l.kind, l.at, l.metadata) AS month,
       coalesce(l.metadata ->> 'plan', c.plan) AS plan,
       l.metadata ->> 'reason' AS cause,
       count(DISTINCT l.account_id) AS accounts,
       sum(l.amount) AS forfeited
  FROM credits.ledger l
  LEFT JOIN credits.closed_windows c
         ON c.account_id = l.account_id AND c.window_kind = 'monthly'
        AND c.window_start = credits_internal._report_month(l.kind, l.at, l.metadata)
 WHERE l.kind = 'F'
 GROUP BY 1, 2, 3;
COMMENT ON VIEW forfeits_monthly IS 'Forfeited allowance per UTC month, plan and cause (month_end, upgrade, hold).';

CREATE VIEW rollup_status AS
SELECT s.rolled_through,
       (SELECT max(l.entry_id) FROM credits.ledger l) - s.rolled_through AS pending_entries,
       s.refreshed_at,
       s.candidate,
       s.candidate_at,
       s.last_error,
       s.last_error_at
  FROM credits.rollup_state s;
COMMENT ON VIEW rollup_status IS 'Usage rollups: entries rolled up, entries the views still read from the ledger, last refresh.';
