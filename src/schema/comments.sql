-- The catalog documents the contract: \df+ credits.* and \d+ credits.<name>
-- describe every public function, table, view and column. (Internal helpers,
-- named with a leading underscore, are documented beside their code.)

-------------------------------------------------------------------------------
-- Functions and procedures
-------------------------------------------------------------------------------

COMMENT ON FUNCTION credits.subscribe(text, text, boolean, text) IS
'Create the account on a plan, or change its plan: an upgrade (above every limit held this month) starts a fresh allowance and forfeits the rest; any other move keeps the month''s usage. fresh_allowance overrides; an idempotency key makes a retry take effect once. Billing, admin.';
COMMENT ON FUNCTION credits.purchase(text, numeric, text) IS
'Raise the recurring monthly limit by the credits bought, at once and in full; UC006 on plans that may not buy. Returns the ledger entry id; an idempotency key replays it. Billing, admin.';
COMMENT ON FUNCTION credits.purchase(text, double precision, text) IS
'purchase with the credits as double precision (checked for 4 decimal places).';
COMMENT ON FUNCTION credits.reduce_purchase(text, numeric, text) IS
'Lower the recurring purchase from the next month on; what is available this month stays (an adjustment grant until the month ends). Returns the ledger entry id; UC013 beyond what is purchased. Billing, admin.';
COMMENT ON FUNCTION credits.reduce_purchase(text, double precision, text) IS
'reduce_purchase with the credits as double precision.';
COMMENT ON FUNCTION credits.void_grant(bigint, text) IS
'Remove what is left of a grant (an expiry entry with the reason); voiding it again returns the same entry; UC012 if it has expired. Billing, admin.';
COMMENT ON FUNCTION credits."grant"(text, numeric, text, timestamptz, text) IS
'One-off credits (promotional, purchased, adjustment), optionally expiring, used after the monthly allowance, soonest-expiring first. Returns the ledger entry id. Billing, admin.';
COMMENT ON FUNCTION credits."grant"(text, double precision, text, timestamptz, text) IS
'grant with the amount as double precision.';
COMMENT ON FUNCTION credits.debit(text, text, numeric, text, jsonb) IS
'Charge cost x quantity of a feature inside the caller''s transaction; every window must have it (UC001 otherwise). Returns the ledger entry id; an idempotency key replays the first result.';
COMMENT ON FUNCTION credits.debit(text, text, double precision, text, jsonb) IS
'debit with the quantity as double precision (a Python float; checked for 4 decimal places).';
COMMENT ON FUNCTION credits.try_debit(text, text, numeric, text, jsonb) IS
'As debit, but NULL instead of UC001 (and a denied or exhausted event that commits).';
COMMENT ON FUNCTION credits.try_debit(text, text, double precision, text, jsonb) IS
'try_debit with the quantity as double precision.';
COMMENT ON FUNCTION credits.debit_many(text[], text[], numeric[], text[], jsonb[]) IS
'Many debits in one call, each row decided as try_debit would, each account''s rows in the order given; one result per row: charged, replayed, refused (UC001) or rejected (another error, nothing written for it), with its entry id or error.';
COMMENT ON FUNCTION credits."check"(text, text, numeric) IS
'What a debit would do now, writing nothing: allowed, cost, available, the limiting window and when it resets.';
COMMENT ON FUNCTION credits."check"(text, text, double precision) IS
'check with the quantity as double precision.';
COMMENT ON FUNCTION credits.refund(bigint, numeric, text, text) IS
'Give back (part of) a debit: to the grants it drew while they are valid, then to its window while current. NULL amount = what is left; repeating it returns the same entry; an idempotency key makes a partial refund safe to retry.';
COMMENT ON FUNCTION credits.refund(bigint, double precision, text, text) IS
'refund with the amount as double precision.';
COMMENT ON FUNCTION credits.reserve(text, text, numeric, interval, text) IS
'Hold credits for work whose cost is known at the end; UC001 when a window lacks them. Returns the hold id. The hold belongs to the window it was placed in.';
COMMENT ON FUNCTION credits.reserve(text, text, double precision, interval, text) IS
'reserve with the amount as double precision.';
COMMENT ON FUNCTION credits.try_reserve(text, text, numeric, interval, text) IS
'As reserve, but NULL instead of UC001.';
COMMENT ON FUNCTION credits.try_reserve(text, text, double precision, interval, text) IS
'try_reserve with the amount as double precision.';
COMMENT ON FUNCTION credits.settle(bigint, numeric) IS
'Charge the actual amount of a hold and free the rest; up to the hold''s amount it always succeeds; 0 releases it. Returns the resolving ledger entry id; settling again for the same amount returns it again; UC008 if the hold was resolved otherwise.';
COMMENT ON FUNCTION credits.settle(bigint, double precision) IS
'settle with the amount as double precision.';
COMMENT ON FUNCTION credits.release(bigint) IS
'Free a hold without charge; releasing it again changes nothing; UC008 if it was settled or expired.';
COMMENT ON FUNCTION credits.refund_for(text, bigint, numeric, text, text) IS
'refund of a debit of the given account (UC011 if it is not one): on Citus, delegated to the account''s node.';
COMMENT ON FUNCTION credits.settle_for(text, bigint, numeric) IS
'settle of a hold of the given account (UC008 if it has none by that id): on Citus, delegated to the account''s node.';
COMMENT ON FUNCTION credits.settle_for(text, bigint, double precision) IS
'settle_for with the amount as double precision.';
COMMENT ON FUNCTION credits.refund_for(text, bigint, double precision, text, text) IS
'refund_for with the amount as double precision.';
COMMENT ON FUNCTION credits.release_for(text, bigint) IS
'release of a hold of the given account (UC008 if it has none by that id): on Citus, delegated to the account''s node.';
COMMENT ON FUNCTION credits.void_grant_for(text, bigint, text) IS
'void_grant of a grant of the given account (UC011 if it is not one): on Citus, delegated to the account''s node.';
COMMENT ON FUNCTION credits.read_events(bigint, integer) IS
'The events committed after a cursor, oldest first: following the cursors a consumer sees every committed event exactly once, whatever order transactions commit in.';
COMMENT ON FUNCTION credits.stats_reset() IS
'Reset this database''s activity counters (credits.stats) to zero. Admin.';
COMMENT ON FUNCTION credits.set_alert(text, numeric, numeric) IS
'A low_balance event for the account when what it has available falls to remaining credits or to percent of its monthly limit; once per window and level. Both NULL: no alert.';
COMMENT ON FUNCTION credits.set_stripes(text, integer) IS
'Spread an account''s debits over 2 to 64 stripes (0: off), for an account many sessions debit at once: a debit locks a free stripe instead of the account row. Decisions stay exact. Admin.';
COMMENT ON FUNCTION credits.history(text, bigint, integer) IS
'An account''s transactions newest first, kinds as words, features by name, the windows each counted in; keyset-paginated by before_entry.';
COMMENT ON FUNCTION credits.grants(text) IS
'Each grant of an account: kind, amount, remaining, expiry, status (active, used, expired, void).';
COMMENT ON FUNCTION credits.balance(text) IS
'The usage display of one account now: plan, daily and monthly limits, used and remaining, grants, holds, what a debit could take, and when the windows reset.';
COMMENT ON FUNCTION credits.bandwidth_allowance(text) IS
'Fusion bandwidth in GB derived from credits (rule 10): 20 GB per 100 credits of monthly limit, or 25 per 100 purchased for accounts created before credits.bandwidth_cutoff.';
COMMENT ON FUNCTION credits.verify() IS
'The audit: no rows when every stored balance is what the ledger implies; else one row per account and problem.';
COMMENT ON FUNCTION credits.distribute() IS
'Citus: distribute this install over the cluster (on the coordinator, as a superuser): per-account tables sharded by account, catalogs replicated, per-account calls delegated to the node holding the account. UC014 without Citus. Idempotent (docs/citus.md).';
COMMENT ON FUNCTION credits.ledger_balance(text, timestamptz) IS
'An account''s plan, purchases, window usage, grants and holds rebuilt from its ledger rows alone, as of an instant (default now): an auditor''s second opinion on balance().';
COMMENT ON FUNCTION credits.now() IS
'The extension''s clock: credits.clock_override if set (superuser-only, for tests), else the transaction''s start.';
COMMENT ON FUNCTION credits_internal.ledger_refuse_change() IS
'Trigger function: the ledger is append-only (UC010), for every role.';
COMMENT ON PROCEDURE credits.run_maintenance(timestamptz) IS
'Do everything due at an instant (default now): window resets, expiries, events; committing per batch, with progress NOTICEs. What the worker runs; idempotent. Admin.';
COMMENT ON PROCEDURE credits.refresh_rollups(bigint, interval) IS
'Bring the usage rollups up to every entry committed before the call, committing per batch. The worker does this by itself. Admin.';

