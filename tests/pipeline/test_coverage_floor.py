"""The coverage floor of Jenkins's Coverage stage: scripts/coverage --check applies
COVERAGE_FLOOR (scripts/lib/pipeline.sh) to a Cobertura report, as the stage does after
cargo-tarpaulin writes one."""

import re

import pytest

from conftest import REPO, run

FLOOR = float(re.search(r"^COVERAGE_FLOOR=([\d.]+)$", (REPO / "scripts/lib/pipeline.sh").read_text(), re.M).group(1))


def report(tmp_path, covered: int, valid: int):
    path = tmp_path / "cobertura.xml"
    path.write_text(f'<?xml version="1.0"?>\n<coverage lines-covered="{covered}" lines-valid="{valid}" '
                    f'line-rate="{covered / valid}" version="tarpaulin"><packages/></coverage>\n')
    return path


def check(path):
    return run(str(REPO / "scripts/coverage"), "--check", str(path), check=False)


@pytest.mark.parametrize("document", ["README.md", "docs/deployment.md"])
def test_the_floor_is_what_the_docs_state(document):
    assert f"floor of **{FLOOR:g}%**" in (REPO / document).read_text()


@pytest.mark.parametrize("covered", [1000, 900, int(FLOOR * 10)])
def test_coverage_at_or_above_the_floor_passes(tmp_path, covered):
    result = check(report(tmp_path, covered, 1000))
    assert result.returncode == 0, result.stderr
    assert f"Line coverage: {covered / 10:.1f}% ({covered} of 1000 lines)" in result.stdout


def test_coverage_below_the_floor_fails_and_says_so(tmp_path):
    covered = int(FLOOR * 10) - 1
    result = check(report(tmp_path, covered, 1000))
    assert result.returncode == 1
    assert f"below the floor of {FLOOR:g}%" in result.stderr


def test_a_missing_report_is_a_usage_error(tmp_path):
    result = check(tmp_path / "nothing.xml")
    assert result.returncode == 2 and "usage:" in result.stderr
