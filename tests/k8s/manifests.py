"""Rendering the overlays and reading what the manifests say, shared by tests/k8s and the
container tests that start the pod specs (tests/containers/test_k8s_pod_specs.py)."""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir())


@dataclass(frozen=True)
class Rendered:
    overlay: str
    objects: tuple[dict, ...]

    def all(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [o for o in self.all(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: {len(found)} {kind} named {name}"
        return found[0]

    def config_map(self, name: str) -> dict:
        """A generated ConfigMap by its name before kustomize's hash suffix."""
        found = [o for o in self.all("ConfigMap") if re.fullmatch(rf"{name}-[a-z0-9]{{10}}", o["metadata"]["name"])]
        assert len(found) == 1, f"{self.overlay}: no single ConfigMap {name}"
        return found[0]

    def pod_specs(self) -> list[tuple[str, dict]]:
        """(kind/name, pod spec) of every workload."""
        return [
            (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
            for o in self.objects
            if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
        ]

    def migrate_job(self) -> dict:
        jobs = self.all("Job")
        assert len(jobs) == 1, f"{self.overlay}: {len(jobs)} Jobs"
        return jobs[0]

    def container(self, kind: str, name: str) -> dict:
        return self.get(kind, name)["spec"]["template"]["spec"]["containers"][0]

    def environment(self, container: dict) -> dict[str, str]:
        """The variables a container gets: its ConfigMaps' (envFrom), then its own env."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            assert set(source) == {"configMapRef"}, f"unexpected envFrom {source}"
            env.update(self.get("ConfigMap", source["configMapRef"]["name"])["data"])
        for var in container.get("env", []):
            if "resourceFieldRef" in var.get("valueFrom", {}):
                env[var["name"]] = self.resource_field(container, var["valueFrom"]["resourceFieldRef"])
                continue
            assert "value" in var, f"{var['name']}: values or resource fields only (secrets come as files)"
            env[var["name"]] = var["value"]
        return env

    def resource_field(self, container: dict, ref: dict) -> str:
        """What the downward API gives for a CPU limit: the limit over the divisor, rounded up."""
        assert ref["containerName"] == container["name"], ref
        assert ref["resource"] == "limits.cpu", f"only CPU limits are supported here: {ref}"
        return str(math.ceil(cpu_cores(container["resources"]["limits"]["cpu"]) / cpu_cores(ref.get("divisor", "1"))))


@cache
def render(overlay: str) -> Rendered:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        check=True, capture_output=True, text=True,
    ).stdout
    return Rendered(overlay, tuple(o for o in yaml.safe_load_all(out) if o))


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity in cores: "500m" is 0.5, "2" is 2."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def port_by_name(container: dict, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"container {container['name']} has no port {name}"
    return ports[name]


def probe_port(container: dict, probe: dict) -> int:
    port = probe["httpGet"]["port"]
    return port if isinstance(port, int) else port_by_name(container, port)