-------------------------------------------------------------------------------
-- Tables (plans, features, accounts, ledger, grants and closed_windows are
-- described where they are created: schema.sql)
-------------------------------------------------------------------------------

COMMENT ON TABLE credits.grant_draws IS 'What each debit drew from each grant (positive) and each refund or expiry gave back (negative).';
COMMENT ON TABLE credits.holds IS 'Open and resolved reservations; accounts.reserved is the sum of the open ones.';
COMMENT ON TABLE credits.events IS 'Events (exhausted, denied, threshold, reset), also sent as NOTIFY credits when their transaction commits.';
COMMENT ON TABLE credits.stripes IS 'The stripes of striped accounts (set_stripes): budgets of their allowance that debits spend without locking the account row.';
COMMENT ON TABLE credits.idempotency IS 'Idempotency keys, per account, never expiring, with the entry they produced and a fingerprint of the request.';
COMMENT ON TABLE credits.maintenance_state IS 'The maintenance worker''s progress: everything due at or before done_through is done.';
COMMENT ON TABLE credits.maintenance_runs IS 'One row per maintenance run: its instant, phase, cursor and counts.';
COMMENT ON TABLE credits.maintenance_waiting IS 'Accounts a maintenance run skipped because a transaction held them, closed once free.';
COMMENT ON TABLE credits.usage_rollup IS 'Ledger totals per account, reporting month, kind and feature up to rollup_state.rolled_through (derived, not dumped).';
COMMENT ON TABLE credits.rollup_state IS 'How far the usage rollups reach, and the next candidate.';
COMMENT ON VIEW credits.maintenance_status IS 'What the maintenance worker did last, what is due next, how late, and what waits.';

