-- Money never appears or vanishes through a sequence of calls (SPEC §4,
-- revision 2). Each block is one rule, as a customer would meet it; every
-- block ends with verify(), which reports any balance the ledger does not
-- imply.
\set SHOW_CONTEXT never
SET credits.clock_override = '2029-03-10 09:00:00+00';

-- §4.1 Plan changes. An upgrade is a move above every limit held this month:
-- Free with 25 used -> Pro is one (a fresh 100, nothing of Free left to forfeit).
SELECT credits.subscribe('m_round', 'free');
SELECT credits.debit('m_round', 'agent', 10) IS NOT NULL AS debited;
SET credits.clock_override = '2029-03-11 09:00:00+00';
SELECT credits.debit('m_round', 'agent', 10) IS NOT NULL AS debited;
SET credits.clock_override = '2029-03-12 09:00:00+00';
SELECT credits.debit('m_round', 'agent', 5) IS NOT NULL AS debited;
SELECT credits.subscribe('m_round', 'pro');
SELECT credits.debit('m_round', 'agent', 10) IS NOT NULL AS debited;
SELECT plan, monthly_limit, monthly_used, available FROM credits.balance('m_round');
-- ... and back to Free is not a second Free allowance: the month's usage is
-- everything used from allowances this month (25 + 10), so nothing is left.
SELECT credits.subscribe('m_round', 'free');
SELECT plan, monthly_limit, monthly_used, monthly_remaining, available FROM credits.balance('m_round');
SELECT credits.try_debit('m_round', 'agent', 1) AS denied;
-- Pro again is a return to a level already held: no fresh 100 either.
SELECT credits.subscribe('m_round', 'pro');
SELECT plan, monthly_limit, monthly_used, monthly_remaining, available FROM credits.balance('m_round');
SELECT kind, amount, metadata->>'plan' AS plan, metadata->>'upgrade' AS upgrade,
       metadata->>'monthly_used' AS monthly_used
  FROM credits.ledger WHERE account_id = 'm_round' AND kind IN ('S', 'F') ORDER BY entry_id;
SELECT * FROM credits.verify();

-- Pro with 100 used -> Free -> Pro, any number of times: never a fresh 100.
SELECT credits.subscribe('m_loop', 'pro');
SELECT credits.debit('m_loop', 'agent', 100) IS NOT NULL AS debited;
SELECT credits.subscribe('m_loop', 'free');
SELECT credits.subscribe('m_loop', 'pro');
SELECT credits.subscribe('m_loop', 'free');
SELECT credits.subscribe('m_loop', 'pro');
SELECT monthly_used, available FROM credits.balance('m_loop');
-- A larger plan than any held this month is an upgrade again: Pro's unused
-- remainder (none) is forfeited and Growth's allowance starts in full.
UPDATE credits.plans SET monthly_allowance = 300 WHERE plan = 'legacy_growth';
SELECT credits.subscribe('m_loop', 'legacy_growth');
SELECT plan, monthly_limit, monthly_used, available FROM credits.balance('m_loop');
SELECT * FROM credits.verify();

-- The caller's billing system decides: fresh_allowance => true when it
-- charged the change as a new period, false when it did not.
SELECT credits.subscribe('m_forced', 'pro');
SELECT credits.debit('m_forced', 'agent', 70) IS NOT NULL AS debited;
SELECT credits.subscribe('m_forced', 'free');
SELECT credits.subscribe('m_forced', 'pro', fresh_allowance => true);
SELECT plan, monthly_used, available FROM credits.balance('m_forced');
SELECT kind, amount, metadata->>'reason' AS reason FROM credits.ledger
 WHERE account_id = 'm_forced' AND kind = 'F' ORDER BY entry_id;
SELECT credits.subscribe('m_unforced', 'free');
SELECT credits.debit('m_unforced', 'agent', 5) IS NOT NULL AS debited;
SELECT credits.subscribe('m_unforced', 'pro', fresh_allowance => false);
SELECT plan, monthly_used, available FROM credits.balance('m_unforced');
SELECT * FROM credits.verify();

