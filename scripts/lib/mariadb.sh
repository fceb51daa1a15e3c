# shellcheck shell=bash
# A throwaway MariaDB server for tests and benchmarks: its own data directory, socket and
# port under a temporary directory. It never touches a system server or its data.
# Source scripts/lib/common.sh first.

MARIADB_PACKAGES=(mariadb-server mariadb-client)

# Starts the server and exports TEST_MYSQL_URL (server URL without a database) and
# MARIADB_DIR, MARIADB_PORT, MARIADB_SOCKET. Arguments, if any, are more server options.
# shellcheck disable=SC2120 # most callers want the defaults
mariadb_start() {
    ensure_packages "${MARIADB_PACKAGES[@]}"
    local mariadbd
    mariadbd=$(PATH="$PATH:/usr/sbin" command -v mariadbd)
    MARIADB_DIR=$(mktemp -d "${TMPDIR:-/tmp}/messages-mariadb.XXXXXX")
    MARIADB_PORT=$(free_port)
    MARIADB_SOCKET="$MARIADB_DIR/mariadb.sock"
    export MARIADB_DIR MARIADB_PORT MARIADB_SOCKET
    step "Starting a throwaway MariaDB on 127.0.0.1:$MARIADB_PORT ($MARIADB_DIR)"
    local user=()
    [ "$(id -u)" -eq 0 ] && user=(--user=root)
    mariadb-install-db --no-defaults "${user[@]}" --datadir="$MARIADB_DIR/data" \
        --auth-root-authentication-method=normal --skip-test-db >"$MARIADB_DIR/install.log" 2>&1 || {
        cat "$MARIADB_DIR/install.log" >&2
        return 1
    }
    "$mariadbd" --no-defaults "${user[@]}" --datadir="$MARIADB_DIR/data" \
        --socket="$MARIADB_SOCKET" --port="$MARIADB_PORT" --bind-address=127.0.0.1 \
        --skip-name-resolve --pid-file="$MARIADB_DIR/mariadb.pid" \
        --log-error="$MARIADB_DIR/error.log" --max-connections=500 "$@" &
    MARIADB_PID=$!
    export MARIADB_PID
    if ! wait_for 60 mariadb-admin --no-defaults --socket="$MARIADB_SOCKET" -uroot ping; then
        cat "$MARIADB_DIR/error.log" >&2
        return 1
    fi
    mariadb_sql "CREATE USER 'messages'@'127.0.0.1' IDENTIFIED BY 'messages';
                 GRANT ALL PRIVILEGES ON *.* TO 'messages'@'127.0.0.1' WITH GRANT OPTION;"
    export TEST_MYSQL_URL="mysql://messages:messages@127.0.0.1:$MARIADB_PORT"
}

# Runs SQL as root through the socket.
mariadb_sql() {
    mariadb --no-defaults --socket="$MARIADB_SOCKET" -uroot -e "$1"
}

# Stops the server (SIGTERM, as a shutdown should be) and removes its files.
mariadb_stop() {
    [ -n "${MARIADB_PID:-}" ] || return 0
    step "Stopping the throwaway MariaDB"
    kill "$MARIADB_PID" 2>/dev/null || true
    wait "$MARIADB_PID" 2>/dev/null || true
    rm -rf "$MARIADB_DIR"
    MARIADB_PID=
}
