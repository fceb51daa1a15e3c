#!/bin/sh
# Upstream's entrypoint contract: before nginx starts, every /docker-entrypoint.d/*.envsh is
# sourced (so what it exports reaches the later steps) and every executable *.sh is run, in
# name order. NGINX_ENTRYPOINT_QUIET_LOGS silences its notes.
set -e
note() {
    [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$0: $*"
}
if [ "$1" = nginx ] || [ "$1" = nginx-debug ]; then
    for f in $(find /docker-entrypoint.d/ -follow -type f -print | sort -V); do
        case "$f" in
        *.envsh)
            if [ -x "$f" ]; then
                note "Sourcing $f"
                # shellcheck source=/dev/null
                . "$f"
            else
                note "Ignoring $f, not executable"
            fi
            ;;
        *.sh)
            if [ -x "$f" ]; then
                note "Launching $f"
                "$f"
            else
                note "Ignoring $f, not executable"
            fi
            ;;
        *) note "Ignoring $f" ;;
        esac
    done
    note "Configuration complete; ready for start up"
fi
exec "$@"