-- §4.2 A purchase is worth its full amount at once, even after a downgrade
-- left the month's usage above the new limit.
SELECT credits.subscribe('m_buy', 'pro');
SELECT credits.debit('m_buy', 'agent', 60) IS NOT NULL AS debited;
SELECT credits.subscribe('m_buy', 'legacy_basic');
SELECT monthly_limit, monthly_used, available FROM credits.balance('m_buy');
SELECT credits.purchase('m_buy', 50);
SELECT monthly_limit, monthly_used, available FROM credits.balance('m_buy');
SELECT credits.debit('m_buy', 'agent', 50) IS NOT NULL AS debited;
SELECT credits.try_debit('m_buy', 'agent', 1) AS denied;
SELECT * FROM credits.verify();
-- What the purchase set aside still counts as used this month: moving on to
-- Free and back to Pro (a level already held) gives no second allowance.
SELECT credits.subscribe('m_buy_back', 'pro');
SELECT credits.debit('m_buy_back', 'agent', 60) IS NOT NULL AS debited;
SELECT credits.subscribe('m_buy_back', 'legacy_basic');
SELECT credits.purchase('m_buy_back', 5);
SELECT credits.debit('m_buy_back', 'agent', 5) IS NOT NULL AS debited;
SELECT credits.subscribe('m_buy_back', 'free');
SELECT credits.subscribe('m_buy_back', 'pro');
SELECT plan, monthly_limit, monthly_used, available FROM credits.balance('m_buy_back');
SELECT * FROM credits.verify();

-- §4.4 available is never negative: Pro with a 50 hold moves to Free (25).
SELECT credits.subscribe('m_hold', 'pro');
SELECT credits.reserve('m_hold', 'agent', 50) IS NOT NULL AS held;
SELECT credits.subscribe('m_hold', 'free');
SELECT plan, monthly_limit, reserved, granted_remaining, available FROM credits.balance('m_hold');
SELECT * FROM credits.verify();

-- §4.5 A refund gives back to a grant only while it is valid: a draw from
-- a grant that has expired since is recorded as expired at once.
SELECT credits.subscribe('m_grant', 'pro');
SELECT credits.debit('m_grant', 'agent', 100) IS NOT NULL AS debited;
SELECT credits.grant('m_grant', 20, expires_at => '2029-03-12 10:00:00+00') AS grant_id \gset
SELECT credits.debit('m_grant', 'agent', 15) AS debit_id \gset
SELECT granted_remaining, available FROM credits.balance('m_grant');
SET credits.clock_override = '2029-03-12 11:00:00+00';
SELECT granted_remaining, available FROM credits.balance('m_grant');
SELECT credits.refund(:debit_id) IS NOT NULL AS refunded;
SELECT granted_remaining, available FROM credits.balance('m_grant');
SELECT kind, amount, from_grants, ref = :grant_id AS of_the_grant, metadata ? 'refund' AS by_refund
  FROM credits.ledger WHERE account_id = 'm_grant' AND kind IN ('R', 'E') ORDER BY entry_id;
SELECT remaining FROM credits.grants WHERE grant_id = :grant_id;
SELECT * FROM credits.verify();

-- §4.6 Time only moves forward per account. Another session rolled the
-- account into 13 March; a transaction whose clock still says 12 March
-- 23:59:59 counts in the account's day, and stamps its entry there.
SET credits.clock_override = '2029-03-12 20:00:00+00';
SELECT credits.subscribe('m_clock', 'free');
SELECT credits.debit('m_clock', 'agent', 9) IS NOT NULL AS debited;
SET credits.clock_override = '2029-03-13 00:00:01+00';
SELECT credits.debit('m_clock', 'agent', 10) IS NOT NULL AS debited;
SET credits.clock_override = '2029-03-12 23:59:59+00';
SELECT credits.try_debit('m_clock', 'agent', 1) AS denied_the_day_is_full;
SELECT daily_used, daily_remaining, next_daily_reset FROM credits.balance('m_clock');
SELECT at FROM credits.ledger WHERE account_id = 'm_clock' ORDER BY entry_id DESC LIMIT 1;
SELECT window_kind, window_start, used FROM credits.closed_windows WHERE account_id = 'm_clock';
-- A clock set back by hours, a day or a month changes nothing either.
SET credits.clock_override = '2029-02-20 12:00:00+00';
SELECT credits.try_debit('m_clock', 'agent', 1) AS denied;
SELECT credits.grant('m_clock', 1) IS NOT NULL AS granted;
SELECT credits.try_debit('m_clock', 'agent', 1) AS denied_by_the_daily_limit;
SELECT daily_used, monthly_used, available FROM credits.balance('m_clock');
SELECT * FROM credits.verify();
RESET credits.clock_override;

-- §4.7 Events. A debit that empties the daily and the monthly window at once
-- reports both; the next midnight sends no reset (nothing is available).
SET credits.clock_override = '2029-03-20 09:00:00+00';
SELECT credits.subscribe('m_ev', 'free');
UPDATE credits.plans SET daily_limit = 30 WHERE plan = 'free';
SELECT credits.debit('m_ev', 'agent', 15) IS NOT NULL AS debited;
UPDATE credits.plans SET daily_limit = 10 WHERE plan = 'free';
SET credits.clock_override = '2029-03-21 09:00:00+00';
SELECT credits.debit('m_ev', 'agent', 10) IS NOT NULL AS debited;
SELECT kind, window_kind, window_key, threshold, payload->>'available' AS available
  FROM credits.events WHERE account_id = 'm_ev' ORDER BY event_id;
