"""scripts/scan-images and scripts/sbom-images: their arguments; the real, pinned Trivy
offline (no vulnerability database: the scan says nothing was checked and exits 3; the
SBOM of a saved image); and the scan's failure policy applied to a hand-written report
(fixtures/trivy-report-hand-written.json) that a stand-in trivy hands back, as Trivy
would with its database."""

import json
import os
import shutil
import stat
import sys
from datetime import date, timedelta

import pytest

from conftest import FIXTURES, REPO, run
from image_archive import PACKAGE, write_image_archive

REJECTED = ["CVE-2099-0001", "GHSA-0000-0000-0004"]
RECORDED_ONLY = ["CVE-2099-0002", "CVE-2099-0003", "CVE-2099-0005"]

# The stand-in for Trivy with its vulnerability database, for the policy tests only (the
# scripts run it as TRIVY): the database "download" succeeds, a scan writes the
# hand-written report, and each call is logged, one a line.
TRIVY_STAND_IN = f"""#!{sys.executable}
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["STAND_IN_CALLS"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if "--download-db-only" not in args:
    shutil.copy(os.environ["STAND_IN_REPORT"], args[args.index("--output") + 1])
"""


@pytest.fixture
def gate(tmp_path):
    """Runs a gate script with target/reports and Trivy's cache redirected and, if asked,
    the stand-in trivy."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Only what the scripts need, so nothing else of this machine is found.
    for tool in ("bash", "git", "jq", "dpkg-query", "grep", "sed", "date", "mkdir", "cat", "dirname", "ln",
                 "timeout", "basename"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    calls = tmp_path / "trivy-calls"
    stand_in = tmp_path / "trivy-stand-in"
    stand_in.write_text(TRIVY_STAND_IN)
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)

    def invoke(script, *args, stand_in_trivy=False, ignore_file=None):
        env = {
            "PATH": str(bin_dir),
            "HOME": os.environ.get("HOME", "/root"),
            "REPORTS_DIR": str(tmp_path / "reports"),
            # An empty cache, and a database repository that refuses: no database, wherever
            # the test runs.
            "TRIVY_CACHE_DIR": str(tmp_path / "trivy-cache"),
            "TRIVY_DB_REPOSITORY": "127.0.0.1:9/trivy-db",
            "STAND_IN_CALLS": str(calls),
            "STAND_IN_REPORT": str(FIXTURES / "trivy-report-hand-written.json"),
            "REGISTRY": "registry.test/owner",
            "IMAGE_TAG": "0123456789ab",
        }
        if stand_in_trivy:
            env["TRIVY"] = str(stand_in)
        if ignore_file:
            env["TRIVY_IGNORE_FILE"] = str(ignore_file)
        return run(str(REPO / "scripts" / script), *args, check=False, env=env)

    invoke.calls = lambda: [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    invoke.reports = tmp_path / "reports"
    return invoke


@pytest.mark.parametrize("script", ["scan-images", "sbom-images"])
def test_unknown_option_is_a_usage_error(gate, script):
    result = gate(script, "--severity", "LOW", stand_in_trivy=True)
    assert result.returncode == 2 and "usage:" in result.stderr
    assert gate.calls() == []


@pytest.mark.parametrize("script", ["scan-images", "sbom-images"])
def test_help_describes_the_script(gate, script):
    result = gate(script, "--help")
    assert result.returncode == 0 and "Exit status:" in result.stdout


def test_scan_without_the_vulnerability_database_says_nothing_was_checked_and_exits_3(gate):
    """The real Trivy, whose database cannot be fetched: no image is scanned."""
    result = gate("scan-images", "registry.test/owner/messages-api:0123456789ab")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "vulnerabilities were NOT checked" in result.stderr
    assert not (gate.reports / "trivy").exists()


def test_sbom_of_a_saved_image_lists_its_packages(gate, tmp_path):
    """The real Trivy, offline: a CycloneDX document of an image saved as a tar."""
    archive = write_image_archive(tmp_path / "messages-api.tar", "registry.test/owner/messages-api:0123456789ab")
    result = gate("sbom-images", str(archive))
    assert result.returncode == 0, result.stdout + result.stderr
    sbom = json.loads((gate.reports / "sbom/messages-api.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    components = {(c["name"], c.get("version")) for c in sbom["components"]}
    assert PACKAGE in components and ("debian", "12.8") in components


def test_sbom_fails_when_trivy_cannot_read_the_image(gate, tmp_path):
    broken = tmp_path / "messages-web.tar"
    broken.write_bytes(b"not an image archive")
    result = gate("sbom-images", str(broken))
    assert result.returncode != 0
    assert not (gate.reports / "sbom/messages-web.cdx.json").exists()


def test_scan_rejects_fixable_high_and_critical_findings_only(gate):
    result = gate("scan-images", "registry.test/owner/messages-api:0123456789ab", stand_in_trivy=True)
    assert result.returncode == 1
    for finding in REJECTED:
        assert finding in result.stderr
    for finding in RECORDED_ONLY:
        assert finding not in result.stdout + result.stderr
    assert "2 fixable HIGH or CRITICAL vulnerabilities (5 findings in all)" in result.stderr
    report = json.loads((gate.reports / "trivy/messages-api.json").read_text())
    assert report["ArtifactType"] == "container_image"


def test_scan_passes_when_the_ignore_file_covers_the_rejected_findings(gate, tmp_path):
    until = (date.today() + timedelta(days=30)).isoformat()
    ignore = tmp_path / "trivyignore"
    ignore.write_text(f"# accepted for the test\n{REJECTED[0]} exp:{until}\n{REJECTED[1]}  # no expiry\n")
    result = gate("scan-images", "registry.test/owner/messages-api:0123456789ab", stand_in_trivy=True,
                  ignore_file=ignore)
    assert result.returncode == 0, result.stderr
    assert "no fixable HIGH or CRITICAL vulnerability" in result.stdout


def test_scan_fails_again_once_an_ignore_entry_has_expired(gate, tmp_path):
    ignore = tmp_path / "trivyignore"
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    ignore.write_text(f"{REJECTED[0]} exp:{yesterday}\n{REJECTED[1]}\n")
    result = gate("scan-images", "registry.test/owner/messages-api:0123456789ab", stand_in_trivy=True,
                  ignore_file=ignore)
    assert result.returncode == 1
    assert f"{REJECTED[0]} expired on {yesterday}" in result.stderr
    assert "1 fixable HIGH or CRITICAL vulnerabilities" in result.stderr


def test_scan_fetches_the_database_once_then_checks_every_image_of_this_commit(gate):
    result = gate("scan-images", stand_in_trivy=True)
    assert result.returncode == 1
    calls = gate.calls()
    assert "--download-db-only" in calls[0]
    scanned = [call[-1] for call in calls[1:]]
    assert scanned == [f"registry.test/owner/messages-{name}:0123456789ab" for name in ("api", "web", "backup")]
    # The report keeps every finding: Trivy applies no ignore file, the policy does.
    assert all(call[:2] == ["image", "--quiet"] and "--skip-db-update" in call
               and call[call.index("--ignorefile") + 1] == "" for call in calls[1:])
    assert sorted(p.name for p in (gate.reports / "trivy").iterdir()) == [
        "messages-api.json", "messages-backup.json", "messages-web.json"]
