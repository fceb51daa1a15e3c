"""The `process` deploy driver (DEPLOY_DRIVER=process), for machines without Docker: each
color is a plain process of a release binary behind the project's real nginx config.
Deploys and rollbacks run under continuous load through nginx; those Jenkins runs go
through scripts/remote, with an ssh stand-in that runs the command here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import ROOT, Load, Run, answers, free_port, post_message, run, stop_pid

HERE = Path(__file__).resolve().parent
HEALTH_TIMEOUT = 15
SHUTDOWN_GRACE = 5


class ProcessHost:
    """A machine deployed to with the process driver: releases, state and nginx in one folder."""

    def __init__(self, directory: Path, api_bin: Path, database_url: str):
        self.dir = directory
        self.state = directory / "state"
        self.releases = directory / "releases"
        self.ports = {"blue": free_port(), "green": free_port()}
        listen = f"127.0.0.1:{free_port()}"
        self.url = f"http://{listen}"
        self.nginx = directory / "nginx"
        self.access_log = self.nginx / "logs/access.log"
        for tag, binary in (("v1", api_bin), ("v2", api_bin), ("crashes", HERE / "releases/crashes-at-start")):
            (self.releases / tag).mkdir(parents=True)
            (self.releases / tag / "messages-api").symlink_to(binary)
        self.env = {
            **os.environ, "API_BIN": str(api_bin), "DATABASE_URL": database_url, "LOG_FORMAT": "json",
            # Both colors seal with it: a replay reaches either (required with MySQL).
            "TOKEN_SEALING_KEY": "the delivery tests' token sealing secret, 32+ bytes",
            "SHUTDOWN_GRACE_SECS": str(SHUTDOWN_GRACE), "DEPLOY_DRIVER": "process",
            "DEPLOY_STATE_DIR": str(self.state), "DEPLOY_RELEASES_DIR": str(self.releases),
            "DEPLOY_BLUE_PORT": str(self.ports["blue"]), "DEPLOY_GREEN_PORT": str(self.ports["green"]),
            "DEPLOY_NGINX_LISTEN": listen, "DEPLOY_NGINX_PREFIX": str(self.nginx),
            "DEPLOY_HEALTH_TIMEOUT": str(HEALTH_TIMEOUT),
        }

    def script(self, name: str, *args: str) -> Run:
        """scripts/NAME ARGS from the checkout, on this machine."""
        return run([ROOT / "scripts" / name, *args], env=self.env, log=self.dir / ("-".join((name, *args)) + ".out"))

    def remote(self, *args: str) -> Run:
        """scripts/remote ARGS as Jenkins runs it; the EC2 host is the folder host/ here."""
        env = {**self.env, "PATH": f"{HERE / 'bin'}:{os.environ['PATH']}",
               "DEPLOY_HOST": "deploy@ec2.test", "DEPLOY_DIR": str(self.dir / "host")}
        return run([ROOT / "scripts/remote", *args], env=env, log=self.dir / ("-".join(("remote", *args)) + ".out"))

    def recorded(self, name: str) -> str:
        path = self.state / name
        return path.read_text().strip() if path.exists() else ""

    def live(self) -> tuple[str, str]:
        return self.recorded("current"), self.recorded("previous")

    def pid(self, color: str) -> int | None:
        recorded = self.recorded(f"{color}.pid")
        return int(recorded) if recorded and Path(f"/proc/{recorded}").exists() else None

    def load(self, name: str) -> Load:
        return Load(self.url + "/api/messages?limit=10", self.access_log, self.dir, name)

    def assert_serves(self, tag: str) -> None:
        """nginx answers, the live color runs release TAG and the idle color runs nothing."""
        live = self.recorded("color")
        idle = "green" if live == "blue" else "blue"
        pid = self.pid(live)
        assert pid, f"{live} is live but runs nothing"
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert f"{self.releases}/{tag}/messages-api serve" in command
        assert answers(self.url + "/health")
        assert not answers(f"http://127.0.0.1:{self.ports[idle]}/health"), f"the idle {idle} still answers"

    def stop(self) -> None:
        nginx = self.nginx / "nginx.pid"
        if nginx.exists():
            stop_pid(int(nginx.read_text()), 5)
        for color in ("blue", "green"):
            if pid := self.pid(color):
                stop_pid(pid, 2 * SHUTDOWN_GRACE)


@pytest.fixture(scope="module")
def host(run_dir, api_bin, mysql_server, new_database):
    machine = ProcessHost(run_dir, api_bin, mysql_server.url(new_database("deploy")))
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