-------------------------------------------------------------------------------
-- Columns
-------------------------------------------------------------------------------

COMMENT ON COLUMN credits.plans.plan IS 'Plan key.';
COMMENT ON COLUMN credits.plans.daily_limit IS 'Credits a day (UTC); NULL = no daily limit.';
COMMENT ON COLUMN credits.plans.monthly_allowance IS 'Credits a calendar month (UTC), before purchases.';
COMMENT ON COLUMN credits.plans.may_purchase IS 'Whether accounts on the plan may buy credits.';
COMMENT ON COLUMN credits.plans.description IS 'Free text.';
COMMENT ON COLUMN credits.plans.seeded IS 'A row the extension created (recreated by CREATE EXTENSION, not dumped until edited).';

COMMENT ON COLUMN credits.features.feature_id IS 'Feature id, as ledger entries store it.';
COMMENT ON COLUMN credits.features.feature IS 'Feature key, as debit() takes it.';
COMMENT ON COLUMN credits.features.product IS 'fusion, publish, or any (drawn by either).';
COMMENT ON COLUMN credits.features.cost IS 'Credits per unit, exact to 4 places.';
COMMENT ON COLUMN credits.features.unit IS 'What a unit is (generation, prompt, ...).';
COMMENT ON COLUMN credits.features.seeded IS 'A row the extension created (recreated by CREATE EXTENSION, not dumped until edited).';

