"""scripts/scan-images and scripts/sbom-images without Trivy: their arguments, the exit
when Trivy is missing, and the scan's failure policy applied to a Trivy report
(fixtures/trivy-report.json) that a stand-in trivy hands back."""

import json
import os
import shutil
import stat
import sys
from datetime import date, timedelta

import pytest

from conftest import FIXTURES, REPO, run

REJECTED = ["CVE-2099-0001", "GHSA-0000-0000-0004"]
RECORDED_ONLY = ["CVE-2099-0002", "CVE-2099-0003", "CVE-2099-0005"]

# Writes the recorded report (--format json) or a minimal CycloneDX document, and logs
# its arguments, one call a line.
TRIVY_STAND_IN = f"""#!{sys.executable}
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["TRIVY_CALLS"], "a") as log:
    log.write(json.dumps(args) + "\\n")
output = args[args.index("--output") + 1]
if args[args.index("--format") + 1] == "json":
    shutil.copy(os.environ["TRIVY_REPORT"], output)
else:
    json.dump({{"bomFormat": "CycloneDX", "specVersion": "1.6", "components": []}}, open(output, "w"))
"""


@pytest.fixture
def gate(tmp_path):
    """Runs a gate script with target/reports redirected and, if asked, a stand-in trivy."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Only what the scripts need, so a trivy installed on this machine is not found.
    for tool in ("bash", "git", "jq", "dpkg-query", "grep", "sed", "date", "mkdir", "cat", "dirname"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    calls = tmp_path / "trivy-calls"

    def invoke(script, *args, trivy=True, ignore_file=None):
        if trivy:
            stand_in = bin_dir / "trivy"
            stand_in.write_text(TRIVY_STAND_IN)
            stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
        env = {
            "PATH": str(bin_dir),
            "HOME": os.environ.get("HOME", "/root"),
            "REPORTS_DIR": str(tmp_path / "reports"),
            "TRIVY_CALLS": str(calls),
            "TRIVY_REPORT": str(FIXTURES / "trivy-report.json"),
            "REGISTRY": "registry.test/owner",
            "IMAGE_TAG": "0123456789ab",
        }
        if ignore_file:
            env["TRIVY_IGNORE_FILE"] = str(ignore_file)
        return run(str(REPO / "scripts" / script), *args, check=False, env=env)

    invoke.calls = lambda: [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    invoke.reports = tmp_path / "reports"
    return invoke


@pytest.mark.parametrize("script", ["scan-images", "sbom-images"])
def test_says_trivy_is_missing_and_exits_127(gate, script):
    result = gate(script, trivy=False)
    assert result.returncode == 127
    assert "trivy is not installed" in result.stderr


@pytest.mark.parametrize("script", ["scan-images", "sbom-images"])
def test_unknown_option_is_a_usage_error(gate, script):
    result = gate(script, "--severity", "LOW")
    assert result.returncode == 2 and "usage:" in result.stderr
    assert gate.calls() == []


@pytest.mark.parametrize("script", ["scan-images", "sbom-images"])
def test_help_describes_the_script(gate, script):
    result = gate(script, "--help", trivy=False)
    assert result.returncode == 0 and "Exit status:" in result.stdout


def test_scan_rejects_fixable_high_and_critical_findings_only(gate):
    result = gate("scan-images", "registry.test/owner/messages-api:0123456789ab")
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
    result = gate("scan-images", "registry.test/owner/messages-api:0123456789ab", ignore_file=ignore)
    assert result.returncode == 0, result.stderr
    assert "no fixable HIGH or CRITICAL vulnerability" in result.stdout


def test_scan_fails_again_once_an_ignore_entry_has_expired(gate, tmp_path):
    ignore = tmp_path / "trivyignore"
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    ignore.write_text(f"{REJECTED[0]} exp:{yesterday}\n{REJECTED[1]}\n")
    result = gate("scan-images", "registry.test/owner/messages-api:0123456789ab", ignore_file=ignore)
    assert result.returncode == 1
    assert f"{REJECTED[0]} expired on {yesterday}" in result.stderr
    assert "1 fixable HIGH or CRITICAL vulnerabilities" in result.stderr


def test_scan_checks_both_images_of_this_commit_by_default(gate):
    result = gate("scan-images")
    assert result.returncode == 1
    scanned = [call[-1] for call in gate.calls()]
    assert scanned == ["registry.test/owner/messages-api:0123456789ab", "registry.test/owner/messages-web:0123456789ab"]
    assert all(call[:2] == ["image", "--quiet"] and "--format" in call for call in gate.calls())
    assert sorted(p.name for p in (gate.reports / "trivy").iterdir()) == ["messages-api.json", "messages-web.json"]


def test_sbom_writes_a_cyclonedx_document_per_image(gate):
    result = gate("sbom-images")
    assert result.returncode == 0, result.stderr
    for call in gate.calls():
        assert call[call.index("--format") + 1] == "cyclonedx"
    written = sorted(p.name for p in (gate.reports / "sbom").iterdir())
    assert written == ["messages-api.cdx.json", "messages-web.cdx.json"]
    assert json.loads((gate.reports / "sbom/messages-api.cdx.json").read_text())["bomFormat"] == "CycloneDX"
