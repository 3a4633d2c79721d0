# Shared by the scripts in this folder: prerequisites, build, local clusters.
# Every function is idempotent. Source it; do not run it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config
PGRX_VERSION=0.18.1
export CARGO_TERM_COLOR=never

say() { printf '\n==> [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# apt packages, cargo-pgrx, pgrx init against the system PostgreSQL 15.
install_prerequisites() {
    local missing=()
    # (procps: pgrep, for the benches)
    for pkg in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo procps; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        say "installing cargo-pgrx $PGRX_VERSION (takes a few minutes, once)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    if ! grep -qs "pg15 *= *\"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
        say "pointing pgrx at $PG_CONFIG"
        cargo pgrx init --pg15 "$PG_CONFIG"
    fi
}

# A running server maps the installed library and looks the file up again on
# calls: written over in place, the code changes under its feet (its worker
# crashes); removed and written anew (as cargo pgrx install does), its calls
# fail with 58P01 until the new file is complete. So files go in under a
# temporary name and are renamed into place: the path always holds a whole
# file, and a running server keeps the one it loaded until it restarts
# (./scripts/dev restarts).
install_file() {  # install_file SRC DEST MODE
    install -D -m "$3" "$1" "$2.new.$$" && mv -f "$2.new.$$" "$2"
}

# cargo pgrx test copies its build over the installed one in place: the
# installed file is first replaced by a copy of itself (a rename), which the
# test's copy then overwrites instead of the file running servers mapped.
detach_installed_library() {
    local lib
    lib="$("$PG_CONFIG" --pkglibdir)/credits.so"
    if [ -f "$lib" ]; then
        install_file "$lib" "$lib" 755
    fi
}

# Build the extension and install it into the system PostgreSQL 15.
# install_extension [--release]: build and install into the system PostgreSQL.
install_extension() {
    say "building and installing the credits extension $*"
    mkdir -p "$ROOT/target"
    local log="$ROOT/target/install.log" out="$ROOT/target/package" profile=(--debug) f
    [ "${1:-}" = "--release" ] && profile=()
    rm -rf "$out"
    if ! (cd "$ROOT" && cargo pgrx package --pg-config "$PG_CONFIG" "${profile[@]}" --out-dir "$out") >"$log" 2>&1; then
        grep -Ev '^ +[0-9]+: |^ +at ' "$log" | tail -n 60
        echo "build failed; full log: $log" >&2
        return 1
    fi
    grep -E 'Finished' "$log" | tail -n 1
    (cd "$out" && find . -type f) | while read -r f; do
        case "$f" in
            *.so) install_file "$out/$f" "/${f#./}" 755 ;;
            *) install_file "$out/$f" "/${f#./}" 644 ;;
        esac
    done
    echo "installed into $("$PG_CONFIG" --pkglibdir) and $("$PG_CONFIG" --sharedir)/extension"
    # Released install scripts, so a database can be created at an old
    # version and upgraded (the package has only the upgrade scripts).
    local released
    for released in "$ROOT"/sql/released/credits--*.sql; do
        install_file "$released" "$("$PG_CONFIG" --sharedir)/extension/$(basename "$released")" 644
    done
}

cluster_dir() { echo "$ROOT/target/clusters/$1"; }

# cluster_start NAME PORT [DATABASE]: a fresh-or-existing cluster owned by
# postgres, listening on 127.0.0.1:PORT, with the credits library preloaded
# and its maintenance worker running in DATABASE (default postgres).
cluster_start() {
    local name=$1 port=$2 database=${3:-postgres} dir
    dir=$(cluster_dir "$name")
    mkdir -p "$dir"
    # postgres must be able to reach the data directory (the repo may live under /root).
    chmod o+x "$ROOT" "$ROOT/target" "$ROOT/target/clusters"
    if [ ! -s "$dir/PG_VERSION" ]; then
        say "creating cluster $name in $dir"
        mkdir -p "$dir"
        chown postgres: "$dir"
        chmod 700 "$dir"
        runuser -u postgres -- "$PG_BIN/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
        cat >>"$dir/postgresql.conf" <<CONF
# credits
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '/tmp'
shared_preload_libraries = 'credits'
credits.database = '$database'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
CONF
    fi
    if ! runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        say "starting cluster $name on port $port"
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null
    fi
}

cluster_stop() {
    local dir
    dir=$(cluster_dir "$1")
    if [ -s "$dir/PG_VERSION" ]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

cluster_destroy() {
    cluster_stop "$1"
    rm -rf "$(cluster_dir "$1")"
}

# psql_at PORT [args...]: psql as postgres on the local cluster.
psql_at() {
    local port=$1
    shift
    "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"
}

# Citus (scale-out, docs/citus.md). Users install Citus from its own
# packages; these scripts never build or download it: the Citus tests run
# when the server has it and say that they were skipped otherwise.
citus_available() {
    [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ] && [ -f "$("$PG_CONFIG" --sharedir)/extension/citus.control" ]
}

# citus_cluster_start PREFIX PORT DATABASE: a coordinator on PORT and two
# workers on PORT+1, PORT+2 (clusters PREFIX-coord, PREFIX-w1, PREFIX-w2),
# each preloading citus then credits, DATABASE created on each with the
# citus extension and the workers registered. Idempotent.
citus_cluster_start() {
    local prefix=$1 port=$2 database=$3
    citus_node_start "$prefix-coord" "$port" "$database"
    citus_node_start "$prefix-w1" $((port + 1)) "$database"
    citus_node_start "$prefix-w2" $((port + 2)) "$database"
    psql_at "$port" -d "$database" -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
SET client_min_messages = warning;
SELECT citus_set_coordinator_host('127.0.0.1', $port);
SELECT citus_add_node('127.0.0.1', $((port + 1))) WHERE NOT EXISTS (SELECT 1 FROM pg_dist_node WHERE nodeport = $((port + 1)));
SELECT citus_add_node('127.0.0.1', $((port + 2))) WHERE NOT EXISTS (SELECT 1 FROM pg_dist_node WHERE nodeport = $((port + 2)));
SQL
}

# citus_node_start NAME PORT DATABASE: a cluster as cluster_start makes,
# preloading Citus before credits, with Citus created in DATABASE (not yet
# a node of any coordinator: citus_add_node). A third worker in the Citus
# tests is NAME <prefix>-w3 (stopped and destroyed with the others).
citus_node_start() {
    local name=$1 port=$2 database=$3
    if [ ! -s "$(cluster_dir "$name")/PG_VERSION" ]; then
        cluster_start "$name" "$port" "$database"
        cluster_stop "$name"
        cat >>"$(cluster_dir "$name")/postgresql.conf" <<CONF
# Citus: loaded before credits
shared_preload_libraries = 'citus, credits'
wal_level = logical
max_worker_processes = 32
max_connections = 300
citus.shard_count = 4
CONF
    fi
    cluster_start "$name" "$port" "$database"
    psql_at "$port" -qtA -c "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1 ||
        psql_at "$port" -q -c "CREATE DATABASE $database"
    psql_at "$port" -d "$database" -q -c "SET client_min_messages = warning" -c "CREATE EXTENSION IF NOT EXISTS citus"
}

citus_cluster_stop() {
    local node
    for node in coord w1 w2 w3; do cluster_stop "$1-$node"; done
}

citus_cluster_destroy() {
    local node
    for node in coord w1 w2 w3; do cluster_destroy "$1-$node"; done
}