COMMENT ON COLUMN credits.accounts.account_id IS 'Account key (the application''s), compared byte-wise.';
COMMENT ON COLUMN credits.accounts.plan IS 'Current plan.';
COMMENT ON COLUMN credits.accounts.created_at IS 'When it was created (bandwidth rule 10).';
COMMENT ON COLUMN credits.accounts.purchased IS 'Recurring monthly credits bought, on top of the plan''s allowance.';
COMMENT ON COLUMN credits.accounts.day IS 'The UTC day daily_used counts.';
COMMENT ON COLUMN credits.accounts.daily_used IS 'Credits charged on that day (grants included).';
COMMENT ON COLUMN credits.accounts.month IS 'The first day of the UTC month monthly_used counts.';
COMMENT ON COLUMN credits.accounts.monthly_used IS 'Allowance used in the current monthly window (grants are separate).';
COMMENT ON COLUMN credits.accounts.monthly_epoch IS 'Ledger entry that restarted the monthly window (a plan change or a purchase that set its usage); 0 = the 1st.';
COMMENT ON COLUMN credits.accounts.reserved IS 'Credits held by open holds.';
COMMENT ON COLUMN credits.accounts.last_at IS 'The latest instant a call decided at for this account: time only moves forward per account.';

COMMENT ON COLUMN credits.ledger.entry_id IS 'Entry id: the order in which the account''s entries were written.';
COMMENT ON COLUMN credits.ledger.account_id IS 'The account.';
COMMENT ON COLUMN credits.ledger.at IS 'The instant it counts at (the account''s time; a deadline or boundary for expiries and month ends).';
COMMENT ON COLUMN credits.ledger.kind IS 'S plan, F forfeit, P purchase, G grant, D debit, R refund, H hold, X hold freed, E grant expired.';
COMMENT ON COLUMN credits.ledger.feature_id IS 'The feature of a debit, refund or hold.';
COMMENT ON COLUMN credits.ledger.amount IS 'Credits (positive).';
COMMENT ON COLUMN credits.ledger.from_grants IS 'Debit, refund, hold: the part drawn from (or given back to, or held on) grants.';
COMMENT ON COLUMN credits.ledger.ref IS 'Refund: its debit; settle D and X: the hold; E: the grant; F of a hold: the hold.';
COMMENT ON COLUMN credits.ledger.metadata IS 'The caller''s metadata (debit), or what the kind records (plan change, forfeit reason, expiry).';

COMMENT ON COLUMN credits.grants.account_id IS 'The account.';
COMMENT ON COLUMN credits.grants.grant_id IS 'The grant''s G ledger entry.';
COMMENT ON COLUMN credits.grants.kind IS 'promotional, purchased or adjustment.';
COMMENT ON COLUMN credits.grants.amount IS 'Credits granted.';
COMMENT ON COLUMN credits.grants.remaining IS 'Credits left (as of its expiry, once expired).';
COMMENT ON COLUMN credits.grants.expires_at IS 'Unusable from this instant; NULL = never expires.';
COMMENT ON COLUMN credits.grants.expired_entry IS 'The E entry that expired what was left; 0 = expired with nothing left; NULL = not expired.';

COMMENT ON COLUMN credits.grant_draws.account_id IS 'The account.';
COMMENT ON COLUMN credits.grant_draws.entry_id IS 'The debit, refund or expiry entry.';
COMMENT ON COLUMN credits.grant_draws.grant_id IS 'The grant.';
COMMENT ON COLUMN credits.grant_draws.amount IS 'Drawn (positive) or given back (negative).';

COMMENT ON COLUMN credits.holds.account_id IS 'The account.';
COMMENT ON COLUMN credits.holds.hold_id IS 'The hold''s H ledger entry.';
COMMENT ON COLUMN credits.holds.feature_id IS 'The feature it was placed for.';
COMMENT ON COLUMN credits.holds.amount IS 'Credits held.';
COMMENT ON COLUMN credits.holds.expires_at IS 'Freed at this instant if not settled or released.';
COMMENT ON COLUMN credits.holds.resolved_entry IS 'The settling D or freeing X entry; NULL = open.';
COMMENT ON COLUMN credits.holds.from_grants IS 'The part held on grants; the rest is on the allowance of its month.';
COMMENT ON COLUMN credits.holds.day IS 'The UTC day it was placed in (it counts against that day''s limit).';
COMMENT ON COLUMN credits.holds.month IS 'The UTC month it was placed in (it counts against that month''s allowance).';

