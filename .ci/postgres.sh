# Throw-away PostgreSQL server on loopback for the multi-worker sweep test (sweeps, issue 7).
#
# Usage (sourced by .ci/run, works under `set -euo pipefail`):
#   source .ci/postgres.sh
#   start_postgres || echo "no PostgreSQL; the postgres test will be skipped"
#   trap stop_postgres EXIT
#
# start_postgres installs the server from the system's Debian packages when initdb/pg_ctl are
# missing (apt-get, needs root), creates a temporary cluster owned by an unprivileged user
# (PostgreSQL refuses to run as root), starts it on 127.0.0.1 on a free port with trust auth,
# creates a database and exports KNEEPLAN_TEST_POSTGRES_URL=postgresql://...
# stop_postgres stops the server and deletes the cluster; it is safe to call when start failed.

_pg_log() { echo "[postgres.sh] $*" >&2; }

# Echo the directory holding initdb and pg_ctl, or nothing.
_pg_find_bindir() {
    local d
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return 0
    fi
    # Debian keeps the server binaries out of PATH; take the newest major version.
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then
            echo "$d"
            return 0
        fi
    done
    return 0
}

# Echo a free TCP port on 127.0.0.1.
_pg_free_port() {
    local py
    for py in python3 python; do
        if command -v "$py" >/dev/null 2>&1; then
            "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
            return $?
        fi
    done
    echo $((20000 + RANDOM % 20000))
}

# Run a command as the cluster owner ($_PG_USER), or directly when we are not root.
_pg_as_owner() {
    if [ "$(id -u)" -ne 0 ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$_PG_USER" -- "$@"
    else
        su -s /bin/sh "$_PG_USER" -c "$(printf '%q ' "$@")"
    fi
}

start_postgres() {
    local bindir port db="kneeplan_test"
    bindir="$(_pg_find_bindir)"
    if [ -z "$bindir" ]; then
        if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
            _pg_log "initdb/pg_ctl not found and cannot apt-get install (need root + apt-get)"
            return 1
        fi
        _pg_log "installing the PostgreSQL server from the Debian packages"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            postgresql >&2 || return 1
        bindir="$(_pg_find_bindir)"
        if [ -z "$bindir" ]; then
            _pg_log "postgresql installed but initdb/pg_ctl still not found"
            return 1
        fi
    fi
    _PG_BIN="$bindir"

    _PG_USER="$(id -un)"
    if [ "$(id -u)" -eq 0 ]; then
        _PG_USER="postgres"
        if ! id -u "$_PG_USER" >/dev/null 2>&1; then
            useradd --system --no-create-home --shell /bin/sh "$_PG_USER" || return 1
        fi
    fi

    # As root the cluster owner must reach the folder: use /tmp, not a private $TMPDIR.
    local tmp="${TMPDIR:-/tmp}"
    if [ "$(id -u)" -eq 0 ]; then tmp=/tmp; fi
    _PG_DIR="$(mktemp -d "$tmp/kneeplan-pg.XXXXXX")" || return 1
    chmod 0755 "$_PG_DIR"
    mkdir -p "$_PG_DIR/data" "$_PG_DIR/sock"
    if [ "$(id -u)" -eq 0 ]; then
        chown -R "$_PG_USER" "$_PG_DIR" || return 1
    fi

    if ! _pg_as_owner "$_PG_BIN/initdb" -D "$_PG_DIR/data" -U postgres -A trust -E UTF8 \
        --no-sync >"$_PG_DIR/initdb.log" 2>&1; then
        _pg_log "initdb failed:"; cat "$_PG_DIR/initdb.log" >&2
        return 1
    fi

    port="$(_pg_free_port)"
    if ! _pg_as_owner "$_PG_BIN/pg_ctl" -D "$_PG_DIR/data" -l "$_PG_DIR/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $port -k $_PG_DIR/sock -c fsync=off -c max_connections=100" \
        start >&2; then
        _pg_log "pg_ctl start failed:"; cat "$_PG_DIR/server.log" >&2
        return 1
    fi
    _PG_STARTED=1

    if ! _pg_as_owner "$_PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"; then
        _pg_log "createdb failed"
        return 1
    fi
    export KNEEPLAN_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/$db"
    _pg_log "PostgreSQL running: $KNEEPLAN_TEST_POSTGRES_URL (cluster $_PG_DIR)"
}

stop_postgres() {
    if [ -n "${_PG_STARTED:-}" ] && [ -n "${_PG_DIR:-}" ]; then
        _pg_as_owner "$_PG_BIN/pg_ctl" -D "$_PG_DIR/data" -m fast -w stop >&2 || true
        _PG_STARTED=""
    fi
    if [ -n "${_PG_DIR:-}" ] && [ -d "$_PG_DIR" ]; then
        rm -rf "$_PG_DIR"
        _PG_DIR=""
    fi
    unset KNEEPLAN_TEST_POSTGRES_URL
}
