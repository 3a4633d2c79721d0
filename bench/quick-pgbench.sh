#!/usr/bin/env bash
# Quick pgbench: credits.debit() against a plain UPDATE+INSERT "floor" baseline.
# Idempotent: drops and recreates database bench_quick on the dev cluster.
# Usage: bench/quick-pgbench.sh   (env: PORT, DURATION, ROUNDS)
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
PORT=${PORT:-28815}
DB=bench_quick
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-2}
WORK=$(mktemp -d /tmp/quick-pgbench.XXXXXX)

psql_db() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }

START_TIME=$(psql_db -d postgres -Atc "SELECT pg_postmaster_start_time()")
check_server() {
    local now
    now=$(psql_db -d postgres -Atc "SELECT pg_postmaster_start_time()")
    if [ "$now" != "$START_TIME" ]; then
        echo "ERROR: the server on port $PORT was restarted during the benchmark ($START_TIME -> $now); results void" >&2
        exit 1
    fi
}

echo "==> (re)creating database $DB on port $PORT"
psql_db -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE);"
psql_db -d postgres -c "CREATE DATABASE $DB;"

echo "==> loading 10,000 credits accounts and the floor tables"
psql_db -d "$DB" <<'SQL'
CREATE EXTENSION credits;
SELECT count(*) AS accounts_loaded FROM (
  SELECT credits.subscribe('acct_'||i, 'pro'), credits.purchase('acct_'||i, 100000000)
    FROM generate_series(1,10000) i) s;

CREATE TABLE floor_bal(id text primary key, balance numeric not null);
CREATE TABLE floor_ledger(id bigserial primary key, account_id text not null,
                          amount numeric not null, at timestamptz not null default now());
INSERT INTO floor_bal SELECT 'acct_'||i, 1e9 FROM generate_series(1,10000) i;
CREATE INDEX floor_ledger_account_idx ON floor_ledger(account_id, id);
VACUUM ANALYZE;
CHECKPOINT;
SQL

check_server
LEDGER_BYTES_BEFORE=$(psql_db -d "$DB" -Atc "SELECT pg_total_relation_size('credits.ledger')")

cat >"$WORK/debit.sql" <<'EOF'
\set aid random(1, 10000)
SELECT credits.debit('acct_' || :aid, 'agent', 1);
EOF
cat >"$WORK/floor.sql" <<'EOF'
\set aid random(1, 10000)
BEGIN;
UPDATE floor_bal SET balance = balance - 1 WHERE id = 'acct_' || :aid AND balance >= 1;
INSERT INTO floor_ledger(account_id, amount) VALUES ('acct_' || :aid, 1);
COMMIT;
EOF

# run NAME CLIENTS THREADS ROUND -> appends "name clients tps latency_ms" to results
run() {
    local name=$1 c=$2 j=$3 r=$4 out="$WORK/$1-c$2-r$4.log"
    if ! "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -M prepared -n \
            -T "$DURATION" -c "$c" -j "$j" -f "$WORK/$name.sql" "$DB" >"$out" 2>&1; then
        echo "pgbench $name -c $c failed:" >&2
        cat "$out" >&2
        exit 1
    fi
    local tps lat failed
    tps=$(sed -nE 's/^tps = ([0-9.]+) .*/\1/p' "$out" | head -n1)
    lat=$(sed -nE 's/^latency average = ([0-9.]+) ms.*/\1/p' "$out" | head -n1)
    failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$out" | head -n1)
    printf '    round %d  %-5s -c %-2d  tps=%10.1f  lat=%7.3f ms  failed=%s\n' \
        "$r" "$name" "$c" "$tps" "$lat" "${failed:-?}"
    check_server
    echo "$name $c $tps $lat" >>"$WORK/results"
}

: >"$WORK/results"
for cj in "8 2" "1 1"; do
    set -- $cj
    echo "==> clients=$1 threads=$2, ${DURATION}s per run, alternating floor/debit x$ROUNDS"
    for r in $(seq 1 "$ROUNDS"); do
        run floor "$1" "$2" "$r"
        run debit "$1" "$2" "$r"
    done
done

echo
echo "==> results (mean of $ROUNDS runs each, -M prepared, -T $DURATION)"
awk '
{ k = $1 SUBSEP $2; tps[k] += $3; lat[k] += $4; n[k]++; cl[$2] = 1 }
END {
  printf "%-8s %12s %12s %12s %16s %16s\n", "clients", "floor TPS", "debit TPS", "debit/floor", "floor lat (ms)", "debit lat (ms)"
  split("8 1", order, " ")
  for (i = 1; i <= 2; i++) {
    c = order[i]; f = "floor" SUBSEP c; d = "debit" SUBSEP c
    if (!(f in n) || !(d in n)) continue
    ft = tps[f] / n[f]; dt = tps[d] / n[d]
    printf "%-8s %12.1f %12.1f %12.3f %16.3f %16.3f\n", c, ft, dt, dt / ft, lat[f] / n[f], lat[d] / n[d]
  }
}' "$WORK/results"

echo
echo "==> ledger size"
psql_db -d "$DB" -v before="$LEDGER_BYTES_BEFORE" <<'SQL'
SELECT count(*) FILTER (WHERE kind = 'D')                                   AS debit_rows,
       count(*)                                                             AS all_rows,
       pg_total_relation_size('credits.ledger')                             AS ledger_total_bytes,
       round(pg_total_relation_size('credits.ledger')::numeric
             / nullif(count(*) FILTER (WHERE kind = 'D'), 0), 1)            AS bytes_per_debit,
       round((pg_total_relation_size('credits.ledger') - :before)::numeric
             / nullif(count(*) FILTER (WHERE kind = 'D'), 0), 1)            AS bytes_per_debit_growth_only
  FROM credits.ledger;
SELECT pg_total_relation_size('floor_ledger') AS floor_ledger_total_bytes,
       count(*)                               AS floor_rows,
       round(pg_total_relation_size('floor_ledger')::numeric / nullif(count(*), 0), 1) AS floor_bytes_per_row
  FROM floor_ledger;
SQL
echo "(pgbench logs and scripts kept in $WORK)"
