"""The `process` deploy driver (DEPLOY_DRIVER=process), for machines without Docker: each
color is a plain process of a release binary behind the project's real nginx config.
Deploys and rollbacks run under continuous load through nginx; those Jenkins runs go
through scripts/remote, with an ssh stand-in that runs the command here."""

from __future__ import annotations

import os

import pytest
from support import HEALTH_TIMEOUT, Load, ProcessHost, Run, post_message


@pytest.fixture(scope="module")
def host(run_dir, api_bin, mysql_server, new_database):
    machine = ProcessHost(run_dir, api_bin, {"DATABASE_URL": mysql_server.url(new_database("deploy"))})
    try:
        yield machine
    finally:
        machine.stop()


@pytest.fixture
def load(host, request):
    """wrk through nginx for the whole test; stopped at the end if the test did not stop it."""
    started = host.load(request.node.name)
    yield started
    started.kill()


@pytest.fixture(scope="module")
def v1_deployed(host) -> Run:
    """The first deploy, on a machine that never ran the app, and a few messages for the load
    to read."""
    deploy = host.script("deploy", "v1")
    if deploy.returncode == 0:
        for i in range(5):
            post_message(host.url, f"seed message {i}")
    return deploy


@pytest.fixture(scope="module")
def v2_deployed(host, v1_deployed) -> tuple[Run, dict, Load]:
    """v1 -> v2 through scripts/remote under load: the deploy, wrk's summary, the load."""
    assert v1_deployed.returncode == 0, v1_deployed
    load = host.load("remote-deploy-v2-load")
    try:
        deploy = host.remote("deploy", "v2")
        return deploy, load.stop(), load
    finally:
        load.kill()


def test_first_deploy_puts_v1_live_on_an_empty_machine(host, v1_deployed):
    assert v1_deployed.returncode == 0, v1_deployed
    assert host.live() == ("v1", "")
    host.assert_serves("v1")


def test_remote_deploy_of_v2_under_load_fails_no_request_and_both_colors_serve(host, v2_deployed):
    deploy, summary, load = v2_deployed
    served = load.upstreams()
    print(f"wrk: {summary}\nrequests per upstream: {served}")
    assert deploy.returncode == 0, deploy
    assert summary["failed"] == 0, summary
    assert summary["requests"] > 100, summary
    assert set(served) == {f"127.0.0.1:{port}" for port in host.ports.values()}, served
    assert host.live() == ("v2", "v1")
    host.assert_serves("v2")
    assert os.access(host.dir / "host/scripts/deploy", os.X_OK), "scripts/remote shipped no scripts/deploy"


def test_a_release_that_crashes_at_start_is_rejected_without_waiting_for_the_health_timeout(host, v2_deployed):
    color = host.recorded("color")
    pid = host.pid(color)
    deploy = host.script("deploy", "crashes")
    assert deploy.returncode == 1, deploy
    assert "is not running" in deploy.output, deploy
    assert deploy.seconds < HEALTH_TIMEOUT, deploy
    assert host.live() == ("v2", "v1")
    assert (host.recorded("color"), host.pid(color)) == (color, pid)
    host.assert_serves("v2")


def test_rollback_from_a_version_that_is_not_live_changes_nothing(host, v2_deployed):
    color = host.recorded("color")
    pid = host.pid(color)
    rollback = host.script("rollback", "--from", "v1")
    assert rollback.returncode == 0, rollback
    assert "nothing to roll back" in rollback.output, rollback
    assert host.live() == ("v2", "v1")
    assert (host.recorded("color"), host.pid(color)) == (color, pid)
    host.assert_serves("v2")


def test_remote_rollback_returns_to_v1_without_failing_a_request(host, v2_deployed, load):
    rollback = host.remote("rollback", "v2")
    summary = load.stop()
    print(f"wrk: {summary}\nrequests per upstream: {load.upstreams()}")
    assert rollback.returncode == 0, rollback
    assert summary["failed"] == 0, summary
    assert summary["requests"] > 100, summary
    assert host.live() == ("v1", "v2")
    host.assert_serves("v1")
