"""End to end: a real Prometheus, with the shipped config and rules, scrapes the real API,
nginx (through prometheus-nginx-exporter) and MariaDB (through prometheus-mysqld-exporter),
and sends its alerts to a real Alertmanager with the shipped config, rendered to deliver to
a real SMTP server and a real webhook listener. The tests run in order on one stack:
database outage, recovery, dashboard data, then the API stopped."""

import json
import re
import sys
import time
import urllib.request

import pytest
import yaml
from client import request
from conftest import DASHBOARD_BASE_URL, EVALUATION_INTERVAL, MONITORING, RULES, RUNBOOK_BASE_URL, SCRAPE_INTERVAL
from harness import eventually
from load import Clients

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


def alertmanager_alerts(stack, name):
    with urllib.request.urlopen(f"{stack.alertmanager_url}/api/v2/alerts?filter=alertname%3D{name}",
                                timeout=10) as response:
        return json.load(response)


def delivered(stack, status, alertname):
    """The notifications about `alertname` in `status` (FIRING or RESOLVED), once both the
    email and the webhook have one; None before."""
    found = [n for n in stack.smtp.notifications() + stack.webhook.notifications()
             if n.title.startswith(f"[{status}") and f"] {alertname} (" in n.title]
    return found if {n.via for n in found} == {"email", "webhook"} else None


def assert_links(notification, alertname):
    assert f"Runbook: {RUNBOOK_BASE_URL}/docs/monitoring.md#{alertname.lower()}" in notification.text, notification
    assert f"Dashboard: {DASHBOARD_BASE_URL}/d/{dashboard.dashboard()['uid']}" in notification.text, notification


def test_prometheus_scrapes_every_job_of_the_shipped_config(stack):
    jobs = {job["job_name"] for job in stack.config["scrape_configs"]}
    up = eventually(lambda: {t["labels"]["job"] for t in stack.prometheus.targets() if t["health"] == "up"} >= jobs,
                    30, "every target to be up")
    assert up


def test_stub_status_answers_only_on_its_private_socket(stack):
    answer = request("GET", f"{stack.nginx_url}/stub_status")
    assert answer.status == 404 and "Active connections" not in str(answer.body)
    assert stack.prometheus.query('nginx_up{job="nginx"} == 1')


def test_database_outage_fires_database_down_and_the_error_ratio_alert(stack):
    # Users through nginx: reads several times a second, a post each second (below nginx's
    # write rate limit).
    with Clients([stack.nginx_url], threads=2, writers=1, pause=0.1, write_pause=1, timeout=10) as traffic:
        eventually(lambda: {200, 201} <= traffic.statuses().keys(), 10, "a successful read and post through nginx")
        stack.db.stop()
        stopped = time.monotonic()
        eventually(lambda: stack.prometheus.alerts("DatabaseDown"), fire_deadline("DatabaseDown"),
                   "DatabaseDown to fire", interval=0.5)
        print(f"DatabaseDown fired {time.monotonic() - stopped:.1f}s after the database stopped")
        # The reads through nginx meanwhile got 503s from the API, which it counts.
        eventually(lambda: stack.prometheus.alerts("HighErrorRatio"), fire_deadline("HighErrorRatio"),
                   "HighErrorRatio to fire", interval=0.5)
        print(f"HighErrorRatio fired {time.monotonic() - stopped:.1f}s after the database stopped")
    assert 503 in traffic.statuses(), traffic.summary()
    # Alertmanager has both, and mutes the symptom while its cause fires.
    database_down = eventually(lambda: alertmanager_alerts(stack, "DatabaseDown"), 15,
                               "Alertmanager to receive DatabaseDown")
    assert database_down[0]["status"]["state"] == "active"
    error_ratio = eventually(lambda: alertmanager_alerts(stack, "HighErrorRatio"), 15,
                             "Alertmanager to receive HighErrorRatio")
    assert error_ratio[0]["status"]["state"] == "suppressed"
    assert error_ratio[0]["status"]["inhibitedBy"]

    # The page reaches a person, by email and by the webhook, with the summary and links.
    page = eventually(lambda: delivered(stack, "FIRING", "DatabaseDown"), 15, "the DatabaseDown email and webhook")
    print(f"DatabaseDown delivered by email and webhook {max(n.at for n in page) - stopped:.1f}s after the database stopped")
    for notification in page:
        assert "The database is unreachable" in notification.text
        assert_links(notification, "DatabaseDown")
    assert {tuple(m["to"]) for m in stack.smtp.mails} == {("oncall@example.org",)}
    assert {p["path"] for p in stack.webhook.posts} == {"/hooks/messages-alerts"}
    # Its symptoms do not: a few group intervals after HighErrorRatio reached Alertmanager,
    # nothing labelled as the database's symptom was sent.
    time.sleep(3)
    sent = stack.smtp.notifications() + stack.webhook.notifications()
    assert not [n for n in sent if "symptom_of=database" in n.text or "HighErrorRatio" in n.title], sent


def test_database_down_resolves_when_the_database_is_back(stack):
    stack.db.start()
    started = time.monotonic()
    eventually(lambda: not stack.prometheus.alerts("DatabaseDown", state=None),
               2 * SCRAPE_INTERVAL + 2 * EVALUATION_INTERVAL + 5, "DatabaseDown to resolve", interval=0.5)
    print(f"DatabaseDown resolved {time.monotonic() - started:.1f}s after the database started")
    resolution = eventually(lambda: delivered(stack, "RESOLVED", "DatabaseDown"), 15,
                            "the DatabaseDown resolution by email and webhook")
    print(f"DatabaseDown's resolution delivered {max(n.at for n in resolution) - started:.1f}s after the database started")
    for notification in resolution:
        assert_links(notification, "DatabaseDown")
    eventually(lambda: request("GET", f"{stack.nginx_url}/api/messages").status == 200, 30, "the API to read again")


@pytest.mark.parametrize("title,expr", dashboard.queries())
def test_dashboard_query_returns_data(stack, title, expr):
    assert stack.prometheus.query(expr), f"panel {title!r}: {expr} returned nothing"


def test_stopping_the_api_behind_nginx_fires_instance_down_and_upstream_unreachable(stack):
    stack.api.stop()
    stopped = time.monotonic()
    assert request("GET", f"{stack.nginx_url}/api/messages").status == 502
    for name in ("ApiInstanceDown", "NginxUpstreamUnreachable"):
        eventually(lambda: stack.prometheus.alerts(name), fire_deadline(name) - (time.monotonic() - stopped),
                   f"{name} to fire", interval=0.5)
        print(f"{name} fired {time.monotonic() - stopped:.1f}s after the API stopped")
