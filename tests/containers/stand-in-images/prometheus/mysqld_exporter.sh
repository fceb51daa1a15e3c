#!/bin/sh
# The stand-in's /bin/mysqld_exporter (test infrastructure, see ../README.md): takes the
# connection flags of mysqld-exporter 0.15, which the compose file uses —
# --mysqld.address=HOST:PORT, --mysqld.username=USER and the password in
# MYSQLD_EXPORTER_PASSWORD — and runs Debian's 0.14 with them as the DATA_SOURCE_NAME that
# release reads instead. Every other argument is passed on.
set -eu

address=localhost:3306
username=root
for arg in "$@"; do
    shift
    case "$arg" in
    --mysqld.address=*) address="${arg#*=}" ;;
    --mysqld.username=*) username="${arg#*=}" ;;
    *) set -- "$@" "$arg" ;;
    esac
done
DATA_SOURCE_NAME="$username:${MYSQLD_EXPORTER_PASSWORD:-}@tcp($address)/"
export DATA_SOURCE_NAME
exec /usr/bin/prometheus-mysqld-exporter "$@"
