# shellcheck shell=bash
# Pushing a job's gauges to a Prometheus Pushgateway with curl.
# Used by scripts/backup and scripts/archive-binlogs.

# pushgateway_push METHOD BASE_URL JOB BODY: the gauges in BODY (Prometheus text format) to
# the group job=JOB. PUT replaces the whole group; POST replaces only the metrics named in
# BODY, keeping the others (a failure's gauge beside the last success's time). The
# Pushgateway serves them until the next push, so Prometheus sees them while the job sleeps.
pushgateway_push() {
    local method="$1" url="${2%/}/metrics/job/$3" body="$4"
    echo "pushing metrics to $url"
    curl --silent --show-error --fail --max-time 10 -X "$method" --data-binary "$body" "$url"
}
