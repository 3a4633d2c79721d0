-- UTC windows: Free gets 10 a day and 25 a month at the same time.
-- The session time zone is far from UTC on purpose: it must change nothing.
\set SHOW_CONTEXT never
SET TimeZone = 'Pacific/Kiritimati';   -- UTC+14
SET credits.clock_override = '2026-03-29 23:59:59.999+00';
SELECT credits.subscribe('free_1', 'free');
SELECT credits.debit('free_1', 'code_generation', 10) IS NOT NULL AS debited;
-- The 11th credit of the day is refused, naming the daily window.
SELECT credits.debit('free_1', 'code_generation');
\echo :LAST_ERROR_SQLSTATE
SELECT credits.try_debit('free_1', 'code_generation') AS denied;
-- One millisecond later it is a new UTC day: no worker needed.
SET credits.clock_override = '2026-03-30 00:00:00.001+00';
SELECT plan, daily_used, daily_remaining, monthly_used, monthly_remaining, available,
       next_daily_reset AT TIME ZONE 'UTC' AS next_daily_utc,
       next_monthly_reset AT TIME ZONE 'UTC' AS next_monthly_utc
  FROM credits.balance('free_1');
SELECT credits.debit('free_1', 'visual_editor_prompt', 10) IS NOT NULL AS debited;
-- Next day: 10 left today, but only 5 in the month. Every window applies.
SET credits.clock_override = '2026-03-31 12:00:00+00';
SELECT daily_remaining, monthly_remaining, available FROM credits.balance('free_1');
SELECT credits.debit('free_1', 'agent', 6);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('free_1', 'agent', 5) IS NOT NULL AS debited;
-- The last millisecond of March is still March...
SET credits.clock_override = '2026-03-31 23:59:59.999+00';
SELECT credits.try_debit('free_1', 'agent', 0.0001) AS denied;
-- ...and the first millisecond of April is a new day and a new month.
SET credits.clock_override = '2026-04-01 00:00:00.001+00';
SELECT daily_used, monthly_used, monthly_remaining, available FROM credits.balance('free_1');
SELECT credits.debit('free_1', 'agent', 10) IS NOT NULL AS debited;
SELECT credits.debit('free_1', 'agent', 0.0001);
\echo :LAST_ERROR_SQLSTATE
-- Monthly cap across days: 25 in a month, whatever the days.
SET credits.clock_override = '2026-04-02 12:00:00+00';
SELECT credits.debit('free_1', 'agent', 10) IS NOT NULL AS debited;
SET credits.clock_override = '2026-04-03 12:00:00+00';
SELECT credits.debit('free_1', 'agent', 6);
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('free_1', 'agent', 5) IS NOT NULL AS debited;
SELECT daily_used, daily_remaining, monthly_used, monthly_remaining, available FROM credits.balance('free_1');
-- The last millisecond of the month still counts in April; the first of May does not.
SET credits.clock_override = '2026-04-30 23:59:59.999+00';
SELECT credits.try_debit('free_1', 'agent') AS denied;
SET credits.clock_override = '2026-05-01 00:00:00.001+00';
SELECT credits.try_debit('free_1', 'agent') IS NOT NULL AS debited;
-- No proration: subscribing on the 28th gives the full month.
SET credits.clock_override = '2026-02-28 18:00:00+00';
SELECT credits.subscribe('pro_late', 'pro');
SELECT monthly_limit, monthly_remaining FROM credits.balance('pro_late');
SELECT credits.debit('pro_late', 'agent', 100) IS NOT NULL AS debited;
SET credits.clock_override = '2026-03-01 00:00:00+00';
SELECT monthly_used, monthly_remaining FROM credits.balance('pro_late');
-- Leap day is an ordinary UTC day.
SET credits.clock_override = '2028-02-29 23:59:59.999+00';
SELECT credits.subscribe('leap', 'free');
SELECT credits.debit('leap', 'agent', 10) IS NOT NULL AS debited;
SET credits.clock_override = '2028-03-01 00:00:00+00';
SELECT daily_used, monthly_used FROM credits.balance('leap');
SELECT * FROM credits.verify();
