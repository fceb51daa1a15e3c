# shellcheck shell=bash
# Runs the project's real nginx config (nginx/) without root and without touching the
# system's nginx: everything (config, pid, logs, temp files) lives in one prefix folder.
#
# As a library:  source scripts/lib/nginx.sh; nginx_render PREFIX UPSTREAM LISTEN [WEB_ROOT]
#                nginx_check PREFIX; nginx_start PREFIX; nginx_reload PREFIX; nginx_stop PREFIX
# As a command:  scripts/lib/nginx.sh render|check|start|reload|stop PREFIX [...]
#
# Logs: PREFIX/logs/access.log (JSON lines) and PREFIX/logs/error.log.

NGINX_LIB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"


# The folder of the installed nginx's own config, where mime.types lives.
nginx_conf_dir() {
    local conf
    conf="$(nginx -V 2>&1 | grep -o -- '--conf-path=[^ ]*' | cut -d= -f2)"
    dirname "${conf:-/etc/nginx/nginx.conf}"
}

# nginx_render PREFIX API_UPSTREAM LISTEN [WEB_ROOT]
# Lays out PREFIX like /etc/nginx in the official image: nginx.conf, mime.types and the
# templates rendered into conf.d/. One extra file points the temp folders into PREFIX,
# since the built-in ones (/var/lib/nginx/...) are root's. stub_status answers on the Unix
# socket PREFIX/status.sock unless STATUS_LISTEN says otherwise: no port to collide, and
# only this user's processes (the metrics exporter) can reach it.
nginx_render() {
    local prefix="$1" upstream="$2" listen="$3" web_root="${4:-$NGINX_LIB_ROOT/web}"
    echo "nginx: rendering config into $prefix (listen $listen, upstream $upstream, root $web_root)"
    mkdir -p "$prefix/conf.d" "$prefix/logs" "$prefix/temp"
    cp "$NGINX_LIB_ROOT/nginx/nginx.conf" "$prefix/nginx.conf"
    cp "$(nginx_conf_dir)/mime.types" "$prefix/mime.types"
    # The template's other variables come from the environment or their defaults; only
    # the template's own variables are substituted, so nginx's $variables survive.
    (
        export API_UPSTREAM="$upstream" NGINX_LISTEN="$listen" WEB_ROOT="$web_root"
        export STATUS_LISTEN="${STATUS_LISTEN:-unix:$prefix/status.sock}"
        # shellcheck source=nginx/template-defaults.envsh
        . "$NGINX_LIB_ROOT/nginx/template-defaults.envsh"
        local template output
        for template in "$NGINX_LIB_ROOT"/nginx/templates/*.template; do
            output="$prefix/conf.d/$(basename "$template" .template)"
            # shellcheck disable=SC2016,SC2086 # envsubst's own ${NAME} list, one word per variable
            envsubst "$(printf '${%s} ' $NGINX_TEMPLATE_VARIABLES)" <"$template" >"$output"
        done
    )
    local kind
    {
        for kind in client_body proxy fastcgi uwsgi scgi; do
            echo "${kind}_temp_path $prefix/temp/$kind;"
        done
    } >"$prefix/conf.d/local-temp-paths.conf"
}

# nginx_args PREFIX [DIRECTIVE...]: the command line shared by check and start, in
# NGINX_ARGS: the prefix's own config, pid file and error log. As root, workers keep root's
# identity (nginx would switch them to the build's default user, who cannot write PREFIX);
# as anyone else nginx ignores "user" anyway. nginx honours only its last -g, hence one.
nginx_args() {
    local prefix="$1" globals
    shift
    globals="pid $prefix/nginx.pid; $*"
    if [[ $EUID -eq 0 ]]; then
        globals+=" user root;"
    fi
    NGINX_ARGS=(-p "$prefix/" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log" -g "$globals")
}

# nginx_check PREFIX: `nginx -t` on the rendered config.
nginx_check() {
    nginx_args "$1"
    echo "nginx: checking $1/nginx.conf"
    nginx -t "${NGINX_ARGS[@]}"
}

# nginx_start PREFIX: starts nginx in the background and returns once it listens.
nginx_start() {
    local prefix="$1" pid i
    # In the foreground (daemon off) of a background job, so stdout, where the config sends
    # the access log, can be pointed at a file.
    nginx_args "$prefix" "daemon off;"
    # A socket file outlives a killed nginx, and nginx will not bind over it.
    rm -f "$prefix/nginx.pid" "$prefix/status.sock"
    echo "nginx: starting in $prefix"
    nginx "${NGINX_ARGS[@]}" \
        >>"$prefix/logs/access.log" 2>>"$prefix/logs/error.log" </dev/null &
    pid=$!
    # nginx writes its pid file only after binding every listen socket.
    for ((i = 0; i < 100; i++)); do
        if [[ -s "$prefix/nginx.pid" ]]; then
            echo "nginx: running, pid $pid"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    echo "nginx: failed to start; $prefix/logs/error.log says:" >&2
    cat "$prefix/logs/error.log" >&2
    return 1
}

# nginx_reload PREFIX: checks the config, then reloads gracefully, as the web container's
# nginx-reload does: new workers read the config and certificates anew, old ones finish
# their requests.
nginx_reload() {
    nginx_args "$1"
    echo "nginx: reloading $1"
    nginx -t -q "${NGINX_ARGS[@]}"
    nginx -s reload "${NGINX_ARGS[@]}"
}

# nginx_stop PREFIX: fast shutdown (open event streams would hold up a graceful one);
# waits until the master has exited. Does nothing when it is not running.
nginx_stop() {
    local prefix="$1" pid i
    pid="$(cat "$prefix/nginx.pid" 2>/dev/null || true)"
    if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
        return 0
    fi
    echo "nginx: stopping pid $pid"
    kill -TERM "$pid"
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "nginx: pid $pid ignored SIGTERM for 5 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    command="${1:-}"
    case "$command" in
    render | check | start | reload | stop)
        shift
        "nginx_$command" "$@"
        ;;
    *)
        echo "usage: $0 render PREFIX API_UPSTREAM LISTEN [WEB_ROOT] | check|start|reload|stop PREFIX" >&2
        exit 2
        ;;
    esac
fi
