# shellcheck shell=bash
# Deploy driver "process": each color is a plain process of a release binary on this
# machine, behind a local nginx running the project's own config (scripts/lib/nginx.sh).
# scripts/test-delivery deploys through it; it also suits a machine without Docker.
#
#   DEPLOY_RELEASES_DIR   one folder per tag holding its binary: RELEASES/TAG/messages-api
#   DEPLOY_BLUE_PORT      port of the blue color (default 8081)
#   DEPLOY_GREEN_PORT     port of the green color (default 8082)
#   DEPLOY_NGINX_LISTEN   where nginx listens (default 127.0.0.1:8080)
#   DEPLOY_NGINX_PREFIX   nginx's config, pid and logs (default STATE/nginx)
# A release folder holds the binary and the migrations it embeds (RELEASES/TAG/migrations/
# mysql), against which scripts/restore checks a backup. When RELEASES is DEPLOY_DIR's
# releases/ (the default), a committed deploy prunes it as it prunes the delivery files
# (release_prune in scripts/lib/deploy.sh), the oldest by modification time first.
# The API's own settings (DATABASE_URL or MYSQL_*, TOKEN_SEALING_KEY or its _FILE, which both
# colors must share, SHUTDOWN_GRACE_SECS, ...) come from the environment. scripts/restore
# reaches the database with the MYSQL_* variables (see scripts/lib/mysql-client.sh), as a
# user that may create databases.
# Each color's pid and log are STATE/COLOR.pid and STATE/COLOR.log.

# shellcheck source=scripts/lib/nginx.sh
source "$DEPLOY_LIB/nginx.sh"
# shellcheck source=scripts/lib/mysql-client.sh
source "$DEPLOY_LIB/mysql-client.sh"

DEPLOY_RELEASES_DIR="${DEPLOY_RELEASES_DIR:-$DEPLOY_ROOT/releases}"
DEPLOY_NGINX_LISTEN="${DEPLOY_NGINX_LISTEN:-127.0.0.1:8080}"
DEPLOY_NGINX_PREFIX="${DEPLOY_NGINX_PREFIX:-$DEPLOY_STATE_DIR/nginx}"

process_port() {
    if [[ "$1" == blue ]]; then echo "${DEPLOY_BLUE_PORT:-8081}"; else echo "${DEPLOY_GREEN_PORT:-8082}"; fi
}

process_binary() {
    echo "$DEPLOY_RELEASES_DIR/$1/messages-api"
}

# The pid of COLOR's process when it is running.
process_pid() {
    local pid
    pid="$(cat "$DEPLOY_STATE_DIR/$1.pid" 2>/dev/null)" || return 1
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

nginx_master_pid() {
    local pid
    pid="$(cat "$DEPLOY_NGINX_PREFIX/nginx.pid" 2>/dev/null)" || return 1
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

driver_prepare() {
    if [[ ! -x "$(process_binary "$1")" ]]; then
        echo "no release $1: $(process_binary "$1") is missing or not executable" >&2
        return 1
    fi
}

driver_migrate() {
    "$(process_binary "$1")" migrate
}

driver_migrations() {
    ls "$DEPLOY_RELEASES_DIR/$1/migrations/mysql"
}

# The S3 settings are the environment's own (BACKUP_S3_URI, BACKUP_S3_ENDPOINT_URL, AWS_*).
driver_offsite_settings() {
    :
}

driver_db_open() {
    mysql_client_init
}

driver_db_close() {
    mysql_client_cleanup
}

driver_db_name() {
    echo "$MYSQL_DB"
}

driver_sql() {
    mysql_cli "$@"
}

driver_dump() {
    mysql_dump "$@"
}

driver_start() {
    local color="$1" tag="$2" port log
    port="$(process_port "$color")"
    log="$DEPLOY_STATE_DIR/$color.log"
    driver_stop "$color"
    echo "starting $tag as $color on 127.0.0.1:$port (log: $log)"
    printf '=== %s: starting %s\n' "$(date -u +%FT%TZ)" "$tag" >>"$log"
    # setsid: the process outlives this script, its terminal and its process group (a killed
    # deploy); 9>&-: it does not keep the deploy lock. Each open event stream holds a
    # descriptor, so the soft limit goes up to the hard one (as the containers'
    # `ulimits: nofile` do).
    (
        ulimit -n "$(ulimit -Hn)"
        HOST=127.0.0.1 PORT="$port" RUN_MIGRATIONS=false \
            setsid "$(process_binary "$tag")" serve </dev/null >>"$log" 2>&1 9>&- &
        echo $! >"$DEPLOY_STATE_DIR/$color.pid"
    )
}

driver_status() {
    if ! process_pid "$1" >/dev/null; then
        echo down
    elif curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$(process_port "$1")/health" 2>/dev/null; then
        echo healthy
    else
        echo starting
    fi
}

driver_upstream() {
    echo "127.0.0.1:$(process_port "$1")"
}

driver_color_url() {
    echo "http://127.0.0.1:$(process_port "$1")"
}

# SIGTERM, then up to the API's grace period (plus a margin) for in-flight requests.
driver_stop() {
    local color="$1" pid deadline
    if ! pid="$(process_pid "$color")"; then
        rm -f "$DEPLOY_STATE_DIR/$color.pid"
        return 0
    fi
    echo "stopping $color (pid $pid)"
    kill -TERM "$pid"
    deadline=$((SECONDS + ${SHUTDOWN_GRACE_SECS:-20} + 5))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "$color (pid $pid) outlived its grace period; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$DEPLOY_STATE_DIR/$color.pid"
}

# nginx here is this machine's, configured from the release's nginx/ at each render: no
# image to check or replace.
driver_proxy_verify() {
    :
}

driver_proxy_cleanup() {
    :
}

# Explicit returns: scripts/deploy calls this inside a condition, where set -e is off.
# Whatever TAG, the same local nginx, reloaded.
driver_proxy_apply() {
    nginx_render "$DEPLOY_NGINX_PREFIX" "$(state_get api-upstream)" "$DEPLOY_NGINX_LISTEN" || return 1
    nginx_check "$DEPLOY_NGINX_PREFIX" || return 1
    local master
    if master="$(nginx_master_pid)"; then
        echo "nginx: reloading (master pid $master)"
        kill -HUP "$master"
    else
        # In a session of its own, as the colors (see driver_start).
        setsid --wait bash "$DEPLOY_LIB/nginx.sh" start "$DEPLOY_NGINX_PREFIX" 9>&- || return 1
    fi
}

driver_proxy_running() {
    nginx_master_pid >/dev/null
}

driver_proxy_workers() {
    local master
    master="$(nginx_master_pid)" || return 0
    pgrep -P "$master" || true
}

driver_proxy_url() {
    echo "http://$DEPLOY_NGINX_LISTEN"
}

# Nothing to record: a release is a folder, not a setting.
driver_finish() {
    :
}
