"""Every stage of the test command installs what it calls by name (how it is read, in
installs.py): each Makefile target and each script they run, alone on a fresh Debian 12
machine. scripts/check-installs runs this file before the long stages of `make test`;
scripts/fresh-root runs the stages themselves in a fresh Debian root."""

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from installs import Machine, Project

REPO = Path(__file__).resolve().parents[2]

# Commands that a suite puts first on PATH as stand-ins of its own, for the scripts named.
STAND_INS = {
    # tests/delivery runs scripts/remote with an ssh that runs the command on this machine.
    "ssh": ("scripts/remote:",),
}

STAGES = Project(REPO).stages()


@pytest.fixture(scope="module")
def machine() -> Machine:
    return Machine(STAGES)


@pytest.mark.parametrize("stage", STAGES, ids=[stage.name for stage in STAGES])
def test_stage_installs_every_command_it_calls(stage, machine):
    problems, notes = machine.check(stage, STAND_INS)
    for note in notes:
        print(f"note: {note}")
    assert not problems, "\n".join(problems)


def test_the_stages_and_what_they_call_are_found():
    """The check reads what it checks: the test command's stages, each with its calls."""
    found = {stage.name: stage for stage in STAGES}
    for name in ("make test", "make lint", "make test-monitoring", "scripts/test", "scripts/lint-delivery",
                 "scripts/test-k8s", "scripts/test-web", "scripts/fuzz", "scripts/test-containers"):
        assert name in found, f"{name} is not among the stages: {sorted(found)}"
    commands = {name: {use.command for use in stage.uses} for name, stage in found.items()}
    assert {"jq", "docker-compose"} <= commands["scripts/lint-delivery"]
    assert "kubectl" in commands["scripts/scan-config"]
    # From tests/k8s (Python) and from scripts/deploy-k8s, which tests/k8s runs.
    assert {"kubectl"} <= commands["scripts/test-k8s"]
    assert "scripts/test-k8s:" in " ".join(u.where for u in found["scripts/test-k8s"].uses if u.command == "kubectl")
    assert "tests/k8s/" in " ".join(u.where for u in found["scripts/test-k8s"].uses if u.command == "kubectl")
    # From tests/monitoring's Python, and the e2e suite's child processes.
    assert {"promtool", "mariadb-install-db"} <= commands["scripts/test-monitoring"]
    assert {"node", "npm", "bash"} <= commands["scripts/test-web"]
    # From the hooks of .pre-commit-config.yaml, which scripts/lint runs.
    assert {"pkg-config", "libmariadb-dev"} <= set(found["scripts/lint"].needs_packages)
    assert {"shellcheck", "cargo", "hadolint", "check-yaml", "trivy"} <= commands["scripts/lint"]


@pytest.mark.parametrize("library", ["common.sh", "pipeline.sh"])
def test_each_pinned_tool_puts_the_commands_it_provides_first_on_path(library):
    """The "Provides:" of scripts/lib's functions, which the check trusts, hold."""
    parsed = Project(REPO).shell(REPO / "scripts/lib" / library)
    assert parsed.provides, f"no function of scripts/lib/{library} says what it provides"
    for function, commands in parsed.provides.items():
        script = (f"source scripts/lib/common.sh; source scripts/lib/{library}; {function} >&2; "
                  f"for c in {' '.join(commands)}; do command -v $c; done")
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        found = result.stdout.split()
        assert len(found) == len(commands), (function, found)
        for path in found:
            assert path.startswith(str(REPO / "target/tools/path/")), f"{function}: {path}"


# The check can fail: a small project whose stage calls what it does not install.

def small_project(tmp_path: Path, script: str, suite: str | None = None) -> Project:
    (tmp_path / "scripts/lib").mkdir(parents=True)
    shutil.copy(REPO / "scripts/lib/common.sh", tmp_path / "scripts/lib/common.sh")
    (tmp_path / "Makefile").write_text("test-small:\n\tscripts/small\n")
    (tmp_path / "scripts/small").write_text(textwrap.dedent(script))
    if suite is not None:
        (tmp_path / "tests/small").mkdir(parents=True)
        (tmp_path / "tests/small/test_small.py").write_text(textwrap.dedent(suite))
    return Project(tmp_path)


def findings(project: Project) -> tuple[list, list]:
    stages = {stage.name: stage for stage in project.stages()}
    return Machine(list(stages.values())).check(stages["scripts/small"], STAND_INS)


def problems_of(project: Project) -> list:
    return findings(project)[0]


# shfmt: on every machine that runs this file (scripts/check-installs installs it), and in
# no fresh machine's base system.
def test_a_command_that_no_install_step_provides_fails_the_check(tmp_path):
    missing = small_project(tmp_path / "missing", """\
        #!/usr/bin/env bash
        source scripts/lib/common.sh
        ensure_packages python3
        shfmt --version
        cargo build
    """)
    problems = problems_of(missing)
    assert any("scripts/small:4: scripts/small calls shfmt, which comes from the package shfmt" in p
               for p in problems), problems
    assert any("needs the package libmariadb-dev" in p for p in problems), problems

    installed = small_project(tmp_path / "installed", """\
        #!/usr/bin/env bash
        source scripts/lib/common.sh
        packages=(python3)
        packages+=(shfmt)
        ensure_packages "${BUILD_PACKAGES[@]}" "${packages[@]}"
        shfmt --version
        cargo build
    """)
    assert problems_of(installed) == []


def test_a_command_that_a_suite_spawns_counts_for_the_stage_that_runs_it(tmp_path):
    suite = """\
        import subprocess

        def test_it():
            subprocess.run(["shfmt", "--version"], check=True)
    """
    project = small_project(tmp_path, """\
        #!/usr/bin/env bash
        source scripts/lib/common.sh
        bin="$(pip_tool pytest==8.3.5)"
        "$bin/pytest" tests/small
    """, suite)
    problems = problems_of(project)
    assert any(p.startswith("tests/small/test_small.py:4: scripts/small calls shfmt") for p in problems), problems


def test_kubectl_counts_as_installed_only_through_the_pinned_tool(tmp_path):
    """Without the pinned tool, a kubectl of this machine is a problem (or, where this
    machine has none, a note that its package is unknown)."""
    script = """\
        #!/usr/bin/env bash
        source scripts/lib/common.sh
        {install}
        kubectl kustomize k8s
    """
    problems, notes = findings(small_project(tmp_path / "a", script.format(install="")))
    assert [f for f in problems + notes if " kubectl" in f]
    assert findings(small_project(tmp_path / "b", script.format(install="use_pinned_kubectl"))) == ([], [])
