-- The event feed: read_events in order behind its watermark, NOTIFY's
-- shape, per-account alerts (low_balance).
\set SHOW_CONTEXT never
SET credits.clock_override = '2031-01-10 09:00:00+00';
SELECT coalesce(max("cursor"), 0) AS feed_start FROM credits.read_events(0, 1000) \gset
-- a consumer reads from its last cursor: kinds, accounts, windows, ISO 8601 instants
SELECT credits.subscribe('feed_free', 'free');
SELECT credits.debit('feed_free', 'agent', 10) IS NOT NULL AS debited;
SELECT "cursor" > :feed_start AS after_start, kind, account_id, "window", at,
       payload ->> 'resets_at' AS resets_at, payload ->> 'available' AS available
  FROM credits.read_events(:feed_start);
SELECT max("cursor") AS feed_next FROM credits.read_events(:feed_start) \gset
SELECT count(*) AS read_again FROM credits.read_events(:feed_next);

-- Per-account alerts: a low_balance event when what is available falls to
-- the level (credits, or a percentage of the monthly limit), once per window.
SELECT credits.subscribe('feed_alert', 'pro');
SELECT credits.set_alert('feed_alert', remaining => 30);
SELECT credits.debit('feed_alert', 'agent', 60) IS NOT NULL AS debited;  -- 40 left: no alert
SELECT count(*) AS low_balance FROM credits.events WHERE account_id = 'feed_alert' AND kind = 'low_balance';
SELECT credits.debit('feed_alert', 'agent', 15) IS NOT NULL AS debited;  -- 25 left: the alert
SELECT credits.debit('feed_alert', 'agent', 1) IS NOT NULL AS debited;   -- still low: once per window
SELECT kind, window_kind, threshold, payload ->> 'available' AS available
  FROM credits.events WHERE account_id = 'feed_alert' AND kind IN ('low_balance', 'threshold') ORDER BY event_id;
-- a percentage: 10 % of Free's 25 a month is 2.5; Free's day runs out first
SELECT credits.subscribe('feed_pct', 'free');
SELECT credits.set_alert('feed_pct', percent => 10);
SELECT alert_remaining, alert_percent FROM credits.accounts WHERE account_id = 'feed_pct';
SELECT credits.debit('feed_pct', 'agent', 7) IS NOT NULL AS debited;   -- 3 left today
SELECT credits.debit('feed_pct', 'agent', 0.5) IS NOT NULL AS debited; -- 2.5 left: the alert
SELECT kind, window_kind, threshold FROM credits.events WHERE account_id = 'feed_pct' ORDER BY event_id;
-- a hold brings it down too; clearing the alert stops it
SELECT credits.subscribe('feed_hold', 'pro');
SELECT credits.set_alert('feed_hold', remaining => 50);
SELECT credits.reserve('feed_hold', 'agent', 55) IS NOT NULL AS held;
SELECT kind FROM credits.events WHERE account_id = 'feed_hold';
SELECT credits.set_alert('feed_hold');
SELECT alert_remaining, alert_percent FROM credits.accounts WHERE account_id = 'feed_hold';
-- bad input
SELECT credits.set_alert('feed_hold', percent => 0);
SELECT credits.set_alert('feed_hold', percent => 101);
SELECT credits.set_alert('feed_hold', remaining => -1);
SELECT credits.set_alert('nobody', remaining => 1);
SELECT * FROM credits.read_events(-1);
SELECT * FROM credits.verify();
RESET credits.clock_override;
