"""The local stack (docker-compose.yml) as a newcomer starts it, with Debian's
docker-compose 1.29, and everything a browser does through its one published port."""

import json
import os
import subprocess
import time
from datetime import datetime

import checks
import pytest
from engine import ROOT, log
from harness import free_port
from stack import Compose


@pytest.fixture(scope="module")
def dev(engine, images, workdir):
    port = free_port()
    env_file = workdir / "dev.env"
    # .env.example as a newcomer copies it, with the images just built and the port on
    # this machine only.
    env = (ROOT / ".env.example").read_text()
    env += f"\nREGISTRY={images['registry']}\nIMAGE_TAG=v1\nHTTP_PORT=127.0.0.1:{port}\n"
    # The browser suite writes faster than one person, from one address.
    env += "WRITE_RATE_LIMIT=100r/s\nWRITE_BURST=200\n"
    env_file.write_text(env)
    compose = Compose(engine, "messages-dev-test", ROOT, ["docker-compose.yml"], env_file, v2=False)
    compose.down()
    started = time.time()
    log("docker-compose up -d (1.29)")
    compose("up", "-d")
    compose.wait_healthy("db", "api", "web")
    compose.url = f"http://127.0.0.1:{port}"
    compose.started = started
    yield compose
    compose.down()


def first_healthy(engine, compose, since: float) -> dict[str, float]:
    """When each service's container first reported healthy, from the engine's events."""
    out = engine.docker(
        "events", "--since", str(int(since) - 1), "--until", str(int(time.time()) + 1),
        "--filter", "event=health_status: healthy",
        "--filter", f"label=com.docker.compose.project={compose.project}",
        "--format", "{{json .}}",
    ).stdout
    seen = {}
    for line in out.splitlines():
        event = json.loads(line)
        service = event["Actor"]["Attributes"]["com.docker.compose.service"]
        seen.setdefault(service, event["timeNano"] / 1e9)
    return seen


def test_db_api_and_web_turn_healthy_in_that_order(engine, dev):
    seen = first_healthy(engine, dev, dev.started)
    assert set(seen) >= {"db", "api", "web"}, seen
    assert seen["db"] < seen["api"] < seen["web"], seen


def test_the_api_migrates_on_start(dev):
    logs = dev.logs("api")
    assert "migration" in logs.lower(), logs[-2000:]


def test_web_is_published_on_loopback_only(dev):
    # nginx runs in edge's network namespace, which holds the port.
    assert dev.inspect("web")["HostConfig"]["NetworkMode"] == f"container:{dev.container('edge')}"
    bindings = dev.inspect("edge")["HostConfig"]["PortBindings"]["8080/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    assert not dev.inspect("api")["HostConfig"]["PortBindings"]
    assert not dev.inspect("db")["HostConfig"]["PortBindings"]


def test_the_page_is_served(dev):
    checks.page_is_served(dev.url)


def test_create_list_edit_and_delete_through_nginx(dev):
    checks.create_list_edit_and_delete(dev.url)


def test_a_new_message_arrives_on_the_live_stream(dev):
    checks.new_message_arrives_on_the_stream(dev.url)


def test_the_api_docs_are_served(dev):
    checks.api_docs_are_served(dev.url)


def test_metrics_are_refused_through_nginx(dev):
    checks.metrics_are_refused(dev.url)


def test_the_browser_suite_passes_against_the_containerised_nginx(dev):
    """The project's browser tests (Chromium, e2e/) that need nothing but the page's URL."""
    result = subprocess.run(
        ["node", "--test", "--test-concurrency=1", "--test-timeout=120000", "--test-reporter=spec",
         "board.test.js", "live.test.js", "paging.test.js", "bad-input.test.js"],
        cwd=ROOT / "e2e", capture_output=True, text=True, timeout=900,
        env={**os.environ, "E2E_BASE_URL": dev.url, "E2E_API_URL": dev.url,
             "E2E_SCREENSHOT_DIR": str(ROOT / "target/containers/screenshots")},
    )
    print(result.stdout[-6000:], result.stderr[-3000:])
    assert result.returncode == 0, f"browser suite failed at {datetime.now():%T}"
