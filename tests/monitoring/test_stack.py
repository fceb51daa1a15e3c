"""End to end: a real Prometheus, with the shipped config and rules, scrapes the real API,
nginx (through prometheus-nginx-exporter) and MariaDB (through prometheus-mysqld-exporter),
and sends its alerts to a real Alertmanager with the shipped config. The tests run in
order on one stack: database outage, recovery, dashboard data, then the API stopped."""

import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

from conftest import EVALUATION_INTERVAL, MONITORING, RULES, SCRAPE_INTERVAL, http_get, wait_until

sys.path.insert(0, str(MONITORING / "grafana"))
import dashboard  # noqa: E402


def rule_for_seconds(name):
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                value, unit = re.fullmatch(r"(\d+)([smh])", rule["for"]).groups()
                return int(value) * {"s": 1, "m": 60, "h": 3600}[unit]
    raise KeyError(name)


def fire_deadline(name):
    """An alert's `for:` plus two scrape intervals, plus one evaluation interval for the
    rule to see the last scrape."""
    return rule_for_seconds(name) + 2 * SCRAPE_INTERVAL + EVALUATION_INTERVAL


def http_post_json(url, body, timeout=10):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


class Traffic:
    """Users through nginx until stopped: reads several times a second, a post each second
    (below nginx's write rate limit)."""

    def __init__(self, url):
        self.url, self.statuses, self.stopped = url, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        n = 0
        while not self.stopped.is_set():
            self.statuses.append(http_get(f"{self.url}/api/messages", timeout=10)[0])
            if n % 10 == 0:
                self.statuses.append(http_post_json(f"{self.url}/api/messages", {"message": f"monitoring {n}"}))
            n += 1
            time.sleep(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stopped.set()
        self.thread.join()


def alertmanager_alerts(stack, name):
    with urllib.request.urlopen(f"{stack.alertmanager_url}/api/v2/alerts?filter=alertname%3D{name}",
                                timeout=10) as response:
        return json.load(response)


def test_prometheus_scrapes_every_job_of_the_shipped_config(stack):
    jobs = {job["job_name"] for job in stack.config["scrape_configs"]}
    up = wait_until("every target to be up", lambda: (
        {t["labels"]["job"] for t in stack.prometheus.targets() if t["health"] == "up"} >= jobs), 30)
    assert up


def test_stub_status_answers_only_on_its_private_socket(stack):
    status, body = http_get(f"{stack.nginx_url}/stub_status")
    assert status == 404 and "Active connections" not in body
    assert stack.prometheus.query('nginx_up{job="nginx"} == 1')


def test_database_outage_fires_database_down_and_the_error_ratio_alert(stack):
    with Traffic(stack.nginx_url) as traffic:
        wait_until("a successful read and post through nginx",
                   lambda: {200, 201} <= set(traffic.statuses), 10)
        stack.db.stop()
        stopped = time.monotonic()
        wait_until("DatabaseDown to fire", lambda: stack.prometheus.alerts("DatabaseDown"),
                   fire_deadline("DatabaseDown"), interval=0.5)
        print(f"DatabaseDown fired {time.monotonic() - stopped:.1f}s after the database stopped")
        # The reads through nginx meanwhile got 503s from the API, which it counts.
        wait_until("HighErrorRatio to fire", lambda: stack.prometheus.alerts("HighErrorRatio"),
                   fire_deadline("HighErrorRatio"), interval=0.5)
        print(f"HighErrorRatio fired {time.monotonic() - stopped:.1f}s after the database stopped")
    assert 503 in traffic.statuses
    # Alertmanager has both, and mutes the symptom while its cause fires.
    database_down = wait_until("Alertmanager to receive DatabaseDown",
                               lambda: alertmanager_alerts(stack, "DatabaseDown"), 15)
    assert database_down[0]["status"]["state"] == "active"
    error_ratio = wait_until("Alertmanager to receive HighErrorRatio",
                             lambda: alertmanager_alerts(stack, "HighErrorRatio"), 15)
    assert error_ratio[0]["status"]["state"] == "suppressed"
    assert error_ratio[0]["status"]["inhibitedBy"]


def test_database_down_resolves_when_the_database_is_back(stack):
    stack.db.start()
    started = time.monotonic()
    wait_until("DatabaseDown to resolve", lambda: not stack.prometheus.alerts("DatabaseDown", state=None),
               2 * SCRAPE_INTERVAL + 2 * EVALUATION_INTERVAL + 5, interval=0.5)
    print(f"DatabaseDown resolved {time.monotonic() - started:.1f}s after the database started")
    wait_until("the API to read again", lambda: http_get(f"{stack.nginx_url}/api/messages")[0] == 200, 30)


@pytest.mark.parametrize("title,expr", dashboard.queries())
def test_dashboard_query_returns_data(stack, title, expr):
    assert stack.prometheus.query(expr), f"panel {title!r}: {expr} returned nothing"


def test_stopping_the_api_behind_nginx_fires_instance_down_and_upstream_unreachable(stack):
    stack.api.stop()
    stopped = time.monotonic()
    assert http_get(f"{stack.nginx_url}/api/messages")[0] == 502
    for name in ("ApiInstanceDown", "NginxUpstreamUnreachable"):
        wait_until(f"{name} to fire", lambda: stack.prometheus.alerts(name),
                   fire_deadline(name) - (time.monotonic() - stopped), interval=0.5)
        print(f"{name} fired {time.monotonic() - stopped:.1f}s after the API stopped")
