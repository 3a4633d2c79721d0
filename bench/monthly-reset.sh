#!/usr/bin/env bash
# Monthly reset of ACCOUNTS accounts (default 1,000,000) by the background
# worker, with debit traffic running: how long the reset takes, and debit
# p50/p99 during it next to the same traffic with no reset running.
#
#   bench/monthly-reset.sh   (env: ACCOUNTS, LOADS, IDLE_SECONDS, DURING_SECONDS, PORT)
#
# Builds a release, starts its own cluster (target/clusters/bench), loads the
# accounts at 2031-01-31 12:00 UTC, then moves the cluster clock over one
# month end per traffic level in LOADS (default "1 4": pgbench clients
# debiting flat out on random accounts; 4 saturate 2 cores), and one more
# with no traffic. Each month end makes the worker close every account's
# month. Prints a table and writes it to target/bench/.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPORT=$(bench_report reset)

ACCOUNTS=${ACCOUNTS:-1000000}
LOADS=${LOADS:-1 4}
IDLE_SECONDS=${IDLE_SECONDS:-15}
DURING_SECONDS=${DURING_SECONDS:-120}  # debit traffic started 2 s before the reset; must outlast it
PORT=${PORT:-28817}
DB=bench_reset
BEFORE='2031-01-31 12:00:00+00'
MONTHS=(January February March April May June)
WORK=$(mktemp -d /tmp/monthly-reset.XXXXXX)
chmod 777 "$WORK"

bench_cluster_up "$PORT" "$DB"

say "loading $ACCOUNTS pro accounts at $BEFORE (each has used some of January)"
bench_setting credits.clock_override "$BEFORE"
bench_fresh_db "$DB"
start=$(date +%s.%N)
# Fixture rows written in bulk, as the API would have written them (a plan
# entry and one debit per account), so verify() holds.
sql -d "$DB" <<SQL
CREATE EXTENSION credits;
INSERT INTO credits.accounts (account_id, plan, created_at, purchased, day, daily_used, month, monthly_used)
SELECT 'a' || i, 'pro', '$BEFORE', 1000000, '2031-01-31', i % 50 + 1, '2031-01-01', i % 50 + 1
  FROM generate_series(1, $ACCOUNTS) i;
INSERT INTO credits.ledger (account_id, at, kind, amount, metadata)
SELECT 'a' || i, '$BEFORE', 'S', 0, '{"plan": "pro", "purchased": 1000000}' FROM generate_series(1, $ACCOUNTS) i;
INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount)
SELECT 'a' || i, '$BEFORE', 'D', (SELECT feature_id FROM credits.features WHERE feature = 'agent'), i % 50 + 1
  FROM generate_series(1, $ACCOUNTS) i;
-- (rolled up now, not by the worker while the idle traffic is measured)
CALL credits.refresh_rollups();
VACUUM ANALYZE;
CHECKPOINT;
SQL
printf '    loaded in %.1f s\n' "$(echo "$(date +%s.%N) - $start" | bc)"
# The worker's first run in this database finds nothing due.
until [ "$(sql -d "$DB" -Atc "SELECT done_through IS NOT NULL FROM credits.maintenance_state")" = t ]; do sleep 0.2; done

printf '\\set aid random(1, %s)\nSELECT credits.debit(%s || :aid, %s, 1);\n' "$ACCOUNTS" "'a'" "'agent'" >"$WORK/debit.sql"

# pgbench_run NAME CLIENTS SECONDS: debit traffic, per-transaction log in $WORK/NAME.*
pgbench_run() {
    bench_pgbench "$WORK/$1" -M prepared -c "$2" -j "$(( $2 < 2 ? 1 : 2 ))" -T "$3" -f "$WORK/debit.sql" \
        -l --log-prefix="$WORK/$1" "$DB"
}