SET credits.clock_override = '2029-03-22 00:00:00+00';
SET client_min_messages = warning;
CALL credits.run_maintenance();
RESET client_min_messages;
SELECT count(*) AS reset_events FROM credits.events WHERE account_id = 'm_ev' AND kind = 'reset';
-- A denial with credits left is a denied event, not exhausted.
SELECT credits.subscribe('m_deny', 'pro');
SELECT credits.try_debit('m_deny', 'agent', 101) AS denied;
SELECT credits.try_debit('m_deny', 'agent', 102) AS denied;
SELECT kind, window_kind, payload->>'available' AS available FROM credits.events WHERE account_id = 'm_deny';
-- After a purchase the account can run out again, and says so again.
SELECT credits.debit('m_deny', 'agent', 100) IS NOT NULL AS debited;
SELECT credits.purchase('m_deny', 10);
SELECT credits.debit('m_deny', 'agent', 10) IS NOT NULL AS debited;
SELECT kind, window_kind, window_key FROM credits.events
 WHERE account_id = 'm_deny' AND kind = 'exhausted' ORDER BY event_id;
-- A denial with nothing left adds nothing: the window already said it ran out.
SELECT credits.try_debit('m_deny', 'agent', 1) AS denied;
SELECT count(*) AS exhausted FROM credits.events WHERE account_id = 'm_deny' AND kind = 'exhausted';
-- A plan change that leaves nothing available is an exhausted event too ...
SELECT credits.subscribe('m_change', 'pro');
SELECT credits.debit('m_change', 'agent', 30) IS NOT NULL AS debited;
SELECT credits.subscribe('m_change', 'free');
SELECT kind, window_kind FROM credits.events WHERE account_id = 'm_change' ORDER BY event_id;
-- ... and so is a grant that expires with nothing else left.
SELECT credits.subscribe('m_expiry', 'pro');
SELECT credits.debit('m_expiry', 'agent', 100) IS NOT NULL AS debited;
SELECT credits.grant('m_expiry', 5, expires_at => '2029-03-22 06:00:00+00') IS NOT NULL AS granted;
SET credits.clock_override = '2029-03-22 07:00:00+00';
SET client_min_messages = warning;
CALL credits.run_maintenance();
RESET client_min_messages;
SELECT kind, window_kind, payload->>'available' AS available FROM credits.events
 WHERE account_id = 'm_expiry' ORDER BY event_id;
SELECT * FROM credits.verify();

-- §4.8 A key's fingerprint does not depend on session settings: the same
-- reserve, retried under another IntervalStyle, DateStyle and TimeZone,
-- replays its first result.
SELECT credits.subscribe('m_fp', 'pro');
SELECT credits.reserve('m_fp', 'agent', 5, '1 day 02:00', 'fp-1') AS hold_id \gset
SET IntervalStyle = iso_8601;
SET DateStyle = 'SQL, DMY';
SET TimeZone = 'America/New_York';
SET extra_float_digits = 0;
SELECT credits.reserve('m_fp', 'agent', 5, '1 day 02:00', 'fp-1') = :hold_id AS replayed;
SELECT credits.reserve('m_fp', 'agent', 5, '1 day 03:00', 'fp-1');
\echo :LAST_ERROR_SQLSTATE
RESET IntervalStyle;
RESET DateStyle;
RESET TimeZone;
RESET extra_float_digits;
-- The hold's deadline is 26 hours later whatever the session's TimeZone.
SELECT expires_at - '2029-03-22 07:00:00+00' AS ttl FROM credits.holds WHERE hold_id = :hold_id;
-- The metadata limit is on the value's size as JSON text: a 1 MB value that
-- compresses to a few kB (read from an lz4-compressed column) is refused,
-- and nothing is written.
CREATE TEMP TABLE big_meta (m jsonb COMPRESSION lz4);
INSERT INTO big_meta SELECT jsonb_build_object('note', repeat('x', 1000000));
SELECT pg_column_size(m) < 20000 AS stored_small, octet_length(m::text) AS text_bytes FROM big_meta;
SELECT count(*) AS entries_before FROM credits.ledger WHERE account_id = 'm_fp';
SELECT credits.debit('m_fp', 'agent', 1, NULL, m) FROM big_meta;
\echo :LAST_ERROR_SQLSTATE
SELECT credits.debit('m_fp', 'agent', 1, 'fp-meta', m) FROM big_meta;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS entries_after FROM credits.ledger WHERE account_id = 'm_fp';
-- 4096 bytes of JSON text pass, 4097 do not.
SELECT credits.debit('m_fp', 'agent', 1, NULL, jsonb_build_object('n', repeat('y', 4096 - 9))) IS NOT NULL AS debited;
SELECT credits.debit('m_fp', 'agent', 1, NULL, jsonb_build_object('n', repeat('y', 4096 - 8)));
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM credits.verify();
RESET credits.clock_override;

