"""The production overlay's monitoring objects: the PrometheusRule is the project's rule file,
the ServiceMonitor scrapes the API as monitoring/prometheus/prometheus.yml does, and both
are valid against the Prometheus Operator's CRD schemas (which kubernetes-validate lacks)."""

from __future__ import annotations

import pytest
import yaml
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor
from manifests import ROOT, port_by_name

RULES = ROOT / "monitoring/prometheus/rules.yml"
MODELS = {"PrometheusRule": PrometheusRule, "ServiceMonitor": ServiceMonitor}


def crd_errors(obj: dict) -> str | None:
    """Why `obj` does not fit its CRD's schema, or None. The models ignore unknown fields,
    so a field that does not survive the round trip is reported as unknown."""
    try:
        model = MODELS[obj["kind"]].model_validate(obj)
    except Exception as error:  # pydantic's ValidationError
        return str(error)
    back = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return None if back == obj else f"fields the schema does not know: {diff(obj, back)}"


def diff(given, kept, path="") -> list[str]:
    if isinstance(given, dict) and isinstance(kept, dict):
        return [p for k in given for p in (diff(given[k], kept[k], f"{path}.{k}") if k in kept else [f"{path}.{k}"])]
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        return [p for i, (g, k) in enumerate(zip(given, kept)) for p in diff(g, k, f"{path}[{i}]")]
    return [] if given == kept else [path]


def test_the_prometheus_rule_is_the_projects_rule_file(production):
    (rule,) = production.all("PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), (
        "k8s/components/monitoring/prometheus-rule.yaml is out of date: run scripts/k8s-prometheus-rule"
    )


def test_the_custom_resources_fit_their_crd_schemas(production):
    resources = [o for o in production.objects if o["kind"] in MODELS]
    assert sorted(o["kind"] for o in resources) == sorted(MODELS)
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
