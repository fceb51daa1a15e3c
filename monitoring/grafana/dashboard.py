#!/usr/bin/env python3
"""The Grafana dashboard of the message board, as code.

    python3 monitoring/grafana/dashboard.py          # rewrites dashboards/messages.json
    python3 monitoring/grafana/dashboard.py --check  # fails if the committed file differs

Grafana cannot run on the build machines, so the JSON is never edited by hand: this file
is its source, tests/monitoring checks every query with promtool and, against a real
Prometheus scraping the real services, that each one returns data.
"""

import json
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "messages.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}

NOT_STREAM = 'route!="/api/messages/stream"'


def latency(quantile):
    return (
        f"histogram_quantile({quantile}, sum by (route, le) "
        f"(rate(http_request_duration_seconds_bucket{{{NOT_STREAM}}}[5m])))"
    )


# (title, description, unit, panel type, [(query, legend)]), in reading order. Rows of two
# half-width panels.
PANELS = [
    ("Requests by route", "Requests per second the API answers, by route.", "reqps", "timeseries",
     [("sum by (route) (rate(http_requests_total[5m]))", "{{route}}")]),
    ("5xx ratio by route", "Share of each route's answers that are 5xx errors; HighErrorRatio fires above 5 % overall.",
     "percentunit", "timeseries",
     [("(sum by (route) (rate(http_requests_total{status=~\"5..\"}[5m]))"
       " or sum by (route) (rate(http_requests_total[5m])) * 0)"
       " / sum by (route) (rate(http_requests_total[5m]))", "{{route}}")]),
    ("Latency p99 by route", "99th percentile of the time to answer, by route (the live stream aside: it stays open).",
     "s", "timeseries", [(latency(0.99), "{{route}}")]),
    ("Latency p50 and p90 by route", "Median and 90th percentile of the time to answer, by route.", "s", "timeseries",
     [(latency(0.5), "p50 {{route}}"), (latency(0.9), "p90 {{route}}")]),
    ("Latency SLO: error budget burn rate",
     "How fast requests slower than 0.5 s spend the 1 % budget (1 = exactly on budget). "
     "The fast-burn alert pages at 14.4 (1 h) and 6 (6 h).", "none", "timeseries",
     [("job:http_request_latency_slo_misses:ratio_rate5m / 0.01", "5 min"),
      ("job:http_request_latency_slo_misses:ratio_rate1h / 0.01", "1 h"),
      ("job:http_request_latency_slo_misses:ratio_rate6h / 0.01", "6 h")]),
    ("Writes: 5xx ratio", "Share of POST/PATCH/DELETE requests that failed; WritesFailing fires above 1 %.",
     "percentunit", "timeseries",
     [("(sum by (job) (rate(http_requests_total{method=~\"POST|PUT|PATCH|DELETE\", status=~\"5..\"}[5m]))"
       " or sum by (job) (rate(http_requests_total{method=~\"POST|PUT|PATCH|DELETE\"}[5m])) * 0)"
       " / sum by (job) (rate(http_requests_total{method=~\"POST|PUT|PATCH|DELETE\"}[5m]))", "writes")]),
    ("Pool usage", "Database connections per API replica: in use, idle, and the pool's maximum.", "none", "timeseries",
     [("db_pool_in_use_connections", "in use {{instance}}"),
      ("db_pool_idle_connections", "idle {{instance}}"),
      ("db_pool_max_connections", "max {{instance}}")]),
    ("Pool wait", "Time requests wait for a pooled connection (p99), and how often they wait long or time out.",
     "s", "timeseries",
     [("histogram_quantile(0.99, sum by (instance, le) (rate(db_pool_checkout_seconds_bucket[5m])))", "p99 wait {{instance}}"),
      ("sum by (instance) (rate(db_pool_checkout_waits_total[5m]))", "slow checkouts/s {{instance}}"),
      ("sum by (instance) (rate(db_pool_checkout_timeouts_total[5m]))", "timeouts/s {{instance}}")]),
    ("Database up", "1 when mysqld-exporter can connect to MySQL; DatabaseDown fires after a minute at 0.", "none", "stat",
     [("mysql_up", "{{instance}}")]),
    ("Database connections", "Client connections MySQL holds open, and the ones running a statement.", "none", "timeseries",
     [("mysql_global_status_threads_connected", "connected"), ("mysql_global_status_threads_running", "running")]),
    ("API replicas up", "1 per replica Prometheus scrapes; ApiInstanceDown fires after a minute at 0.", "none", "stat",
     [("up{job=\"api\"}", "{{service}} {{instance}}")]),
    ("nginx: requests and connections", "Requests per second nginx handles and its client connections by state.",
     "none", "timeseries",
     [("rate(nginx_http_requests_total[5m])", "requests/s"),
      ("nginx_connections_active", "active"),
      ("nginx_connections_waiting", "idle keep-alive")]),
    ("Stream subscribers", "Open live-stream (SSE) connections per API replica.", "none", "timeseries",
     [("messages_stream_subscribers", "{{instance}}")]),
    ("Stream watcher", "Seconds since the change-log watcher's last successful poll, and how far it lags; "
     "StreamWatcherStalled fires above 60 s and 30 s.", "s", "timeseries",
     [("time() - messages_watcher_last_success_timestamp_seconds", "since last poll {{instance}}"),
      ("messages_watcher_lag_seconds", "lag {{instance}}")]),
    ("Idempotent replays", "Writes answered from an earlier response to the same Idempotency-Key (client retries).",
     "reqps", "timeseries",
     [("sum by (route) (rate(messages_idempotent_replays_total[5m]))", "{{route}}")]),
    ("Database errors by kind", "Failed database calls per second by kind (unavailable, timeout, write_conflict, constraint, ...).",
     "reqps", "timeseries",
     [("sum by (kind) (rate(db_errors_total[5m]))", "{{kind}}")]),
]


def panel(index, title, description, unit, kind, targets):
    body = {
        "id": index + 1,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + n), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for n, (expr, legend) in enumerate(targets)
        ],
    }
    if kind == "stat":
        body["options"] = {"colorMode": "background", "graphMode": "none",
                           "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
        body["fieldConfig"]["defaults"]["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
        }
    return body


def dashboard():
    return {
        "uid": "messages-board",
        "title": "Message board",
        "description": "Generated by monitoring/grafana/dashboard.py; edit that file, not this one.",
        "tags": ["messages"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


def queries():
    """Every panel query as (panel title, expression)."""
    return [(p[0], expr) for p in PANELS for expr, _ in p[4]]


def render():
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


def main(argv):
    if argv[1:] == ["--check"]:
        if not OUTPUT.exists() or OUTPUT.read_text() != render():
            print(f"{OUTPUT} is not what dashboard.py generates: run `python3 {argv[0]}`", file=sys.stderr)
            return 1
        print(f"{OUTPUT.name} matches its generator")
        return 0
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
