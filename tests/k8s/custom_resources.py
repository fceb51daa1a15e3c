"""Custom resources checked against their CRDs' schemas, which kubernetes-validate lacks:
the Prometheus Operator's (monitoring) and cert-manager's (TLS), as the pydantic models
that PyPI's cloudcoil-models-* packages generate from those schemas (versions pinned in
scripts/test-k8s)."""

from __future__ import annotations

from cloudcoil.models.cert_manager.v1 import ClusterIssuer
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

MODELS = {"PrometheusRule": PrometheusRule, "ServiceMonitor": ServiceMonitor, "ClusterIssuer": ClusterIssuer}


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
