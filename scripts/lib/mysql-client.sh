# shellcheck shell=bash
# The MySQL command-line clients, configured from the API's own variables: MYSQL_HOST,
# MYSQL_PORT (3306), MYSQL_USER, MYSQL_PASSWORD or MYSQL_PASSWORD_FILE, MYSQL_DB.
# The password reaches the clients in a private option file, never on a command line.
# Used by scripts/backup and scripts/restore; works with MySQL's and MariaDB's clients.

# How scripts/backup dumps, and scripts/restore its safety dump: --single-transaction takes a
# consistent snapshot without locking the tables; binary columns as hex, text as utf8mb4.
# shellcheck disable=SC2034 # read by the scripts that source this
MYSQL_DUMP_OPTIONS=(--single-transaction --quick --no-tablespaces --hex-blob --default-character-set=utf8mb4)

# Writes the option file and picks the client programs. Call mysql_client_cleanup when done.
mysql_client_init() {
    : "${MYSQL_HOST:?set MYSQL_HOST}" "${MYSQL_USER:?set MYSQL_USER}" "${MYSQL_DB:?set MYSQL_DB}"
    if [[ ! "$MYSQL_DB" =~ ^[A-Za-z0-9_]+$ ]]; then
        echo "MYSQL_DB may hold only letters, digits and underscores, not '$MYSQL_DB'" >&2
        return 1
    fi
    local password="${MYSQL_PASSWORD:-}"
    if [[ -n "${MYSQL_PASSWORD_FILE:-}" ]]; then
        password="$(<"$MYSQL_PASSWORD_FILE")"
    fi
    if ! MYSQL_CLI="$(command -v mariadb || command -v mysql)" ||
        ! MYSQL_DUMP="$(command -v mariadb-dump || command -v mysqldump)"; then
        echo "no MySQL client: install mariadb-client (Debian/Ubuntu) or mysql-client" >&2
        return 1
    fi
    MYSQL_CLIENT_DIR="$(mktemp -d)"
    password="${password//\\/\\\\}"
    (
        umask 077
        printf '[client]\nhost=%s\nport=%s\nuser=%s\npassword="%s"\n' \
            "$MYSQL_HOST" "${MYSQL_PORT:-3306}" "$MYSQL_USER" "${password//\"/\\\"}" \
            >"$MYSQL_CLIENT_DIR/client.cnf"
    )
    MYSQL_TARGET="$MYSQL_USER@$MYSQL_HOST:${MYSQL_PORT:-3306}"
}

mysql_client_cleanup() {
    rm -rf "${MYSQL_CLIENT_DIR:?}"
}

# mysql_cli [ARGS...]: the mysql client with the connection settings.
mysql_cli() {
    "$MYSQL_CLI" --defaults-extra-file="$MYSQL_CLIENT_DIR/client.cnf" --connect-timeout=10 "$@"
}

# mysql_dump [ARGS...]: mysqldump with the connection settings.
mysql_dump() {
    "$MYSQL_DUMP" --defaults-extra-file="$MYSQL_CLIENT_DIR/client.cnf" "$@"
}

# Fails with the client's own explanation when the server does not let us in.
mysql_check_connection() {
    local error
    if ! error="$(mysql_cli --batch -e 'SELECT 1' 2>&1 >/dev/null)"; then
        echo "cannot connect to MySQL as $MYSQL_TARGET: $error" >&2
        return 1
    fi
}

# mysql_binlog [ARGS...]: mariadb-binlog (or MySQL's mysqlbinlog) with the connection settings.
mysql_binlog() {
    local program
    if ! program="$(command -v mariadb-binlog || command -v mysqlbinlog)"; then
        echo "no mariadb-binlog: install mariadb-client (Debian/Ubuntu)" >&2
        return 1
    fi
    "$program" --defaults-extra-file="$MYSQL_CLIENT_DIR/client.cnf" "$@"
}
