#!/usr/bin/env bash
# Private PostgreSQL cluster for the test suite (independent of any system
# service).
#
#   scripts/postgres.sh [start]   install (apt) if needed, init, start or reuse;
#                                 prints shell lines on stdout:
#                                   export PANDAFLOW_TEST_PG_URL='postgresql+psycopg://...'
#                                   PANDAFLOW_TEST_PG_STARTED=1|0   (0 = was already running)
#                                 so use: eval "$(scripts/postgres.sh)"
#   scripts/postgres.sh url       print the URL (cluster must be running)
#   scripts/postgres.sh status    exit 0 if running
#   scripts/postgres.sh stop      stop it (no-op if not running)
#
# Data lives in <repo>/.test-services/pg (data/, run/ = unix socket, postgres.log,
# port, env). If the `postgres` user cannot reach that directory (e.g. the repo
# is under /root) or the socket path would be too long, /tmp/pandaflow-pg-<hash>
# is used instead. Listens on 127.0.0.1 only, port 55432 or the next free one.
# Database pandaflow_test, role pandaflow (password auth over TCP, CREATEDB).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_USER_ROLE=pandaflow
PG_PASSWORD=pandaflow-test
PG_DB=pandaflow_test
BASE_PORT=55432

log() { echo "[postgres] $*" >&2; }
die() { echo "[postgres] error: $*" >&2; exit 1; }

find_pg_bin() {
    local d
    PGBIN=""
    # newest major version first
    while IFS= read -r d; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/pg_isready" ] && [ -x "$d/psql" ]; then
            PGBIN="$d"
            return 0
        fi
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV)
    return 1
}

install_pg() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            die "PostgreSQL is not installed and we are not root (no passwordless sudo).
  Install it with:  sudo apt-get install -y postgresql
  or point the tests at a server:  export PANDAFLOW_TEST_PG_URL=postgresql+psycopg://user:pass@host:port/db"
        fi
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "PostgreSQL is not installed and apt-get is unavailable; install PostgreSQL (initdb/pg_ctl) manually"
    log "installing PostgreSQL from Debian (apt-get update; apt-get install -y postgresql)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 \
        || die "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        postgresql postgresql-client >&2 \
        || die "apt-get install postgresql failed"
}

# Run a command as the cluster owner (initdb/postgres refuse to run as root).
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        if command -v runuser >/dev/null 2>&1; then
            (cd / && runuser -u postgres -- "$@")
        else
            (cd / && su -s /bin/sh postgres -c "$(printf '%q ' "$@")")
        fi
    else
        "$@"
    fi
}

