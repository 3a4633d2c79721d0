#!/usr/bin/env bash
# The Citus bench cell (docs/citus.md): debits per second through a Citus
# coordinator (two workers, the same machine) against a single server, in
# one run, rounds alternated: a sanity ratio of what distribution costs per
# call, not a scaling claim (here the three servers share the machine's
# cores; a real deployment gives each node its own).
#
#   single      one server, credits.debit in its own transaction;
#   delegated   through the coordinator, each debit delegated to its
#               account's worker (one round trip coordinator -> worker);
#   hot         one account for every debit (its row's lock serializes
#               them; on Citus each still delegated to its worker);
#   in a tx     through the coordinator inside BEGIN ... COMMIT with a
#               read of the balance: the debit run on its worker in one
#               round trip each, the debit and the balance, and a
#               two-phase commit.
# Durable commits (fsync, synchronous_commit and full_page_writes on).
# Needs Citus in the server (users install it from Citus's packages);
# says SKIPPED otherwise. Report: target/bench/citus-<date>.md.
#
#   bench/citus.sh   (env: DURATION=10 seconds per run, ROUNDS=3, CLIENTS=8, ACCOUNTS=2000)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
ACCOUNTS=${ACCOUNTS:-2000}
SINGLE_PORT=28860
CITUS_PORT=28870
DB=credits_bench
WORK="$ROOT/target/bench/citus-work"
BENCH_CPUS=$ALL_CPUS

if ! citus_available; then
    echo "bench/citus.sh: SKIPPED: Citus is not installed in this PostgreSQL"
    exit 0
fi
install_prerequisites
install_extension --release
rm -rf "$WORK" && mkdir -p "$WORK" && chown postgres: "$WORK"

durable() {  # durable PORT: production commit settings, reloaded
    psql_at "$1" -q -d postgres -c "ALTER SYSTEM SET fsync = on" -c "ALTER SYSTEM SET synchronous_commit = on" \
        -c "ALTER SYSTEM SET full_page_writes = on" -c "SELECT pg_reload_conf()" >/dev/null
}
accounts() {  # accounts PORT: the bench accounts, each able to pay for every debit of the run
    psql_at "$1" -q -d "$DB" -c "SET client_min_messages = warning" \
        -c "SELECT count(credits.subscribe('acct_' || i, 'enterprise')) FROM generate_series(1, $ACCOUNTS) i" \
        -c "SELECT count(credits.purchase('acct_' || i, 1000000)) FROM generate_series(1, $ACCOUNTS) i" >/dev/null
}

say "single server on $SINGLE_PORT"
cluster_destroy bench-single
cluster_start bench-single "$SINGLE_PORT" "$DB"
psql_at "$SINGLE_PORT" -q -c "CREATE DATABASE $DB" -d postgres
psql_at "$SINGLE_PORT" -q -d "$DB" -c "CREATE EXTENSION credits"
durable "$SINGLE_PORT"
accounts "$SINGLE_PORT"

say "Citus: coordinator on $CITUS_PORT, workers on $((CITUS_PORT + 1)) and $((CITUS_PORT + 2))"
citus_cluster_destroy bench-citus
citus_cluster_start bench-citus "$CITUS_PORT" "$DB"
trap 'cluster_stop bench-single; citus_cluster_stop bench-citus' EXIT
psql_at "$CITUS_PORT" -q -d "$DB" -c "SET client_min_messages = warning" -c "CREATE EXTENSION credits" \
    -c "SELECT count(*) FROM credits.distribute()" >/dev/null
for p in "$CITUS_PORT" $((CITUS_PORT + 1)) $((CITUS_PORT + 2)); do durable "$p"; done
accounts "$CITUS_PORT"

cat >"$WORK/debit.sql" <<SQL
\set a random(1, $ACCOUNTS)
SELECT credits.debit('acct_' || :a, 'agent', 1);
SQL
cat >"$WORK/debit_hot.sql" <<SQL
SELECT credits.debit('acct_1', 'agent', 1);
SQL
cat >"$WORK/debit_tx.sql" <<SQL
\set a random(1, $ACCOUNTS)
BEGIN;
SELECT credits.debit('acct_' || :a, 'agent', 1);
SELECT available FROM credits.balance('acct_' || :a);
COMMIT;
SQL
chown postgres: "$WORK"/*.sql

run() {  # run NAME PORT SCRIPT: one run; prints its TPS
    PORT=$2 bench_pgbench "$WORK/$1" -c "$CLIENTS" -j 2 -T "$DURATION" -f "$WORK/$3" "$DB"
    grep -oE 'tps = [0-9.]+' "$WORK/$1.out" | tail -n 1 | awk '{print $3}'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -A tps
for round in $(seq 1 "$ROUNDS"); do
    say "round $round of $ROUNDS"
    tps[single]+="$(run single "$SINGLE_PORT" debit.sql) "
    tps[delegated]+="$(run delegated "$CITUS_PORT" debit.sql) "
    tps[single_hot]+="$(run single_hot "$SINGLE_PORT" debit_hot.sql) "
    tps[delegated_hot]+="$(run delegated_hot "$CITUS_PORT" debit_hot.sql) "
    tps[single_tx]+="$(run single_tx "$SINGLE_PORT" debit_tx.sql) "
    tps[citus_tx]+="$(run citus_tx "$CITUS_PORT" debit_tx.sql) "
done
m() { echo "${tps[$1]}" | tr ' ' '\n' | grep . | median | awk '{ printf "%.0f", $1 }'; }
each() { echo "${tps[$1]}" | tr ' ' '\n' | grep . | awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

report=$(bench_report citus)
{
    bench_heading "Citus: debits through a coordinator and two workers vs one server (same machine)"
    echo
    echo "$CLIENTS clients, $ACCOUNTS accounts, $ROUNDS alternated rounds of $DURATION s, durable commits; median TPS (each round's in brackets)."
    echo
    echo "| cell | one server | Citus (coordinator + 2 workers) | Citus ÷ one server |"
    echo "|---|---|---|---|"
    echo "| debit in its own transaction (delegated on Citus) | $(m single) ($(each single)) | $(m delegated) ($(each delegated)) | $(ratio "$(m delegated)" "$(m single)") |"
    echo "| one hot account, each debit in its own transaction | $(m single_hot) ($(each single_hot)) | $(m delegated_hot) ($(each delegated_hot)) | $(ratio "$(m delegated_hot)" "$(m single_hot)") |"
    echo "| BEGIN; debit; balance; COMMIT (on Citus: the debit and the balance each run on its node) | $(m single_tx) ($(each single_tx)) | $(m citus_tx) ($(each citus_tx)) | $(ratio "$(m citus_tx)" "$(m single_tx)") |"
} | tee "$report"
echo
echo "report: $report"
