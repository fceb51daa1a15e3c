"""scripts/deploy-k8s against a stand-in kubectl that records each call, renders with the
real `kubectl kustomize`, and reports the migrations Job as the test says."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from manifests import ROOT

STAND_IN = """#!/bin/sh
# Records the call; `kustomize` and the rendering behind `apply -k` are the real kubectl's.
printf '%s\\n' "$*" >>"$KUBECTL_LOG"
case "$1" in
kustomize) exec "$REAL_KUBECTL" "$@" ;;
apply)
    if [ "$2" = "-k" ]; then "$REAL_KUBECTL" kustomize "$3" >"$KUBECTL_LOG.applied-k.yaml"; fi ;;
esac
case "$*" in
*"get job/"*) printf '%s' "$JOB_CONDITIONS" ;;
esac
"""


@pytest.fixture
def kubectl(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "kubectl"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    return {"path": bin_dir, "log": tmp_path / "kubectl.log", "real": shutil.which("kubectl")}


def deploy(kubectl, *args: str, conditions: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{kubectl['path']}:{os.environ['PATH']}",
        "KUBECTL_LOG": str(kubectl["log"]),
        "REAL_KUBECTL": kubectl["real"],
        "JOB_CONDITIONS": conditions,
        "REGISTRY": "registry.test/team",
        "K8S_TIMEOUT": "5",
    }
    return subprocess.run([str(ROOT / "scripts/deploy-k8s"), *args], env=env, capture_output=True, text=True, timeout=60)


def calls(kubectl) -> list[str]:
    return [line for line in kubectl["log"].read_text().splitlines() if not line.startswith("kustomize ")]


def k8s_files() -> dict[str, bytes]:
    return {str(p.relative_to(ROOT)): p.read_bytes() for p in sorted((ROOT / "k8s").rglob("*")) if p.is_file()}


def test_deploy_migrates_then_applies_the_release_and_waits_for_the_rollout(kubectl):
    before = k8s_files()
    result = deploy(kubectl, "1.4.2", conditions="Complete=True ")
    assert result.returncode == 0, result.stdout + result.stderr
    made = calls(kubectl)
    assert made[0].startswith("apply -f ") and made[0].endswith("--selector app.kubernetes.io/component notin (api,web)")
    assert made[1] == "-n messages get job/migrate-1.4.2 -o jsonpath={range .status.conditions[*]}{.type}={.status}{\" \"}{end}"
    assert made[2].startswith("apply -k ")
    assert made[3:] == [
        "-n messages rollout status deployment/api --timeout=5s",
        "-n messages rollout status deployment/web --timeout=5s",
    ]
    applied = [o for o in yaml.safe_load_all(Path(f"{kubectl['log']}.applied-k.yaml").read_text()) if o]
    images = {c["image"] for o in applied if o["kind"] in ("Deployment", "Job")
              for c in o["spec"]["template"]["spec"]["containers"]}
    assert images == {"registry.test/team/messages-api:1.4.2", "registry.test/team/messages-web:1.4.2"}
    assert [o["metadata"]["name"] for o in applied if o["kind"] == "Job"] == ["migrate-1.4.2"]
    # The checkout's overlay is left as it was.
    assert k8s_files() == before


def test_a_failed_migration_stops_before_the_new_version_is_applied(kubectl):
    result = deploy(kubectl, "1.4.3", conditions="Failed=True ")
    assert result.returncode == 1
    assert "migrate-1.4.3 failed" in result.stderr
    assert not [c for c in calls(kubectl) if c.startswith(("apply -k", "-n messages rollout"))]


def test_deploy_needs_the_registry(kubectl):
    env = {k: v for k, v in os.environ.items() if k != "REGISTRY"}
    env["PATH"] = f"{kubectl['path']}:{env['PATH']}"
    env["KUBECTL_LOG"] = str(kubectl["log"])
    result = subprocess.run([str(ROOT / "scripts/deploy-k8s"), "1.4.4"], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "set REGISTRY" in result.stderr
    assert not kubectl["log"].exists()


def test_the_first_apply_holds_what_the_job_needs_and_no_deployment(production):
    def selected(obj: dict) -> bool:
        return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") not in ("api", "web")

    first = {(o["kind"], o["metadata"]["name"].rsplit("-", 1)[0] if o["kind"] == "ConfigMap" else o["metadata"]["name"])
             for o in production.objects if selected(o)}
    job = production.migrate_job()
    assert ("Job", job["metadata"]["name"]) in first
    assert {("Namespace", "messages"), ("ConfigMap", "api-config"), ("Service", "db"),
            ("NetworkPolicy", "database-clients"), ("NetworkPolicy", "dns")} <= first
    assert not [kind for kind, _ in first if kind == "Deployment"]
