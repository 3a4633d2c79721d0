#!/usr/bin/env bash
# Reporting at scale: one account's current-month report and the tenant-wide
# monthly report over ENTRIES ledger rows (default 10,000,000), through the
# views (usage rollups plus the entries not rolled up yet), next to the same
# figures summed straight from the ledger in the same run.
#
#   bench/reporting.sh   (env: ENTRIES, ACCOUNTS, TAIL, RUN_SECONDS, PORT)
#
# Builds a release, starts its own cluster (target/clusters/bench), bulk-loads
# ACCOUNTS accounts and ENTRIES debits and refunds in 2031-01 (accounts drawn
# log-uniformly: account a1 has ~6% of all entries), rolls them up, then adds
# TAIL entries the rollups have not reached: what the views add from the
# ledger between two refreshes (default 20,000: two seconds, one
# credits.rollup_interval, of the fastest debit traffic bench/run measured on
# 2 cores). Prints a table and writes it to target/bench/.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPORT=$(bench_report reporting)

ENTRIES=${ENTRIES:-10000000}
ACCOUNTS=${ACCOUNTS:-100000}
TAIL=${TAIL:-20000}
RUN_SECONDS=${RUN_SECONDS:-10}
PORT=${PORT:-28817}
DB=bench_reporting
MONTH=2031-01-01
WORK=$(mktemp -d /tmp/reporting.XXXXXX)
chmod 777 "$WORK"

bench_cluster_up "$PORT" "$DB"

# The worker must not refresh the rollups behind the measurements' back.
bench_setting credits.rollup_interval 1d
bench_setting credits.maintenance_max_nap 1d

# ledger_rows N: N debits (one in 30 a refund) in $MONTH, accounts log-uniform.
ledger_rows() {
    cat <<SQL
INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, ref)
SELECT 'a' || floor(power($ACCOUNTS, random()))::integer,
       '$MONTH'::timestamptz + random() * interval '30 days',
       CASE WHEN i % 30 = 0 THEN 'R' ELSE 'D' END,
       (ARRAY(SELECT feature_id FROM credits.features ORDER BY feature_id))[1 + i % 4],
       1 + (i % 7) * 0.25,
       CASE WHEN i % 30 = 0 THEN 1 END
  FROM generate_series(1, $1) i;
SQL
}

say "loading $ACCOUNTS accounts and $ENTRIES ledger entries in ${MONTH%-01}"
bench_fresh_db "$DB"
start=$(date +%s.%N)
sql -d "$DB" <<SQL
CREATE EXTENSION credits;
INSERT INTO credits.accounts (account_id, plan, created_at, purchased, day, daily_used, month, monthly_used)
SELECT 'a' || i, 'pro', '$MONTH', 0, '$MONTH', 0, '$MONTH', 0 FROM generate_series(1, $ACCOUNTS) i;
INSERT INTO credits.ledger (account_id, at, kind, amount, metadata)
SELECT 'a' || i, '$MONTH', 'S', 0, '{"plan": "pro", "purchased": 0}' FROM generate_series(1, $ACCOUNTS) i;
$(ledger_rows "$ENTRIES")
SQL
printf '    loaded in %.1f s\n' "$(echo "$(date +%s.%N) - $start" | bc)"

