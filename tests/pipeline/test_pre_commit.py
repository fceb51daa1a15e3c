"""The pre-commit hooks (.pre-commit-config.yaml) on a clean checkout of this commit: they
pass, nothing is fetched (local hooks only), and a commit of a bad file is refused by the
hook installed in git.

clippy and the OpenAPI drift check are skipped in the checkout: each compiles the whole
workspace from its new path (minutes), and `make lint` runs both on this same commit."""

import os
import textwrap

import pytest

from conftest import REPO, run

COMPILING_HOOKS = "clippy,openapi"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A clone of HEAD, with this checkout's pinned tools and a pre-commit home of its own."""
    base = tmp_path_factory.mktemp("pre-commit")
    root = base / "checkout"
    run("git", "clone", "--quiet", "--no-checkout", str(REPO), str(root))
    run("git", "-C", str(root), "checkout", "--quiet", "--detach", run("git", "-C", str(REPO), "rev-parse", "HEAD").stdout.strip())
    tools = REPO / "target/tools"
    env = os.environ | {
        "PIP_TOOL_VENV": str(tools / "venv"),
        "TRIVY_CACHE_DIR": str(tools / "trivy-cache"),
        "PRE_COMMIT_HOME": str(base / "pre-commit-home"),
        "SKIP": COMPILING_HOOKS,
        "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.test",
        "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.test",
    }
    pre_commit = str(tools / "venv/bin/pre-commit")

    def git(*args, check=True):
        return run("git", *args, cwd=root, env=env, check=check)

    def hooks(*args, check=False):
        return run(pre_commit, *args, cwd=root, env=env, check=check)

    return root, git, hooks


def test_every_hook_passes_on_a_clean_checkout(checkout):
    root, git, hooks = checkout
    result = hooks("run", "--all-files", "--color", "never")
    assert result.returncode == 0, result.stdout + result.stderr
    for hook in ("trailing whitespace", "end of file", "YAML syntax", "JSON syntax", "cargo fmt", "shellcheck",
                 "hadolint", "secret scan (Trivy)"):
        assert any(line.startswith(hook) and line.endswith("Passed") for line in result.stdout.splitlines()), \
            f"{hook} did not pass:\n{result.stdout}"
    # No fixer touched a file.
    assert git("status", "--porcelain").stdout == ""


def test_the_installed_hook_refuses_a_commit_of_a_bad_file(checkout):
    root, git, hooks = checkout
    hooks("install", check=True)
    clean = git("rev-parse", "HEAD").stdout
    bad = root / "k8s/overlays/local/patch.yaml"
    bad.write_text(textwrap.dedent("""\
        kind: ConfigMap
        data:
          key: [unclosed
        """))
    git("add", str(bad))
    refused = git("commit", "--quiet", "-m", "a bad file", check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert any(line.startswith("YAML syntax") and line.endswith("Failed") for line in output.splitlines()), output
    assert "patch.yaml" in output
    # Nothing was committed: HEAD is still the clean commit.
    assert git("rev-parse", "HEAD").stdout == clean


def test_the_whitespace_fixers_fail_and_fix_the_file(checkout):
    root, git, hooks = checkout
    text = root / "docs/notes.txt"
    text.write_text("a line with trailing spaces   \nno newline at the end")
    git("add", str(text))
    result = hooks("run", "--files", str(text), "--color", "never")
    assert result.returncode == 1
    assert "trailing whitespace" in result.stdout and "end of file" in result.stdout
    assert text.read_text() == "a line with trailing spaces\nno newline at the end\n"
