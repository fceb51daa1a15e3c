# shellcheck shell=bash
# The deploy's state and its driver, shared by scripts/deploy and scripts/rollback.
# Source scripts/lib/common.sh first.
#
# State lives in DEPLOY_STATE_DIR (default .deploy/ in the checkout), one value per file:
#   color         the color nginx sends traffic to (blue or green)
#   api-upstream  that color's address as nginx sees it (the web container reads this file)
#   current       the tag that color runs
#   previous      the tag that ran before it (what scripts/rollback returns to)
#
# How a version is started is the driver's business, chosen by DEPLOY_DRIVER:
#   compose  (default) the EC2 host: docker compose with docker-compose.prod.yml
#   process  plain processes behind a local nginx (scripts/test-delivery)
# A driver defines these functions; scripts/deploy holds the switching logic that calls them.
#   driver_prepare TAG        fetch TAG and start what it needs besides the API
#   driver_migrate TAG        run TAG's database migrations
#   driver_start COLOR TAG    start TAG as COLOR, replacing whatever COLOR ran
#   driver_status COLOR       print healthy, starting or down
#   driver_upstream COLOR     print the host:port nginx uses to reach COLOR
#   driver_stop COLOR         stop COLOR gracefully (it finishes in-flight requests)
#   driver_proxy_apply        make nginx use state/api-upstream: reload, or start it
#   driver_proxy_workers      print the pids of nginx's worker processes
#   driver_proxy_url          print nginx's base URL on this machine
#   driver_finish TAG         driver bookkeeping once TAG is live
# and, for scripts/restore, the database:
#   driver_migrations TAG     print the names of TAG's MySQL migrations (migrations/mysql)
#   driver_db_open            get ready to reach the database; driver_db_close when done
#   driver_db_name            print the name of the app's database
#   driver_sql ARGS...        the mysql client as a user that may create databases
#   driver_dump ARGS...       mysqldump as that user

DEPLOY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEPLOY_STATE_DIR="${DEPLOY_STATE_DIR:-$DEPLOY_ROOT/.deploy}"
DEPLOY_DRIVER="${DEPLOY_DRIVER:-compose}"
export DEPLOY_STATE_DIR

case "$DEPLOY_DRIVER" in
compose | process)
    # The drivers are shellchecked on their own.
    # shellcheck source=/dev/null
    source "$DEPLOY_ROOT/scripts/lib/deploy-$DEPLOY_DRIVER.sh"
    ;;
*)
    echo "DEPLOY_DRIVER must be compose or process, not '$DEPLOY_DRIVER'" >&2
    exit 2
    ;;
esac

# Prints a state value, or $2 when it was never recorded.
state_get() {
    if [[ -s "$DEPLOY_STATE_DIR/$1" ]]; then
        cat "$DEPLOY_STATE_DIR/$1"
    else
        printf '%s\n' "${2:-}"
    fi
}

# Records a state value atomically: readers (nginx's container among them) see the old
# file or the new one, never half of one.
state_set() {
    mkdir -p "$DEPLOY_STATE_DIR"
    printf '%s\n' "$2" >"$DEPLOY_STATE_DIR/.$1.tmp"
    mv -f "$DEPLOY_STATE_DIR/.$1.tmp" "$DEPLOY_STATE_DIR/$1"
}

# state_lock SCRIPT ARGS...: one deploy at a time on this machine. Unless this process
# holds the lock already, runs SCRIPT again under flock and exits with its status. --close:
# the servers a deploy starts must not inherit the lock and keep it after the deploy.
state_lock() {
    if [[ "${DEPLOY_LOCKED:-}" == "$DEPLOY_STATE_DIR" ]]; then
        return 0
    fi
    mkdir -p "$DEPLOY_STATE_DIR"
    local status=0
    DEPLOY_LOCKED="$DEPLOY_STATE_DIR" flock --nonblock --close --conflict-exit-code 75 \
        "$DEPLOY_STATE_DIR/lock" "$@" || status=$?
    if ((status == 75)); then
        echo "another deploy is running (lock: $DEPLOY_STATE_DIR/lock)" >&2
    fi
    exit "$status"
}

# Waits until COLOR is healthy; fails at once when it is down, or after DEPLOY_HEALTH_TIMEOUT.
wait_healthy() {
    local color="$1" status deadline=$((SECONDS + ${DEPLOY_HEALTH_TIMEOUT:-120}))
    while true; do
        status="$(driver_status "$color")"
        case "$status" in
        healthy)
            echo "$color is healthy"
            return 0
            ;;
        down)
            echo "$color is not running" >&2
            return 1
            ;;
        esac
        if ((SECONDS >= deadline)); then
            echo "$color is still $status after ${DEPLOY_HEALTH_TIMEOUT:-120}s" >&2
            return 1
        fi
        sleep 1
    done
}

other_color() {
    if [[ "$1" == blue ]]; then echo green; else echo blue; fi
}