COMMENT ON COLUMN credits.events.event_id IS 'Event id, in the order events were created.';
COMMENT ON COLUMN credits.events.account_id IS 'The account.';
COMMENT ON COLUMN credits.events.at IS 'When.';
COMMENT ON COLUMN credits.events.kind IS 'exhausted, denied, threshold, reset or low_balance.';
COMMENT ON COLUMN credits.events.window_kind IS 'daily or monthly.';
COMMENT ON COLUMN credits.events.window_key IS 'The window: YYYY-MM-DD, YYYY-MM, or YYYY-MM#<entry> for a window restarted at that entry.';
COMMENT ON COLUMN credits.events.threshold IS 'threshold events: the percentage reached.';
COMMENT ON COLUMN credits.events.payload IS 'What was sent with NOTIFY credits.';
COMMENT ON COLUMN credits.events.cause_entry IS 'exhausted: the ledger entry that ran the window out (0 for the other kinds).';

COMMENT ON COLUMN credits.closed_windows.account_id IS 'The account.';
COMMENT ON COLUMN credits.closed_windows.window_kind IS 'daily or monthly.';
COMMENT ON COLUMN credits.closed_windows.window_start IS 'Its first day.';
COMMENT ON COLUMN credits.closed_windows.plan IS 'The plan when it closed.';
COMMENT ON COLUMN credits.closed_windows.window_limit IS 'Its limit when it closed; NULL = no daily limit.';
COMMENT ON COLUMN credits.closed_windows.used IS 'Used in it (monthly: of the allowance), holds settled after it closed included.';
COMMENT ON COLUMN credits.closed_windows.forfeited IS 'Monthly: allowance left unused, when it closed and as its holds resolved.';
COMMENT ON COLUMN credits.closed_windows.closed_at IS 'Its end (the next window''s first instant).';
COMMENT ON COLUMN credits.closed_windows.held IS 'Monthly: allowance still held by holds placed in it.';

COMMENT ON COLUMN credits.idempotency.account_id IS 'The account.';
COMMENT ON COLUMN credits.idempotency.idempotency_key IS 'The caller''s key.';
COMMENT ON COLUMN credits.idempotency.entry_id IS 'The entry the first call produced (what a replay returns).';
COMMENT ON COLUMN credits.idempotency.request IS 'Fingerprint of the first request (UC005 on a different one).';

COMMENT ON COLUMN credits.month_allowances.account_id IS 'The account.';
COMMENT ON COLUMN credits.month_allowances.month IS 'The month the row is about (an earlier month reads as none).';
COMMENT ON COLUMN credits.month_allowances.peak_limit IS 'The largest monthly limit held in it.';
COMMENT ON COLUMN credits.month_allowances.used_before IS 'Allowance used in it before the current window began.';

COMMENT ON COLUMN credits.maintenance_state.singleton IS 'Always true: one row.';
COMMENT ON COLUMN credits.maintenance_state.done_through IS 'Everything due at or before this instant is done; NULL = never ran.';
COMMENT ON COLUMN credits.maintenance_state.run_id IS 'The run in progress.';
COMMENT ON COLUMN credits.maintenance_state.last_error IS 'The latest error of a worker step.';
COMMENT ON COLUMN credits.maintenance_state.last_error_at IS 'When.';

COMMENT ON COLUMN credits.maintenance_runs.run_id IS 'Run id.';
COMMENT ON COLUMN credits.maintenance_runs.run_at IS 'The instant it processes.';
COMMENT ON COLUMN credits.maintenance_runs.previous IS 'done_through before it.';
COMMENT ON COLUMN credits.maintenance_runs.phase IS 'windows, expiries or done.';
COMMENT ON COLUMN credits.maintenance_runs.cursor IS 'windows phase: the last account done.';
COMMENT ON COLUMN credits.maintenance_runs.batches IS 'Batches (transactions) so far.';
COMMENT ON COLUMN credits.maintenance_runs.accounts IS 'Accounts whose windows it closed.';
COMMENT ON COLUMN credits.maintenance_runs.windows IS 'closed_windows rows it wrote.';
COMMENT ON COLUMN credits.maintenance_runs.expired IS 'Holds and grants it expired.';
COMMENT ON COLUMN credits.maintenance_runs.started_at IS 'When it started.';
COMMENT ON COLUMN credits.maintenance_runs.finished_at IS 'When it finished.';