-- §4.3 A hold belongs to the window it was placed in. Reserved at 23:50 on
-- the month's last day, settled at 00:10 on the 1st: March's allowance pays,
-- its closed record shows it, and April's 100 are untouched.
SET credits.clock_override = '2029-03-31 23:50:00+00';
SELECT credits.subscribe('m_late', 'pro');
SELECT credits.reserve('m_late', 'agent', 100, '1 hour') AS late_hold \gset
SET credits.clock_override = '2029-04-01 00:10:00+00';
SET client_min_messages = warning;
CALL credits.run_maintenance();
RESET client_min_messages;
SELECT monthly_used, reserved, available FROM credits.balance('m_late');
SELECT window_start, used, forfeited, held FROM credits.closed_windows
 WHERE account_id = 'm_late' AND window_kind = 'monthly';
SELECT credits.settle(:late_hold, 100) IS NOT NULL AS settled;
SELECT monthly_used, reserved, available FROM credits.balance('m_late');
SELECT window_start, used, forfeited, held FROM credits.closed_windows
 WHERE account_id = 'm_late' AND window_kind = 'monthly';
-- More than the hold after its window closed is refused, nothing written.
SET credits.clock_override = '2029-04-30 23:50:00+00';
SELECT credits.reserve('m_late', 'agent', 10, '1 hour') AS late_hold \gset
SET credits.clock_override = '2029-05-01 00:10:00+00';
SELECT credits.settle(:late_hold, 11);
\echo :LAST_ERROR_SQLSTATE
-- What a hold of a closed month does not use is forfeited when it resolves.
SELECT credits.settle(:late_hold, 4) IS NOT NULL AS settled;
SELECT window_start, used, forfeited, held FROM credits.closed_windows
 WHERE account_id = 'm_late' AND window_kind = 'monthly' ORDER BY window_start;
SELECT kind, amount, metadata->>'reason' AS reason, metadata->>'month' AS month
  FROM credits.ledger WHERE account_id = 'm_late' AND kind = 'F' ORDER BY entry_id;
SELECT monthly_used, available FROM credits.balance('m_late');
SELECT * FROM credits.verify();
-- Free's daily window: a hold placed at 23:50 and settled after midnight
-- counts on its own day; the new day's 10 are untouched.
SET credits.clock_override = '2029-05-03 23:50:00+00';
SELECT credits.subscribe('m_late_free', 'free');
SELECT credits.reserve('m_late_free', 'agent', 8, '1 hour') AS late_hold \gset
SET credits.clock_override = '2029-05-04 00:10:00+00';
SELECT credits.settle(:late_hold, 8) IS NOT NULL AS settled;
SELECT daily_used, daily_remaining, monthly_used, available FROM credits.balance('m_late_free');
SELECT window_kind, window_start, used FROM credits.closed_windows WHERE account_id = 'm_late_free';
SELECT * FROM credits.verify();

-- §4.4 A hold keeps what it reserved when the plan shrinks under it, and
-- credits granted later are usable at once.
SET credits.clock_override = '2029-05-10 09:00:00+00';
SELECT credits.subscribe('m_shrink', 'pro');
SELECT credits.reserve('m_shrink', 'agent', 50) AS shrink_hold \gset
SELECT credits.subscribe('m_shrink', 'legacy_basic');
SELECT reserved, available FROM credits.balance('m_shrink');
SELECT credits.grant('m_shrink', 4) IS NOT NULL AS granted;
SELECT reserved, granted_remaining, available FROM credits.balance('m_shrink');
SELECT credits.debit('m_shrink', 'agent', 4) IS NOT NULL AS debited_the_grant;
SELECT credits.settle(:shrink_hold, 50) IS NOT NULL AS settled_in_full;
SELECT monthly_limit, monthly_used, reserved, granted_remaining, available FROM credits.balance('m_shrink');
SELECT * FROM credits.verify();
-- (A daily limit caps all spending, holds included: on Free, the same hold
-- leaves nothing for today, whatever is granted.)
SELECT credits.subscribe('m_shrink_free', 'pro');
SELECT credits.reserve('m_shrink_free', 'agent', 50) IS NOT NULL AS held;
SELECT credits.subscribe('m_shrink_free', 'free');
SELECT credits.grant('m_shrink_free', 4) IS NOT NULL AS granted;
SELECT daily_remaining, reserved, granted_remaining, available FROM credits.balance('m_shrink_free');

