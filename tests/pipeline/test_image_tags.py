"""scripts/images and the Jenkinsfile: every build is tagged with its commit, `latest` moves
only from main, and the web image's identity follows its base image. A stand-in docker on
the PATH logs each call and answers `image inspect` with the base image id it is given."""

import json
import os
import re
import stat
import sys

import pytest

from conftest import REPO, run

REGISTRY = "registry.test/owner"
TAG = "0123456789ab"

DOCKER_STAND_IN = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STAND_IN_CALLS"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:2] == ["image", "inspect"]:
    print(os.environ["STAND_IN_BASE_ID"])
"""


@pytest.fixture
def images(tmp_path):
    """Runs scripts/images with the stand-in docker; returns its result and the docker calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(DOCKER_STAND_IN)
    docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
    calls = tmp_path / "docker-calls"

    def invoke(*args, base_id="sha256:" + "a" * 64, **env):
        calls.unlink(missing_ok=True)
        environment = {k: v for k, v in os.environ.items() if k not in ("BRANCH_NAME", "GIT_BRANCH", "IMAGE_TAG")}
        environment.update(PATH=f"{bin_dir}:{os.environ['PATH']}", REGISTRY=REGISTRY, IMAGE_TAG=TAG,
                           STAND_IN_CALLS=str(calls), STAND_IN_BASE_ID=base_id, **env)
        result = run(str(REPO / "scripts/images"), *args, check=False, env=environment, cwd=REPO)
        result.calls = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
        return result

    return invoke


def tags(call: list[str]) -> list[str]:
    return [call[i + 1] for i, arg in enumerate(call) if arg == "--tag"]


def content(call: list[str]) -> str:
    (arg,) = [a for a in call if a.startswith("CONTENT=")]
    return arg.removeprefix("CONTENT=")


def builds(result) -> dict[str, list[str]]:
    return {re.search(r"docker/(\w+)\.Dockerfile", " ".join(c)).group(1): c for c in result.calls if c[0] == "build"}


def test_build_tags_each_image_with_the_commit_only(images):
    result = images("build")
    assert result.returncode == 0, result.stderr
    built = builds(result)
    assert {name: tags(call) for name, call in built.items()} == {
        "api": [f"{REGISTRY}/messages-api:{TAG}"], "web": [f"{REGISTRY}/messages-web:{TAG}"],
        "backup": [f"{REGISTRY}/messages-backup:{TAG}"]}
    assert not any("latest" in " ".join(call) for call in result.calls)


def test_build_pulls_the_base_images_unless_told_to_use_the_engines_own(images):
    pulled = images("build")
    assert "--pull" in builds(pulled)["api"]
    assert "--pull" in builds(pulled)["backup"]
    nginx = re.search(r"^ARG NGINX_IMAGE=(\S+)$", (REPO / "docker/web.Dockerfile").read_text(), re.M).group(1)
    assert ["pull", nginx] in pulled.calls
    assert pulled.calls.index(["pull", nginx]) < pulled.calls.index(builds(pulled)["web"])
    local = images("build", BASE_IMAGES="local")
    assert not any(c[0] == "pull" or "--pull" in c for c in local.calls)


def test_the_web_identity_changes_with_the_base_image_alone(images):
    first = content(builds(images("build", "web", base_id="sha256:" + "a" * 64))["web"])
    again = content(builds(images("build", "web", base_id="sha256:" + "a" * 64))["web"])
    updated = content(builds(images("build", "web", base_id="sha256:" + "b" * 64))["web"])
    assert first == again
    assert updated != first


def test_push_pushes_the_commit_tag_and_never_latest(images):
    result = images("push", BRANCH_NAME="main")
    assert result.returncode == 0, result.stderr
    assert [c for c in result.calls if c[0] == "push"] == [
        ["push", f"{REGISTRY}/messages-api:{TAG}"], ["push", f"{REGISTRY}/messages-web:{TAG}"],
        ["push", f"{REGISTRY}/messages-backup:{TAG}"]]


@pytest.mark.parametrize("branch", [{"BRANCH_NAME": "feature/x"}, {"GIT_BRANCH": "origin/feature/x"},
                                    {"GIT_BRANCH": "origin/mainline"}])
def test_latest_is_refused_for_a_build_of_another_branch(images, branch):
    result = images("latest", **branch)
    assert result.returncode == 1
    assert "latest moves only from main" in result.stderr
    assert result.calls == []


@pytest.mark.parametrize("branch", [{"BRANCH_NAME": "main"}, {"GIT_BRANCH": "origin/main"}])
def test_latest_from_main_points_latest_at_the_commit_tag(images, branch):
    result = images("latest", **branch)
    assert result.returncode == 0, result.stderr
    for name in ("api", "web", "backup"):
        image = f"{REGISTRY}/messages-{name}"
        assert ["tag", f"{image}:{TAG}", f"{image}:latest"] in result.calls
        assert ["push", f"{image}:latest"] in result.calls


def stage_blocks(jenkinsfile: str) -> dict[str, str]:
    """Each stage's name and its text up to the next stage at the same or an outer level
    (nested stages are inside their parent's text)."""
    starts = [(m.start(), m.group(1), len(m.group(0)) - len(m.group(0).lstrip())) for m in
              re.finditer(r"^ *stage\('([^']+)'\)", jenkinsfile, re.M)]
    blocks = {}
    for i, (start, name, indent) in enumerate(starts):
        end = next((s for s, _, ind in starts[i + 1:] if ind <= indent), len(jenkinsfile))
        blocks[name] = jenkinsfile[start:end]
    return blocks


def test_the_jenkinsfile_moves_latest_only_in_the_release_of_main():
    jenkinsfile = (REPO / "Jenkinsfile").read_text()
    blocks = stage_blocks(jenkinsfile)
    assert jenkinsfile.count("scripts/images latest") == 1
    assert "scripts/images latest" in blocks["Release"]
    assert "branch 'main'" in blocks["Release"] and "value: 'origin/main'" in blocks["Release"]
    assert "sh 'scripts/images push'" in blocks["Push"]