COMMENT ON COLUMN credits.maintenance_waiting.run_id IS 'The run.';
COMMENT ON COLUMN credits.maintenance_waiting.account_id IS 'The account a transaction held.';
COMMENT ON COLUMN credits.maintenance_waiting.since IS 'When the run first found it held.';

COMMENT ON COLUMN credits.usage_rollup.account_id IS 'The account.';
COMMENT ON COLUMN credits.usage_rollup.month IS 'The reporting month.';
COMMENT ON COLUMN credits.usage_rollup.kind IS 'Ledger kind.';
COMMENT ON COLUMN credits.usage_rollup.feature_id IS 'Feature (NULL for kinds without one).';
COMMENT ON COLUMN credits.usage_rollup.amount IS 'Sum of amounts.';
COMMENT ON COLUMN credits.usage_rollup.from_grants IS 'Sum of the grant parts.';
COMMENT ON COLUMN credits.usage_rollup.entries IS 'Entries.';

COMMENT ON COLUMN credits.rollup_state.singleton IS 'Always true: one row.';
COMMENT ON COLUMN credits.rollup_state.rolled_through IS 'Every entry id at or below it is in usage_rollup.';
COMMENT ON COLUMN credits.rollup_state.candidate IS 'The next rolled_through, once no transaction older than candidate_at is open.';
COMMENT ON COLUMN credits.rollup_state.candidate_at IS 'When the candidate was taken.';
COMMENT ON COLUMN credits.rollup_state.refreshed_at IS 'Last refresh.';
COMMENT ON COLUMN credits.rollup_state.last_error IS 'The latest error of a refresh by the worker.';
COMMENT ON COLUMN credits.rollup_state.last_error_at IS 'When.';

COMMENT ON COLUMN credits.maintenance_status.worker_pid IS 'The pid of the worker serving this database; NULL when none does.';
COMMENT ON COLUMN credits.maintenance_status.done_through IS 'Everything due at or before this instant is done.';
COMMENT ON COLUMN credits.maintenance_status.running IS 'A run is in progress (or was cut short and not resumed yet).';
COMMENT ON COLUMN credits.maintenance_status.last_run_id IS 'The latest run.';
COMMENT ON COLUMN credits.maintenance_status.last_run_at IS 'The instant it processes.';
COMMENT ON COLUMN credits.maintenance_status.last_run_started IS 'When it started.';
COMMENT ON COLUMN credits.maintenance_status.last_run_finished IS 'When it finished.';
COMMENT ON COLUMN credits.maintenance_status.last_run_accounts IS 'Accounts whose windows it closed.';
COMMENT ON COLUMN credits.maintenance_status.last_run_windows IS 'Windows it closed.';
COMMENT ON COLUMN credits.maintenance_status.last_run_expired IS 'Holds and grants it expired.';
COMMENT ON COLUMN credits.maintenance_status.next_run IS 'When something is next due.';
COMMENT ON COLUMN credits.maintenance_status.lag IS 'How long something has been due without being done (NULL before the first run).';
COMMENT ON COLUMN credits.maintenance_status.last_error IS 'The latest error of a worker step.';
COMMENT ON COLUMN credits.maintenance_status.last_error_at IS 'When.';
COMMENT ON COLUMN credits.maintenance_status.waiting_accounts IS 'Accounts the current run skipped because a transaction held them.';
COMMENT ON COLUMN credits.maintenance_status.waiting_since IS 'Since when the oldest of them waits.';
COMMENT ON COLUMN credits.maintenance_status.worker_database IS 'credits.database: the databases workers serve (NULL when the library is not preloaded).';

COMMENT ON COLUMN credits.usage_daily.account_id IS 'The account.';
COMMENT ON COLUMN credits.usage_daily.day IS 'UTC day.';
COMMENT ON COLUMN credits.usage_daily.product IS 'fusion, publish or any.';
COMMENT ON COLUMN credits.usage_daily.feature IS 'Feature key.';
COMMENT ON COLUMN credits.usage_daily.debited IS 'Credits debited.';
COMMENT ON COLUMN credits.usage_daily.refunded IS 'Credits refunded.';
COMMENT ON COLUMN credits.usage_daily.net IS 'debited - refunded.';
COMMENT ON COLUMN credits.usage_daily.debits IS 'Debit entries.';
COMMENT ON COLUMN credits.usage_daily.refunds IS 'Refund entries.';

