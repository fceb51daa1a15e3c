#!/bin/bash
# The mysql image's entrypoint contract, for MariaDB: MYSQL_ROOT_PASSWORD, MYSQL_DATABASE,
# MYSQL_USER and MYSQL_PASSWORD (each also as *_FILE) set up an empty data folder on the
# first start; /docker-entrypoint-initdb.d/*.sql and *.sh run then too. Later starts only
# start the server.
set -euo pipefail

# file_env VAR: VAR, or the contents of the file VAR_FILE names (not both).
file_env() {
    local var="$1" file_var="${1}_FILE"
    if [[ -n "${!var:-}" && -n "${!file_var:-}" ]]; then
        echo "error: both $var and $file_var are set" >&2
        exit 1
    fi
    if [[ -n "${!file_var:-}" ]]; then
        export "$var"="$(<"${!file_var}")"
    fi
    unset "$file_var"
}

if [[ "${1:-}" == mysqld || "${1:-}" == mariadbd ]]; then
    shift
    set -- mariadbd "$@"
    # Started as root: hand the data folder to mysql and run as mysql, as upstream does.
    if [[ "$(id -u)" == 0 ]]; then
        chown -R mysql:mysql /var/lib/mysql /var/run/mysqld
        exec setpriv --reuid=mysql --regid=mysql --init-groups "$0" mysqld "${@:2}"
    fi
    datadir=/var/lib/mysql
    if [[ ! -d "$datadir/mysql" ]]; then
        for var in MYSQL_ROOT_PASSWORD MYSQL_DATABASE MYSQL_USER MYSQL_PASSWORD; do
            file_env "$var"
        done
        if [[ -z "${MYSQL_ROOT_PASSWORD:-}" && -z "${MYSQL_ALLOW_EMPTY_PASSWORD:-}" && -z "${MYSQL_RANDOM_ROOT_PASSWORD:-}" ]]; then
            echo "error: database is uninitialized and no root password option is set" >&2
            echo "  set MYSQL_ROOT_PASSWORD, MYSQL_ALLOW_EMPTY_PASSWORD or MYSQL_RANDOM_ROOT_PASSWORD" >&2
            exit 1
        fi
        echo "entrypoint: initialising $datadir"
        mariadb-install-db --datadir="$datadir" --auth-root-authentication-method=normal \
            --skip-test-db --rpm >/dev/null
        socket=/var/run/mysqld/init.sock
        mariadbd --datadir="$datadir" --skip-networking --socket="$socket" &
        init_pid=$!
        for _ in $(seq 60); do
            mariadb-admin --socket="$socket" ping --silent 2>/dev/null && break
            sleep 0.5
        done
        sql() { mariadb --protocol=socket --socket="$socket" -uroot "$@"; }
        if [[ -n "${MYSQL_RANDOM_ROOT_PASSWORD:-}" ]]; then
            MYSQL_ROOT_PASSWORD="$(head -c 24 /dev/urandom | base64)"
            echo "entrypoint: GENERATED ROOT PASSWORD: $MYSQL_ROOT_PASSWORD"
        fi
        # Values go in as SQL string literals: quotes and backslashes escaped.
        quote() { local v="${1//\\/\\\\}"; printf "'%s'" "${v//\'/\\\'}"; }
        {
            echo "DELETE FROM mysql.global_priv WHERE User = '' OR Host NOT IN ('localhost', '%');"
            echo "CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY $(quote "$MYSQL_ROOT_PASSWORD");"
            echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
            echo "ALTER USER 'root'@'localhost' IDENTIFIED BY $(quote "$MYSQL_ROOT_PASSWORD");"
            if [[ -n "${MYSQL_DATABASE:-}" ]]; then
                echo "CREATE DATABASE IF NOT EXISTS \`$MYSQL_DATABASE\`;"
            fi
            if [[ -n "${MYSQL_USER:-}" && -n "${MYSQL_PASSWORD:-}" ]]; then
                echo "CREATE USER '$MYSQL_USER'@'%' IDENTIFIED BY $(quote "$MYSQL_PASSWORD");"
                if [[ -n "${MYSQL_DATABASE:-}" ]]; then
                    echo "GRANT ALL ON \`$MYSQL_DATABASE\`.* TO '$MYSQL_USER'@'%';"
                fi
            fi
            echo "FLUSH PRIVILEGES;"
        } | sql
        for f in /docker-entrypoint-initdb.d/*; do
            case "$f" in
            *.sh)
                echo "entrypoint: running $f"
                # shellcheck source=/dev/null
                . "$f"
                ;;
            *.sql) echo "entrypoint: running $f"; sql --password="$MYSQL_ROOT_PASSWORD" "${MYSQL_DATABASE:-mysql}" <"$f" ;;
            *.sql.gz) echo "entrypoint: running $f"; gzip -dc "$f" | sql --password="$MYSQL_ROOT_PASSWORD" "${MYSQL_DATABASE:-mysql}" ;;
            esac
        done
        kill -TERM "$init_pid"
        wait "$init_pid"
        echo "entrypoint: initialised; starting the server"
    fi
    unset MYSQL_ROOT_PASSWORD MYSQL_PASSWORD
fi
exec "$@"