-- Holds and grants (the rule we chose): a hold is a promise, not an earmark.
-- A debit takes allowance a hold holds before it takes a grant, and the
-- hold is backed by the grant instead; so releasing the hold never leaves
-- allowance unused while a grant was spent.
SELECT credits.subscribe('m_promise', 'pro');
SELECT credits.grant('m_promise', 10) IS NOT NULL AS granted;
SELECT credits.reserve('m_promise', 'agent', 95) AS promise_hold \gset
SELECT credits.debit('m_promise', 'agent', 10) IS NOT NULL AS debited;
SELECT monthly_used, granted_remaining, reserved, available FROM credits.balance('m_promise');
SELECT amount, from_grants FROM credits.holds WHERE hold_id = :promise_hold;
SELECT credits.release(:promise_hold);
SELECT monthly_used, granted_remaining, reserved, available FROM credits.balance('m_promise');
SELECT * FROM credits.verify();
RESET credits.clock_override;

-- The invariant of SPEC §4 as one verify() check: in a month with plan
-- changes, allowance used + forfeited <= the allowances granted. A forged
-- debit (as a superuser could insert one) is caught.
SET credits.clock_override = '2029-03-25 09:00:00+00';
BEGIN;
INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount)
SELECT 'm_round', '2029-03-12 10:00:00+00', 'D', feature_id, 200 FROM credits.features WHERE feature = 'agent';
SELECT * FROM credits.verify() WHERE account_id = 'm_round';
ROLLBACK;
SELECT * FROM credits.verify();
RESET credits.clock_override;

-- §4.1 with §4.3: an upgrade while a hold is open forfeits the old
-- allowance but what the hold holds; a settle charges the new window, and
-- what the hold does not use of the old allowance is forfeited when it
-- resolves. Even a fresh window smaller than the hold (fresh_allowance to a
-- plan of 0) keeps its promise without used + forfeited exceeding the grant.
SET credits.clock_override = '2029-06-10 09:00:00+00';
SELECT credits.subscribe('m_up_settle', 'pro'), credits.subscribe('m_up_release', 'pro');
SELECT credits.debit(a, 'agent', 17) IS NOT NULL AS debited FROM unnest(ARRAY['m_up_settle', 'm_up_release']) a;
SELECT credits.reserve('m_up_settle', 'agent', 10) AS up_h1 \gset
SELECT credits.reserve('m_up_release', 'agent', 10) AS up_h2 \gset
SELECT credits.subscribe(a, 'legacy_basic', fresh_allowance => true) FROM unnest(ARRAY['m_up_settle', 'm_up_release']) a;
SELECT account_id, amount, metadata ->> 'reason' AS reason FROM credits.ledger
 WHERE account_id IN ('m_up_settle', 'm_up_release') AND kind = 'F' ORDER BY entry_id;
SELECT credits.settle(:up_h1, 4) IS NOT NULL AS settled;
SELECT credits.release(:up_h2);
SELECT account_id, amount, metadata ->> 'reason' AS reason FROM credits.ledger
 WHERE account_id IN ('m_up_settle', 'm_up_release') AND kind = 'F' ORDER BY entry_id;
SELECT account_id, plan, monthly_used, reserved, available FROM credits.usage_display
 WHERE account_id IN ('m_up_settle', 'm_up_release') ORDER BY account_id;
SELECT * FROM credits.verify();
-- the same with a hold that expires
SELECT credits.subscribe('m_up_expire', 'pro');
SELECT credits.reserve('m_up_expire', 'agent', 10, '1 hour') IS NOT NULL AS held;
SELECT credits.subscribe('m_up_expire', 'enterprise', fresh_allowance => true);
SET credits.clock_override = '2029-06-10 11:00:00+00';
SELECT available FROM credits.balance('m_up_expire');
SET client_min_messages = warning;
CALL credits.run_maintenance();
RESET client_min_messages;
SELECT amount, metadata ->> 'reason' AS reason FROM credits.ledger WHERE account_id = 'm_up_expire' AND kind = 'F' ORDER BY entry_id;
SELECT * FROM credits.verify();
RESET credits.clock_override;
