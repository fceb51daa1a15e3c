# shellcheck shell=bash
# Pushing a job's gauges to a Prometheus Pushgateway, from images with or without curl.
# Used by scripts/backup and scripts/archive-binlogs.

# http_send METHOD URL BODY: a request over bash's /dev/tcp, for images without curl
# (mariadb:10.11, the backup service's); plain http:// only. Succeeds on a 2xx status.
http_send() {
    local method="$1" url="$2" body="$3" host port path fd status
    if [[ ! "$url" =~ ^http://([^/:]+)(:([0-9]+))?(/.*)?$ ]]; then
        echo "not an http:// URL: $url" >&2
        return 1
    fi
    host="${BASH_REMATCH[1]}" port="${BASH_REMATCH[3]:-80}" path="${BASH_REMATCH[4]:-/}"
    exec {fd}<>"/dev/tcp/$host/$port" || return 1
    # The body is ASCII, so its length in characters is its length in bytes.
    printf '%s %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
        "$method" "$path" "$host" "$port" "${#body}" "$body" >&"$fd"
    IFS= read -r -t 10 status <&"$fd" || status="no answer"
    exec {fd}>&-
    if [[ ! "$status" =~ ^HTTP/1\.[01]\ 2[0-9][0-9] ]]; then
        echo "$url answered: ${status%$'\r'}" >&2
        return 1
    fi
}

# pushgateway_push METHOD BASE_URL JOB BODY: the gauges in BODY (Prometheus text format) to
# the group job=JOB. PUT replaces the whole group; POST replaces only the metrics named in
# BODY, keeping the others (a failure's gauge beside the last success's time). The
# Pushgateway serves them until the next push, so Prometheus sees them while the job sleeps.
pushgateway_push() {
    local method="$1" url="${2%/}/metrics/job/$3" body="$4"
    echo "pushing metrics to $url"
    if command -v curl >/dev/null; then
        curl --silent --show-error --fail --max-time 10 -X "$method" --data-binary "$body" "$url"
    else
        http_send "$method" "$url" "$body"
    fi
}
