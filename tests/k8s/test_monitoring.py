"""The production overlay's monitoring objects: the PrometheusRule is the project's rule file
but for its compose-only group, every alert it ships is fed by a scrape job of the overlay,
the ServiceMonitor scrapes the API as monitoring/prometheus/prometheus.yml does, and both
are valid against the Prometheus Operator's CRD schemas (which kubernetes-validate lacks)."""

from __future__ import annotations

import re

import pytest
import yaml
from custom_resources import crd_errors
from manifests import ROOT, port_by_name

RULES = ROOT / "monitoring/prometheus/rules.yml"
# The rules on metrics of exporters that only the compose stack runs (scripts/k8s-prometheus-rule).
COMPOSE_ONLY_GROUP = "messages-exporter-alerts"
MONITORING_KINDS = ["PrometheusRule", "ServiceMonitor"]


def test_the_prometheus_rule_is_the_projects_rule_file_but_its_compose_only_group(production):
    (rule,) = production.all("PrometheusRule")
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert COMPOSE_ONLY_GROUP in [g["name"] for g in groups]
    assert rule["spec"] == {"groups": [g for g in groups if g["name"] != COMPOSE_ONLY_GROUP]}, (
        "k8s/components/monitoring/prometheus-rule.yaml is out of date: run scripts/k8s-prometheus-rule"
    )


# PromQL words that are not metric names.
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                   "group_right", "inf", "nan"}


def selectors(expr: str) -> list[tuple[str, str]]:
    """Each metric an expression selects, as (name, label matchers), functions and
    keywords aside."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: m.group().replace("}", ""), expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    found = []
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?", expr):
        name, matchers, call = match.groups()
        if not call and name.lower() not in PROMQL_KEYWORDS:
            found.append((name, matchers or ""))
    return found


def fed_selectors(rule_file: dict, expr: str) -> list[tuple[str, str]]:
    """The scraped metrics an expression needs, through the recording rules it reads."""
    recorded = {r["record"]: r["expr"] for g in rule_file["groups"] for r in g["rules"] if "record" in r}
    found = []
    for name, matchers in selectors(expr):
        found += fed_selectors(rule_file, recorded[name]) if name in recorded else [(name, matchers)]
    return found


def api_metric_names() -> set[str]:
    """The metric names the API exposes: every string literal of its code that looks like
    one, with the series a histogram adds."""
    literals = {m for f in (ROOT / "api/src").rglob("*.rs") for m in re.findall(r'"([a-z][a-z0-9_]*)"', f.read_text())}
    return literals | {f"{name}_{suffix}" for name in literals for suffix in ("bucket", "count", "sum")}


def scrape_jobs(production) -> set[str]:
    """The job label of each target the overlay's ServiceMonitors scrape: their Services' names."""
    jobs = set()
    for monitor in production.all("ServiceMonitor"):
        selected = monitor["spec"]["selector"]["matchLabels"].items()
        jobs |= {s["metadata"]["name"] for s in production.all("Service")
                 if selected <= s["metadata"].get("labels", {}).items()}
    return jobs


def unfed_metrics(rule_file: dict, jobs: set[str]) -> list[str]:
    """The alerts' selectors that no scrape job of `jobs` feeds: every metric the API's
    (the one target scraped there) or `up` of a scraped job, and any job matcher naming one."""
    exported = api_metric_names()
    unfed = []
    for rule in (r for g in rule_file["groups"] for r in g["rules"] if "alert" in r):
        for name, matchers in fed_selectors(rule_file, rule["expr"]):
            named_jobs = re.findall(r'job\s*=~?\s*"([^"]*)"', matchers)
            if (name != "up" and name not in exported) or (name == "up" and not named_jobs) or any(
                    not any(re.fullmatch(j, job) for job in jobs) for j in named_jobs):
                unfed.append(f"{rule['alert']}: {name}{matchers}")
    return unfed


def test_every_alert_shipped_has_a_scrape_job_that_feeds_it(production):
    (rule,) = production.all("PrometheusRule")
    jobs = scrape_jobs(production)
    assert jobs == {"api"}
    assert unfed_metrics(rule["spec"], jobs) == []


def test_the_feed_check_catches_the_compose_only_alerts():
    # They read mysql_up, nginx_up, the Pushgateway's backup timestamp and the exporters' `up`.
    groups = yaml.safe_load(RULES.read_text())["groups"]
    unfed = unfed_metrics({"groups": groups}, {"api"})
    alerts = {entry.split(":")[0] for entry in unfed}
    assert alerts == {r["alert"] for g in groups if g["name"] == COMPOSE_ONLY_GROUP for r in g["rules"]}, unfed


def test_the_custom_resources_fit_their_crd_schemas(production):
    resources = [o for o in production.objects if o["kind"] in MONITORING_KINDS]
    assert sorted(o["kind"] for o in resources) == MONITORING_KINDS
    for obj in resources:
        assert crd_errors(obj) is None, crd_errors(obj)


@pytest.mark.parametrize("break_it", [
    lambda o: o["spec"]["endpoints"][0].update(pathh="/metrics"),
    lambda o: o["spec"].update(endpoints="http"),
])
def test_the_crd_check_catches_a_wrong_service_monitor(production, break_it):
    (monitor,) = production.all("ServiceMonitor")
    broken = yaml.safe_load(yaml.safe_dump(monitor))
    break_it(broken)
    assert crd_errors(broken) is not None


def test_the_service_monitor_scrapes_every_api_replica_as_the_compose_prometheus_does(production):
    (monitor,) = production.all("ServiceMonitor")
    (service,) = [
        s for s in production.all("Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()
    ]
    # The job label is the Service's name: the rules' job="api".
    prometheus = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    assert service["metadata"]["name"] == "api"
    assert "api" in [job["job_name"] for job in prometheus["scrape_configs"]]
    assert 'job="api"' in RULES.read_text()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    container = production.container("Deployment", "api")
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert port_by_name(container, "http") == [
        p for p in prometheus["scrape_configs"] if p["job_name"] == "api"
    ][0]["dns_sd_configs"][0]["port"]
