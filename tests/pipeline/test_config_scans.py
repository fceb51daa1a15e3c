"""scripts/scan-config and scripts/scan-secrets with the real, pinned Trivy (offline): both
pass on this repository, and each fails on what it exists to catch; the compose checks of
trivy/checks/ find what they name, and only that."""

import json
import os
import shutil
import subprocess
import textwrap
from datetime import date, timedelta
from pathlib import Path

import pytest

from conftest import REPO, run
from image_archive import write_image_archive

# Shaped like an AWS key pair (the documentation's example id is allowed by Trivy, so not it).
LEAKED = "aws_access_key_id = AKIA2E0A8F3B244C9986\naws_secret_access_key = Fq8bXw3+Tz0sK1vJ9rYmN4pL7cD2eH6gA5uQ0iWo\n"


def trivy(*args, **kwargs) -> subprocess.CompletedProcess:
    """The pinned Trivy, as the scripts put it on PATH."""
    script = 'source scripts/lib/common.sh; source scripts/lib/pipeline.sh; use_pinned_trivy >&2; exec trivy "$@"'
    return run("bash", "-euo", "pipefail", "-c", script, "trivy", *args, cwd=REPO, check=False, **kwargs)


def test_scan_config_passes_on_the_repository():
    result = run(str(REPO / "scripts/scan-config"), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = sorted(p.stem for p in (REPO / "target/scan-config/k8s").iterdir())
    assert rendered == sorted(p.name for p in (REPO / "k8s/overlays").iterdir())


def test_scan_config_fails_on_the_findings_once_their_entries_expire(tmp_path):
    """Every entry of .trivyignore stands for a real finding: with each expired
    yesterday, the scan fails and names them."""
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    lines = (REPO / ".trivyignore").read_text().splitlines()
    entries = [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]
    expired = tmp_path / "trivyignore"
    expired.write_text("".join(f"{entry} exp:{yesterday}\n" for entry in entries))
    result = run(str(REPO / "scripts/scan-config"), check=False, env=os.environ | {"TRIVY_IGNORE_FILE": str(expired)})
    assert result.returncode == 1
    for entry in entries:
        assert entry in result.stdout, f"{entry} is listed in .trivyignore but no longer found: drop it"
    assert "Misconfigurations in:" in result.stderr


BAD_COMPOSE = """\
    services:
      builder:
        image: docker:cli
        privileged: true
        volumes:
          - /var/run/docker.sock:/var/run/docker.sock
      sniffer:
        image: debian:bookworm-slim
        network_mode: host
        pid: host
      sidecar:
        image: debian:bookworm-slim
        network_mode: "service:builder"
        volumes:
          - type: volume
            source: data
            target: /data
    volumes:
      data:
"""


def compose_findings(path: Path) -> list:
    result = trivy("config", "--quiet", "--skip-check-update", "--format", "json", "--misconfig-scanners", "yaml",
                   "--config-check", "trivy/checks", "--check-namespaces", "user", str(path))
    assert result.returncode == 0, result.stderr
    return sorted(m["Message"] for r in json.loads(result.stdout).get("Results", []) for m in r.get("Misconfigurations", []))


def test_compose_check_finds_host_privileges(tmp_path):
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(textwrap.dedent(BAD_COMPOSE))
    assert compose_findings(compose) == [
        "service builder mounts the Docker socket",
        "service builder runs privileged",
        "service sniffer shares the host's network_mode",
        "service sniffer shares the host's pid",
    ]


@pytest.mark.parametrize("compose", ["docker-compose.yml", "docker-compose.prod.yml"])
def test_compose_check_reads_the_project_compose_files(compose):
    """Scanned as compose files (the check's input has services), with no finding."""
    result = trivy("config", "--quiet", "--skip-check-update", "--format", "json", "--misconfig-scanners", "yaml",
                   "--config-check", "trivy/checks", "--check-namespaces", "user", "--include-non-failures", compose)
    assert result.returncode == 0, result.stderr
    checks = [m for r in json.loads(result.stdout)["Results"] for m in r.get("Misconfigurations", [])]
    assert [(m["ID"], m["Status"]) for m in checks] == [("COMPOSE-0001", "PASS")]


@pytest.fixture
def checkout(tmp_path):
    """A git repository holding scripts/ as here (the scan runs on its own tree), with
    the tools of this checkout."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", root / "scripts")
    (root / ".gitignore").write_text("/target\n/secrets/\n")
    run("git", "init", "--quiet", str(root))
    (root / "target/tools").mkdir(parents=True)
    env = os.environ | {"PIP_TOOL_VENV": str(REPO / "target/tools/venv"),
                        "TRIVY_CACHE_DIR": str(REPO / "target/tools/trivy-cache")}

    def scan(*args):
        return run(str(root / "scripts/scan-secrets"), *args, check=False, env=env)

    scan.root = root
    return scan


def test_scan_secrets_passes_on_the_repository():
    result = run(str(REPO / "scripts/scan-secrets"), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scan_secrets_fails_on_a_key_in_the_tree_and_skips_what_git_ignores(checkout):
    assert checkout().returncode == 0
    (checkout.root / "secrets").mkdir()
    (checkout.root / "secrets/aws.env").write_text(LEAKED)
    ignored = checkout()
    assert ignored.returncode == 0, ignored.stdout + ignored.stderr
    (checkout.root / "deploy.env").write_text(LEAKED)
    leaked = checkout()
    assert leaked.returncode == 1
    assert "deploy.env" in leaked.stdout and "aws-access-key-id" in leaked.stdout
    assert "secrets/aws.env" not in leaked.stdout


def test_scan_secrets_fails_on_a_key_inside_an_image(checkout, tmp_path):
    clean = write_image_archive(tmp_path / "clean.tar", "registry.test/owner/messages-web:1")
    leaky = write_image_archive(tmp_path / "leaky.tar", "registry.test/owner/messages-api:1",
                                {"etc/messages/aws.env": LEAKED.encode()})
    assert checkout("--images", str(clean)).returncode == 0
    result = checkout("--images", str(clean), str(leaky))
    assert result.returncode == 1
    assert "etc/messages/aws.env" in result.stdout


def test_scan_secrets_rejects_an_unknown_option(checkout):
    result = checkout("--all")
    assert result.returncode == 2 and "usage:" in result.stderr
