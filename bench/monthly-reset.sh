#!/usr/bin/env bash
# Monthly reset of ACCOUNTS accounts (default 1,000,000) by the background
# worker, with debit traffic running: how long the reset takes, and debit
# p50/p99 during it next to the same traffic with no reset running.
#
#   bench/monthly-reset.sh   (env: ACCOUNTS, CLIENTS, IDLE_SECONDS, DURING_SECONDS, PORT)
#
# Builds a release, starts its own cluster (target/clusters/bench), loads the
# accounts at 2031-01-31 12:00 UTC, then moves the cluster clock to
# 2031-02-01 00:00:00.5 UTC, which makes the worker close every January
# window. Prints a table and appends it to BENCHMARKS.md.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ACCOUNTS=${ACCOUNTS:-1000000}
CLIENTS=${CLIENTS:-4}
IDLE_SECONDS=${IDLE_SECONDS:-15}
DURING_SECONDS=${DURING_SECONDS:-60}  # debit traffic started 2 s before the reset; must outlast it
PORT=${PORT:-28817}
DB=bench_reset
BEFORE='2031-01-31 12:00:00+00'
AFTER='2031-02-01 00:00:00.5+00'
MARCH='2031-03-01 00:00:00.5+00'
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

# pgbench_run NAME SECONDS: debit traffic, per-transaction log in $WORK/NAME.*
pgbench_run() {
    bench_pgbench "$WORK/$1" -M prepared -c "$CLIENTS" -j 2 -T "$2" -f "$WORK/debit.sql" \
        -l --log-prefix="$WORK/$1" "$DB"
}

say "debit traffic, no reset running ($CLIENTS clients, ${IDLE_SECONDS}s, in January)"
pgbench_run idle_before "$IDLE_SECONDS"
read -r n_before p50_before p99_before < <(percentiles "$WORK/idle_before")

say "monthly reset by the worker, with debit traffic running"
pgbench_run during "$DURING_SECONDS" &
bench_pid=$!
sleep 2
bench_setting credits.clock_override "$AFTER"
until [ "$(sql -d "$DB" -Atc "SELECT done_through = '$AFTER' FROM credits.maintenance_state")" = t ]; do sleep 0.2; done
read -r reset_from reset_to reset_seconds accounts windows batches < <(sql -d "$DB" -AtF ' ' -c "
    SELECT extract(epoch FROM started_at), extract(epoch FROM finished_at),
           round(extract(epoch FROM finished_at - started_at)::numeric, 2), accounts, windows, batches
      FROM credits.maintenance_runs WHERE run_at = '$AFTER'")
wait "$bench_pid"
if [ "$(echo "$reset_seconds + 2 > $DURING_SECONDS" | bc)" = 1 ]; then
    echo "WARNING: the reset outlasted the debit traffic; raise DURING_SECONDS" >&2
fi
read -r n_during p50_during p99_during < <(percentiles "$WORK/during" "$reset_from" "$reset_to")

# The reset wrote 1,000,000 ledger entries; the worker folds them into the
# usage rollups once the run is done. Wait for that, so "no reset running"
# means no catch-up work either.
until [ "$(sql -d "$DB" -Atc "SELECT pending_entries < 50000 FROM credits.rollup_status")" = t ]; do sleep 0.5; done
say "debit traffic, no reset running ($CLIENTS clients, ${IDLE_SECONDS}s, in February)"
pgbench_run idle_after "$IDLE_SECONDS"
read -r n_after p50_after p99_after < <(percentiles "$WORK/idle_after")
forfeits=$(sql -d "$DB" -Atc "SELECT count(*) FROM credits.ledger WHERE kind = 'F'")

say "the next monthly reset (end of February) with no debit traffic, for comparison"
bench_setting credits.clock_override "$MARCH"
until [ "$(sql -d "$DB" -Atc "SELECT done_through = '$MARCH' FROM credits.maintenance_state")" = t ]; do sleep 0.2; done
read -r quiet_seconds quiet_accounts quiet_windows < <(sql -d "$DB" -AtF ' ' -c "
    SELECT round(extract(epoch FROM finished_at - started_at)::numeric, 2), accounts, windows
      FROM credits.maintenance_runs WHERE run_at = '$MARCH'")
batch_size=$(sql -d "$DB" -Atc "SHOW credits.maintenance_batch_size")
bench_setting credits.clock_override

# Against both idle runs: one run's p99 alone moves by 2x from run to run.
ratio_before=$(echo "scale=2; $p99_during / $p99_before" | bc)
ratio_after=$(echo "scale=2; $p99_during / $p99_after" | bc)
table="| measure | value |
|---|---|
| accounts whose January windows were closed (batch size $batch_size) | $accounts in $batches batches |
| windows closed / month-end forfeit entries | $windows / $forfeits |
| time to complete the reset, debit traffic running | **$reset_seconds s** |
| time to complete the next month's reset, no traffic ($quiet_accounts accounts, $quiet_windows windows) | $quiet_seconds s |
| debit p50 / p99, no reset (January) | $p50_before / $p99_before ms ($n_before debits) |
| debit p50 / p99, no reset (February, after) | $p50_after / $p99_after ms ($n_after debits) |
| debit p50 / p99, during the reset | $p50_during / $p99_during ms ($n_during debits) |
| p99 during the reset / p99 with no reset (January; February) | **${ratio_before}x; ${ratio_after}x** |"
echo
echo "$table"
{
    echo
    bench_heading "Monthly reset"
    echo
    echo "\`bench/monthly-reset.sh\`: $ACCOUNTS accounts, $CLIENTS pgbench clients calling \`credits.debit\` on random accounts throughout."
    echo
    echo "$table"
} >>"$ROOT/BENCHMARKS.md"
echo
echo "appended to BENCHMARKS.md; pgbench logs in $WORK"