choose_dir() {
    local d="$REPO/.test-services/pg" hash
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 \
            || die "user 'postgres' does not exist (is the postgresql package installed?)"
    fi
    mkdir -p "$REPO/.test-services"
    # socket path must stay below ~107 bytes: <dir>/run/.s.PGSQL.NNNNN
    if [ ${#d} -gt 80 ] || { [ "$(id -u)" -eq 0 ] && ! as_owner test -x "$REPO/.test-services"; }; then
        hash="$(printf '%s' "$REPO" | sha256sum | cut -c1-12)"
        d="/tmp/pandaflow-pg-$hash"
        log "using $d (the postgres user cannot use $REPO/.test-services/pg)"
    fi
    PGDIR="$d"
    DATA="$PGDIR/data"
    SOCK="$PGDIR/run"
    PGLOG="$PGDIR/postgres.log"
}

port_in_use() {
    # something accepts TCP connections on 127.0.0.1:$1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

is_running() {
    [ -f "$DATA/PG_VERSION" ] && as_owner "$PGBIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1
}

current_port() {
    cat "$PGDIR/port" 2>/dev/null || true
}

url() {
    echo "postgresql+psycopg://$PG_USER_ROLE:$PG_PASSWORD@127.0.0.1:$(current_port)/$PG_DB"
}

psql_su() {
    as_owner "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$(current_port)" -U postgres -d postgres "$@"
}

ensure_role_db() {
    psql_su -c "DO \$\$ BEGIN
          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER_ROLE') THEN
            CREATE ROLE $PG_USER_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
          ELSE
            ALTER ROLE $PG_USER_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
          END IF;
        END \$\$;" >&2
    if [ "$(psql_su -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
        psql_su -c "CREATE DATABASE $PG_DB OWNER $PG_USER_ROLE" >&2
    fi
    # check the URL's credentials over TCP, exactly as the tests will connect
    PGPASSWORD="$PG_PASSWORD" "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$(current_port)" \
        -U "$PG_USER_ROLE" -d "$PG_DB" -tAc 'SELECT 1' >/dev/null \
        || die "cannot connect as $PG_USER_ROLE over TCP to 127.0.0.1:$(current_port) (see $PGLOG)"
}

wait_ready() {
    local _
    for _ in $(seq 1 60); do
        if "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$(current_port)"; then
            return 0
        fi
        sleep 0.5
    done
    return 1
}

do_init() {
    local owner
    mkdir -p "$PGDIR"
    if [ "$(id -u)" -eq 0 ]; then
        owner=postgres
        chown postgres: "$PGDIR"
    else
        owner="$(id -un)"
    fi
    chmod 755 "$PGDIR"
    as_owner mkdir -p "$SOCK"
    if [ ! -f "$DATA/PG_VERSION" ]; then
        log "initdb $DATA (owner $owner)"
        as_owner rm -rf "$DATA"
        as_owner "$PGBIN/initdb" -D "$DATA" -U postgres -E UTF8 --no-locale \
            --auth-local=trust --auth-host=scram-sha-256 >"$PGDIR/initdb.log" 2>&1 \
            || { cat "$PGDIR/initdb.log" >&2; die "initdb failed"; }
        # test-only settings: fast, loopback only, socket inside our directory
        as_owner sh -c "cat >>'$DATA/postgresql.conf'" <<EOF

# --- pandaflow test cluster (scripts/postgres.sh) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCK'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    fi
}

do_start() {
    local port p started=0
    find_pg_bin || install_pg
    find_pg_bin || die "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin after install"
    choose_dir

    if is_running && [ -n "$(current_port)" ] && wait_ready; then
        log "reusing running cluster in $DATA (port $(current_port))"
    else
        do_init
        # keep the previous port if it is free, else the first free one
        port="$(current_port)"
        if [ -z "$port" ] || port_in_use "$port"; then
            port=""
            for p in $(seq "$BASE_PORT" $((BASE_PORT + 100))); do
                if ! port_in_use "$p"; then port="$p"; break; fi
            done
            [ -n "$port" ] || die "no free port in $BASE_PORT..$((BASE_PORT + 100))"
        fi
        echo "$port" >"$PGDIR/port"
        log "starting PostgreSQL ($PGBIN) on 127.0.0.1:$port, data $DATA, log $PGLOG"
        as_owner touch "$PGLOG"
        if ! as_owner "$PGBIN/pg_ctl" start -D "$DATA" -l "$PGLOG" -o "-p $port" -w -t 60 >&2; then
            tail -n 30 "$PGLOG" >&2 || true
            die "PostgreSQL failed to start (log: $PGLOG)"
        fi
        wait_ready || { tail -n 30 "$PGLOG" >&2; die "PostgreSQL not ready after 30s (log: $PGLOG)"; }
        started=1
    fi

    ensure_role_db
    printf "export PANDAFLOW_TEST_PG_URL='%s'\n" "$(url)" >"$PGDIR/env"
    log "ready: PANDAFLOW_TEST_PG_URL=$(url)"
    printf "export PANDAFLOW_TEST_PG_URL='%s'\nPANDAFLOW_TEST_PG_STARTED=%s\n" "$(url)" "$started"
}

do_stop() {
    find_pg_bin || { log "PostgreSQL not installed; nothing to stop"; return 0; }
    choose_dir
    if is_running; then
        log "stopping cluster in $DATA"
        as_owner "$PGBIN/pg_ctl" stop -D "$DATA" -m fast -w -t 60 >&2
    else
        log "not running ($DATA)"
    fi
}

case "${1:-start}" in
    start) do_start ;;
    stop) do_stop ;;
    status)
        find_pg_bin || exit 1
        choose_dir
        if is_running; then log "running on 127.0.0.1:$(current_port): $(url)"; else log "not running"; exit 1; fi
        ;;
    url)
        find_pg_bin || die "PostgreSQL not installed"
        choose_dir
        is_running || die "not running; start it with scripts/postgres.sh"
        url
        ;;
    *) echo "usage: $0 [start|stop|status|url]" >&2; exit 2 ;;
esac
