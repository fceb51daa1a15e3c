#!/bin/bash
# The mariadb image's entrypoint contract: MARIADB_ROOT_PASSWORD, MARIADB_DATABASE,
# MARIADB_USER and MARIADB_PASSWORD, or their MYSQL_* names (each also as *_FILE), set up
# an empty data folder on the first start, with the account healthcheck.sh logs in as;
# /docker-entrypoint-initdb.d/*.sql and *.sh run then too. Later starts only start the
# server.
set -euo pipefail

# file_env NAME: MARIADB_NAME, else MYSQL_NAME, each either set or read from the file its
# *_FILE variant names (not both), exported as MARIADB_NAME.
file_env() {
    local name="$1" prefix var file_var value=""
    for prefix in MARIADB MYSQL; do
        var="${prefix}_$name" file_var="${prefix}_${name}_FILE"
        if [[ -n "${!var:-}" && -n "${!file_var:-}" ]]; then
            echo "error: both $var and $file_var are set" >&2
            exit 1
        fi
        if [[ -z "$value" && -n "${!file_var:-}" ]]; then
            value="$(<"${!file_var}")"
        elif [[ -z "$value" && -n "${!var:-}" ]]; then
            value="${!var}"
        fi
        unset "$file_var"
    done
    export "MARIADB_$name"="$value"
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
        for name in ROOT_PASSWORD DATABASE USER PASSWORD RANDOM_ROOT_PASSWORD; do
            file_env "$name"
        done
        MARIADB_ALLOW_EMPTY_ROOT_PASSWORD="${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:-${MYSQL_ALLOW_EMPTY_PASSWORD:-}}"
        if [[ -z "$MARIADB_ROOT_PASSWORD" && -z "$MARIADB_ALLOW_EMPTY_ROOT_PASSWORD" && -z "$MARIADB_RANDOM_ROOT_PASSWORD" ]]; then
            echo "error: database is uninitialized and no root password option is set" >&2
            echo "  set MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD or MARIADB_RANDOM_ROOT_PASSWORD" >&2
            echo "  (or their MYSQL_* names)" >&2
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
        if [[ -n "$MARIADB_RANDOM_ROOT_PASSWORD" ]]; then
            MARIADB_ROOT_PASSWORD="$(head -c 24 /dev/urandom | base64)"
            echo "entrypoint: GENERATED ROOT PASSWORD: $MARIADB_ROOT_PASSWORD"
        fi
        # healthcheck.sh's account: it may log in from this container only, and do nothing.
        healthcheck_password="$(head -c 24 /dev/urandom | base64)"
        printf '[mariadb-client]\nport=3306\nsocket=%s\nuser=healthcheck\npassword=%s\nprotocol=tcp\n' \
            /run/mysqld/mysqld.sock "$healthcheck_password" >"$datadir/.my-healthcheck.cnf"
        chmod 600 "$datadir/.my-healthcheck.cnf"
        # Values go in as SQL string literals: quotes and backslashes escaped.
        quote() { local v="${1//\\/\\\\}"; printf "'%s'" "${v//\'/\\\'}"; }
        {
            echo "DELETE FROM mysql.global_priv WHERE User = '' OR Host NOT IN ('localhost', '%');"
            echo "CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY $(quote "$MARIADB_ROOT_PASSWORD");"
            echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
            echo "ALTER USER 'root'@'localhost' IDENTIFIED BY $(quote "$MARIADB_ROOT_PASSWORD");"
            for host in 127.0.0.1 ::1 localhost; do
                echo "CREATE USER 'healthcheck'@'$host' IDENTIFIED BY $(quote "$healthcheck_password");"
            done
            if [[ -n "$MARIADB_DATABASE" ]]; then
                echo "CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`;"
            fi
            if [[ -n "$MARIADB_USER" && -n "$MARIADB_PASSWORD" ]]; then
                echo "CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY $(quote "$MARIADB_PASSWORD");"
                if [[ -n "$MARIADB_DATABASE" ]]; then
                    echo "GRANT ALL ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'%';"
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
            *.sql) echo "entrypoint: running $f"; sql --password="$MARIADB_ROOT_PASSWORD" "${MARIADB_DATABASE:-mysql}" <"$f" ;;
            *.sql.gz) echo "entrypoint: running $f"; gzip -dc "$f" | sql --password="$MARIADB_ROOT_PASSWORD" "${MARIADB_DATABASE:-mysql}" ;;
            esac
        done
        kill -TERM "$init_pid"
        wait "$init_pid"
        echo "entrypoint: initialised; starting the server"
    fi
    unset MARIADB_ROOT_PASSWORD MARIADB_PASSWORD MYSQL_ROOT_PASSWORD MYSQL_PASSWORD
fi
exec "$@"
