#!/bin/bash
# The mariadb image's healthcheck.sh, for the tests its compose files name:
#   --connect             the server accepts a TCP connection (a refused login still counts:
#                         the entrypoint's temporary server listens on its socket only)
#   --innodb_initialized  InnoDB is up, asked as the entrypoint's healthcheck account
# Each test given must pass; the account's settings are the data folder's
# .my-healthcheck.cnf, written when the entrypoint initialised it.
set -euo pipefail

defaults="/var/lib/mysql/.my-healthcheck.cnf"
client() { mariadb --defaults-extra-file="$defaults" --host=localhost --protocol=tcp "$@"; }

connect() {
    local out
    if out="$(client --skip-column-names -e 'SELECT 1' 2>&1)"; then
        return 0
    fi
    ! grep -qF "Can't connect" <<<"$out"
}

innodb_initialized() {
    [[ "$(client --skip-column-names -e "SELECT 1 FROM information_schema.ENGINES WHERE engine = 'InnoDB' AND support IN ('YES', 'DEFAULT', 'ENABLED')" 2>/dev/null)" == 1 ]]
}

if [[ $# -eq 0 ]]; then
    echo "usage: healthcheck.sh --connect|--innodb_initialized..." >&2
    exit 1
fi
for test in "$@"; do
    case "$test" in
    --connect) connect || { echo "healthcheck connect failed" >&2; exit 1; } ;;
    --innodb_initialized) innodb_initialized || { echo "healthcheck innodb_initialized failed" >&2; exit 1; } ;;
    *)
        echo "healthcheck.sh: unknown test $test" >&2
        exit 1
        ;;
    esac
done