say "rolling up every entry (CALL credits.refresh_rollups())"
start=$(date +%s.%N)
sql -d "$DB" -c "CALL credits.refresh_rollups()"
rollup_seconds=$(echo "scale=1; ($(date +%s.%N) - $start) / 1" | bc)
sql -d "$DB" <<SQL
$(ledger_rows "$TAIL")
VACUUM ANALYZE;
SQL
read -r total pending rollup_rows < <(sql -d "$DB" -AtF ' ' -c "
    SELECT (SELECT count(*) FROM credits.ledger), pending_entries, (SELECT count(*) FROM credits.usage_rollup)
      FROM credits.rollup_status")
hot_rows=$(sql -d "$DB" -Atc "SELECT count(*) FROM credits.ledger WHERE account_id = 'a1'")

# The same report summed straight from the ledger: what the views cost
# without rollups (the 0.2.0 development views read the ledger like this).
LEDGER_MONTH="credits_internal._report_month(l.kind, l.at, l.metadata)"
ACCOUNT_FROM_LEDGER="SELECT l.account_id,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'D'), 0) AS debited,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'R'), 0) AS refunded,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'F'), 0) AS forfeited,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'G'), 0) AS granted
  FROM credits.ledger l"
cat >"$WORK/account_view.sql" <<SQL
\\set n random(1, $ACCOUNTS)
SELECT * FROM credits.account_months WHERE account_id = 'a' || :n AND month = '$MONTH';
SQL
cat >"$WORK/account_ledger.sql" <<SQL
\\set n random(1, $ACCOUNTS)
$ACCOUNT_FROM_LEDGER WHERE l.account_id = 'a' || :n AND $LEDGER_MONTH = '$MONTH' GROUP BY l.account_id;
SQL
echo "SELECT * FROM credits.account_months WHERE account_id = 'a1' AND month = '$MONTH';" >"$WORK/hot_view.sql"
echo "$ACCOUNT_FROM_LEDGER WHERE l.account_id = 'a1' AND $LEDGER_MONTH = '$MONTH' GROUP BY l.account_id;" >"$WORK/hot_ledger.sql"
echo "SELECT * FROM credits.tenant_months WHERE month = '$MONTH';" >"$WORK/tenant_view.sql"
cat >"$WORK/tenant_ledger.sql" <<SQL
SELECT count(*) FILTER (WHERE m.debited > 0), sum(m.debited), sum(m.refunded), sum(m.forfeited), sum(m.granted)
  FROM ($ACCOUNT_FROM_LEDGER WHERE $LEDGER_MONTH = '$MONTH' GROUP BY l.account_id) m;
SQL

# run NAME ROUND SECONDS: one client, the simple protocol (each query
# planned, as an analyst's tool would send it); per-query log in $WORK/NAME.ROUND.*
run() {
    bench_pgbench "$WORK/$1.$2" -M simple -c 1 -T "$3" -f "$WORK/$1.sql" -l --log-prefix="$WORK/$1.$2" "$DB" ||
        exit 1
}
# Alternated, so drift on a shared machine hits both sides alike.
for round in 1 2; do
    for q in account_view account_ledger hot_view hot_ledger tenant_view tenant_ledger; do
        say "round $round: $q"
        case $q in tenant_*|hot_ledger) run "$q" "$round" "$((RUN_SECONDS * 2))" ;; *) run "$q" "$round" "$RUN_SECONDS" ;; esac
    done
done
# Both rounds' logs together.
for q in account_view account_ledger hot_view hot_ledger tenant_view tenant_ledger; do
    cat "$WORK/$q".[12].[0-9]* >"$WORK/$q.all.0"
done

# Both ways must give the same figures.
view_sum=$(sql -d "$DB" -Atc "SELECT active_accounts, debited, refunded, forfeited, granted FROM credits.tenant_months WHERE month = '$MONTH'")
ledger_sum=$(sql -d "$DB" -At -F '|' -f "$WORK/tenant_ledger.sql")
if [ "$view_sum" != "$ledger_sum" ]; then
    echo "MISMATCH: tenant_months says $view_sum, the ledger says $ledger_sum" >&2
    exit 1
fi

row() {  # row LABEL VIEW LEDGER
    local vn v50 v99 ln l50 l99
    read -r vn v50 v99 < <(percentiles "$WORK/$2.all")
    read -r ln l50 l99 < <(percentiles "$WORK/$3.all")
    echo "| $1 | $v50 / $v99 ms ($vn) | $l50 / $l99 ms ($ln) | $(printf '%.1f' "$(echo "scale=2; $l50 / $v50" | bc)")x |"
}
table="| report (month ${MONTH%-01}) | views: p50 / p99 (queries) | summed from the ledger: p50 / p99 (queries) | speed-up at p50 |
|---|---|---|---|
$(row "one account, uniformly chosen (account_months)" account_view account_ledger)
$(row "the busiest account, $hot_rows entries (account_months)" hot_view hot_ledger)
$(row "tenant-wide month (tenant_months)" tenant_view tenant_ledger)"
setup="$total ledger rows ($ENTRIES in the month, $ACCOUNTS accounts); $rollup_rows rollup rows; $pending entries not rolled up yet (read from the ledger by every report). Full rollup of the load: $rollup_seconds s."
echo
echo "$table"
echo
echo "$setup"
{
    echo
    bench_heading "Reporting"
    echo
    echo "\`bench/reporting.sh\`: one client, simple protocol (planning included), ${RUN_SECONDS}s+ per run, two alternated rounds."
    echo
    echo "$table"
    echo
    echo "$setup"
} >"$REPORT"
bench_setting credits.rollup_interval
bench_setting credits.maintenance_max_nap
echo
echo "written to $REPORT; pgbench logs in $WORK"
