# Shared by the bench commands (source scripts/common.sh first).

# bench_cluster_up PORT WORKER_DB: a release build and the cluster "bench",
# tuned for throughput (fsync and synchronous_commit are off, as in all of
# this repository's local clusters), on PORT.
bench_cluster_up() {
    install_prerequisites
    install_extension --release
    # A running server keeps the library it preloaded: restart it on the new build.
    cluster_stop bench
    cluster_start bench "$1" "$2"
    local conf
    conf=$(cluster_dir bench)/postgresql.conf
    if ! grep -q '^# bench tuning' "$conf"; then
        cat >>"$conf" <<CONF
# bench tuning
shared_buffers = '2GB'
max_wal_size = '8GB'
checkpoint_timeout = '30min'
wal_level = minimal
max_wal_senders = 0
CONF
        cluster_stop bench
        cluster_start bench "$1" "$2"
    fi
    # Commits as the cluster file sets them (a bench that wants them
    # otherwise, bench/run, sets them itself).
    local setting
    for setting in fsync synchronous_commit full_page_writes shared_buffers; do
        psql_at "$1" -X -q -d postgres -c "ALTER SYSTEM RESET $setting" >/dev/null
    done
    psql_at "$1" -X -q -d postgres -c "SELECT pg_reload_conf()" >/dev/null
    sleep 0.2
    if [ "$(psql_at "$1" -X -Atq -d postgres -c "SELECT bool_or(pending_restart) FROM pg_settings")" = t ]; then
        cluster_stop bench
        cluster_start bench "$1" "$2"
    fi
}

# sql ARGS...: psql as postgres on the bench cluster ($PORT), stopping at the first error.
sql() { psql_at "$PORT" -v ON_ERROR_STOP=1 -X -q "$@"; }

# bench_setting NAME [VALUE]: set a server setting of the bench cluster (or,
# without VALUE, back to its default) and reload, so the worker sees it too.
bench_setting() {
    if [ $# -ge 2 ]; then
        sql -d postgres -c "ALTER SYSTEM SET $1 = '$2'"
    else
        sql -d postgres -c "ALTER SYSTEM RESET $1"
    fi
    sql -d postgres -c "SELECT pg_reload_conf()" >/dev/null
}

# bench_fresh_db DB: an empty database DB on the bench cluster.
bench_fresh_db() {
    sql -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
}

# bench_pgbench LOG ARGS...: pgbench as postgres on the bench cluster ($PORT),
# run in $WORK (where -l writes its logs), its output in LOG.out; on failure
# it prints that output and fails.
bench_pgbench() {
    local log=$1
    shift
    if ! (cd "$WORK" && taskset -c "$BENCH_CPUS" \
              runuser -u postgres -- "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n "$@") \
            >"$log.out" 2>&1; then
        echo "pgbench failed ($log.out):" >&2
        cat "$log.out" >&2
        return 1
    fi
}

# Where bench_pgbench runs pgbench (a taskset list): every CPU unless bench_pin says otherwise.
ALL_CPUS="0-$(( $(nproc) - 1 ))"
BENCH_CPUS=$ALL_CPUS

# bench_pin CPUS: the bench cluster's processes, the backends it starts from
# now on, and bench_pgbench's pgbench on CPUS (0, or $ALL_CPUS).
bench_pin() {
    BENCH_CPUS=$1
    local postmaster child
    postmaster=$(head -n 1 "$(cluster_dir bench)/postmaster.pid")
    for child in "$postmaster" $(pgrep -P "$postmaster"); do
        taskset -pc "$1" "$child" >/dev/null 2>&1 || true  # (a child may just have exited)
    done
}

# A per-transaction pgbench log -> percentiles.

# percentiles PREFIX [FROM TO]: "count p50 p99" (ms) of the transactions in
# the pgbench logs PREFIX.<pid>[.<thread>] that ended between FROM and TO
# (epoch seconds; default all).
percentiles() {
    cat "$1".[0-9]* | awk -v from="${2:-0}" -v to="${3:-1e12}" \
        '{ t = $5 + $6 / 1e6; if (t >= from && t <= to) print $3 / 1000 }' | sort -n |
        awk '{ v[NR] = $1 }
             END { if (NR == 0) { print "0 - -"; exit }
                   i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
                   i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
                   printf "%d %.3f %.3f\n", NR, v[i50], v[i99] }'
}

# bench_report NAME: the file a bench writes its report to,
# target/bench/NAME-<UTC date and time>.md (BENCHMARKS.md keeps the latest
# tables, summarized, by hand; earlier ones are in git history).
bench_report() {
    mkdir -p "$ROOT/target/bench"
    echo "$ROOT/target/bench/$1-$(date -u +%Y%m%d-%H%M%S).md"
}

# bench_heading TITLE: the BENCHMARKS.md heading, with the machine.
bench_heading() {
    echo "### $1 — $(date -u +%Y-%m-%d), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB RAM, PostgreSQL 15, release build"
}