COMMENT ON COLUMN credits.usage_monthly.account_id IS 'The account.';
COMMENT ON COLUMN credits.usage_monthly.month IS 'UTC month.';
COMMENT ON COLUMN credits.usage_monthly.product IS 'fusion, publish or any.';
COMMENT ON COLUMN credits.usage_monthly.feature IS 'Feature key.';
COMMENT ON COLUMN credits.usage_monthly.debited IS 'Credits debited.';
COMMENT ON COLUMN credits.usage_monthly.refunded IS 'Credits refunded.';
COMMENT ON COLUMN credits.usage_monthly.net IS 'debited - refunded.';
COMMENT ON COLUMN credits.usage_monthly.debits IS 'Debit entries.';
COMMENT ON COLUMN credits.usage_monthly.refunds IS 'Refund entries.';

COMMENT ON COLUMN credits.account_months.account_id IS 'The account.';
COMMENT ON COLUMN credits.account_months.month IS 'UTC month.';
COMMENT ON COLUMN credits.account_months.debited IS 'Credits debited.';
COMMENT ON COLUMN credits.account_months.refunded IS 'Credits refunded.';
COMMENT ON COLUMN credits.account_months.net_usage IS 'debited - refunded.';
COMMENT ON COLUMN credits.account_months.net_from_grants IS 'The part of net_usage drawn from grants.';
COMMENT ON COLUMN credits.account_months.forfeited IS 'Allowance forfeited (month end, upgrades, holds of the month).';
COMMENT ON COLUMN credits.account_months.granted IS 'One-off credits granted.';
COMMENT ON COLUMN credits.account_months.purchased IS 'Recurring credits bought.';
COMMENT ON COLUMN credits.account_months.expired IS 'Grant credits expired.';

COMMENT ON COLUMN credits.tenant_months.month IS 'UTC month.';
COMMENT ON COLUMN credits.tenant_months.active_accounts IS 'Accounts with entries in the month.';
COMMENT ON COLUMN credits.tenant_months.debited IS 'Credits debited.';
COMMENT ON COLUMN credits.tenant_months.refunded IS 'Credits refunded.';
COMMENT ON COLUMN credits.tenant_months.net_usage IS 'debited - refunded.';
COMMENT ON COLUMN credits.tenant_months.forfeited IS 'Allowance forfeited.';
COMMENT ON COLUMN credits.tenant_months.granted IS 'One-off credits granted.';
COMMENT ON COLUMN credits.tenant_months.purchased IS 'Recurring credits bought.';
COMMENT ON COLUMN credits.tenant_months.expired IS 'Grant credits expired.';

COMMENT ON COLUMN credits.usage_display.account_id IS 'The account.';
COMMENT ON COLUMN credits.usage_display.plan IS 'Current plan.';
COMMENT ON COLUMN credits.usage_display.daily_limit IS 'Credits a day; NULL = no daily limit.';
COMMENT ON COLUMN credits.usage_display.daily_used IS 'Used today (UTC).';
COMMENT ON COLUMN credits.usage_display.daily_remaining IS 'daily_limit - daily_used.';
COMMENT ON COLUMN credits.usage_display.monthly_limit IS 'Allowance + purchases.';
COMMENT ON COLUMN credits.usage_display.monthly_used IS 'Allowance used this window.';
COMMENT ON COLUMN credits.usage_display.monthly_remaining IS 'monthly_limit - monthly_used, at least 0.';
COMMENT ON COLUMN credits.usage_display.granted_remaining IS 'Grant credits usable now.';
COMMENT ON COLUMN credits.usage_display.reserved IS 'Held by open holds.';
COMMENT ON COLUMN credits.usage_display.available IS 'What a debit could take now (every window, grants, holds).';
COMMENT ON COLUMN credits.usage_display.next_daily_reset IS 'Next 00:00 UTC.';
COMMENT ON COLUMN credits.usage_display.next_monthly_reset IS 'Next 1st of a month, 00:00 UTC.';