# month_end I: moves the clock past the end of month I (0 = January) and
# waits for the worker's reset; sets reset_from, reset_to, reset_seconds,
# accounts, windows, batches from its maintenance_runs row.
month_end() {
    local when
    when=$(printf '2031-%02d-01 00:00:00.5+00' $(( $1 + 2 )))
    bench_setting credits.clock_override "$when"
    until [ "$(sql -d "$DB" -Atc "SELECT done_through = '$when' FROM credits.maintenance_state")" = t ]; do sleep 0.2; done
    read -r reset_from reset_to reset_seconds accounts windows batches < <(sql -d "$DB" -AtF ' ' -c "
        SELECT extract(epoch FROM started_at), extract(epoch FROM finished_at),
               round(extract(epoch FROM finished_at - started_at)::numeric, 2), accounts, windows, batches
          FROM credits.maintenance_runs WHERE run_at = '$when'")
}

# The worker folds a reset's 1,000,000 ledger entries into the usage rollups
# once the run is done: wait for that, so "no reset running" means no
# catch-up work either.
rollups_caught_up() {
    until [ "$(sql -d "$DB" -Atc "SELECT pending_entries < 50000 FROM credits.rollup_status")" = t ]; do sleep 0.5; done
}

rows=""
month=0
for clients in $LOADS; do
    name=${MONTHS[$month]}
    say "debit traffic, no reset running ($clients clients flat out, ${IDLE_SECONDS}s, in $name)"
    pgbench_run "idle_before_$clients" "$clients" "$IDLE_SECONDS"
    read -r n_before p50_before p99_before < <(percentiles "$WORK/idle_before_$clients")

    say "$name's reset by the worker, $clients clients debiting flat out"
    pgbench_run "during_$clients" "$clients" "$DURING_SECONDS" &
    bench_pid=$!
    sleep 2
    month_end "$month"
    wait "$bench_pid"
    if [ "$(echo "$reset_seconds + 2 > $DURING_SECONDS" | bc)" = 1 ]; then
        echo "WARNING: the reset outlasted the debit traffic; raise DURING_SECONDS" >&2
    fi
    read -r n_during p50_during p99_during < <(percentiles "$WORK/during_$clients" "$reset_from" "$reset_to")

    rollups_caught_up
    say "debit traffic, no reset running ($clients clients flat out, ${IDLE_SECONDS}s, after $name's reset)"
    pgbench_run "idle_after_$clients" "$clients" "$IDLE_SECONDS"
    read -r n_after p50_after p99_after < <(percentiles "$WORK/idle_after_$clients")

    # Against both idle runs: one run's p99 alone moves by 2x from run to run.
    ratio_before=$(awk -v a="$p99_during" -v b="$p99_before" 'BEGIN { printf "%.2f", a / b }')
    ratio_after=$(awk -v a="$p99_during" -v b="$p99_after" 'BEGIN { printf "%.2f", a / b }')
    rows+="| $clients | **$reset_seconds s** ($accounts accounts in $batches batches, $windows windows) | $p50_before / $p99_before ($n_before) | $p50_during / $p99_during ($n_during) | $p50_after / $p99_after ($n_after) | **${ratio_before}x; ${ratio_after}x** |
"
    month=$(( month + 1 ))
done
forfeits=$(sql -d "$DB" -Atc "SELECT count(*) FROM credits.ledger WHERE kind = 'F'")

rollups_caught_up
say "${MONTHS[$month]}'s reset, no debit traffic"
month_end "$month"
read -r quiet_seconds quiet_accounts quiet_windows <<<"$reset_seconds $accounts $windows"
batch_size=$(sql -d "$DB" -Atc "SHOW credits.maintenance_batch_size")
nice=$(sql -d "$DB" -Atc "SHOW credits.maintenance_nice")
bench_setting credits.clock_override

table="| debit clients | the reset takes | debit p50 / p99 ms (debits), no reset, before | during the reset | no reset, after | p99 during / no reset (before; after) |
|---|---|---|---|---|---|
$rows| none | **$quiet_seconds s** ($quiet_accounts accounts, $quiet_windows windows) | | | | |

Batch size $batch_size, worker nice $nice; month-end forfeit entries written over the runs with traffic: $forfeits (one per account and month)."
echo
echo "$table"
{
    echo
    bench_heading "Monthly reset"
    echo
    echo "\`bench/monthly-reset.sh\`: $ACCOUNTS accounts; pgbench clients calling \`credits.debit\` on random accounts as fast as they can (4 keep both cores busy); the debits close an account's windows themselves when they reach it before the worker."
    echo
    echo "$table"
} >"$REPORT"
echo
echo "written to $REPORT; pgbench logs in $WORK"