COMMENT ON COLUMN credits.rollup_status.rolled_through IS 'Every entry id at or below it is rolled up.';
COMMENT ON COLUMN credits.rollup_status.pending_entries IS 'Entries the views still read from the ledger.';
COMMENT ON COLUMN credits.rollup_status.refreshed_at IS 'Last refresh.';
COMMENT ON COLUMN credits.rollup_status.candidate IS 'The next rolled_through.';
COMMENT ON COLUMN credits.rollup_status.candidate_at IS 'When the candidate was taken.';
COMMENT ON COLUMN credits.rollup_status.last_error IS 'The latest refresh error.';
COMMENT ON COLUMN credits.rollup_status.last_error_at IS 'When.';

COMMENT ON COLUMN credits.account_months.plan IS 'The account''s plan at the month''s end (now, for the current month).';
COMMENT ON COLUMN credits.usage_monthly.plan IS 'The account''s plan at the month''s end (now, for the current month).';

COMMENT ON COLUMN credits.account_plans.account_id IS 'The account.';
COMMENT ON COLUMN credits.account_plans.plan IS 'Its plan now.';
COMMENT ON COLUMN credits.account_plans.daily_limit IS 'The plan''s daily limit (NULL = none).';
COMMENT ON COLUMN credits.account_plans.monthly_allowance IS 'The plan''s monthly allowance.';
COMMENT ON COLUMN credits.account_plans.purchased IS 'Recurring purchased credits per month.';
COMMENT ON COLUMN credits.account_plans.monthly_limit IS 'monthly_allowance + purchased.';
COMMENT ON COLUMN credits.account_plans.created_at IS 'When the account was created.';

COMMENT ON COLUMN credits.forfeits_monthly.month IS 'The UTC month whose allowance was forfeited.';
COMMENT ON COLUMN credits.forfeits_monthly.plan IS 'The plan the allowance belonged to (the plan left, for an upgrade).';
COMMENT ON COLUMN credits.forfeits_monthly.cause IS 'month_end, upgrade, or hold (what a hold of a closed month did not use).';
COMMENT ON COLUMN credits.forfeits_monthly.accounts IS 'Accounts that forfeited.';
COMMENT ON COLUMN credits.forfeits_monthly.forfeited IS 'Credits forfeited.';

COMMENT ON COLUMN credits.accounts.alert_remaining IS 'Alert (set_alert): a low_balance event when available falls to this many credits; NULL: none.';
COMMENT ON COLUMN credits.accounts.alert_percent IS 'Alert (set_alert): ... or to this percentage of the monthly limit; NULL: none.';

COMMENT ON COLUMN credits.accounts.stripes IS 'Stripes its debits spread over (set_stripes), 0 for none.';
COMMENT ON COLUMN credits.accounts.stripe_budget IS 'Allowance handed to its stripes, counted in daily_used and monthly_used until what they did not spend is folded back.';
COMMENT ON COLUMN credits.stripes.account_id IS 'The account.';
COMMENT ON COLUMN credits.stripes.stripe IS 'Its number, from 0.';
COMMENT ON COLUMN credits.stripes.day IS 'The UTC day its budget counts in.';
COMMENT ON COLUMN credits.stripes.month IS 'The UTC month its budget counts in.';
COMMENT ON COLUMN credits.stripes.budget IS 'Allowance the account handed it.';
COMMENT ON COLUMN credits.stripes.spent IS 'Debited from the budget.';
COMMENT ON COLUMN credits.stripes.last_at IS 'The instant of its latest debit.';

COMMENT ON COLUMN credits.stats.plan IS 'The account''s plan at the call.';
COMMENT ON COLUMN credits.stats.product IS 'The feature''s product.';
COMMENT ON COLUMN credits.stats.feature IS 'The feature.';
COMMENT ON COLUMN credits.stats.charges IS 'Debits and settles charged (fast and SQL path).';
COMMENT ON COLUMN credits.stats.denials IS 'Debits and reserves refused for want of credits (UC001 or a try_ NULL), counted though a raised one rolls back.';
COMMENT ON COLUMN credits.stats.refunds IS 'Refunds.';
COMMENT ON COLUMN credits.stats.holds IS 'Holds placed.';
