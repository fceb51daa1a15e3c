"""The `process` deploy driver (DEPLOY_DRIVER=process), for machines without Docker: each
color is a plain process of a release binary behind the project's real nginx config.

Every deploy here runs under the traffic of tests/lib/traffic.py (readers on keep-alive
connections, writers with Idempotency-Keys, a live stream resumed with Last-Event-ID) and
must fail none of it, lose no acknowledged write and miss nothing on the stream. Deploys are
interrupted at each phase by SIGTERM, SIGKILL and SIGHUP (an ssh session dropped); the host
must then be consistent (at once, or after the next deploy's repair) and the next deploy must
succeed. Jenkins' runs go through scripts/remote, with an ssh stand-in that runs the command
here."""

from __future__ import annotations

import os
import signal

import pytest
from support import HEALTH_TIMEOUT, ProcessHost, Run, post_message
from traffic import Report, Traffic

# The bound on the latency users see while nginx switches colors.
SWITCH_P99_MS = 1000


@pytest.fixture(scope="module")
def host(run_dir, api_bin, mysql_server, new_database):
    machine = ProcessHost(run_dir, api_bin, {"DATABASE_URL": mysql_server.url(new_database("deploy"))})
    try:
        yield machine
    finally:
        machine.stop()


@pytest.fixture
def traffic(host):
    """Users through nginx for the whole test; stopped unchecked if the test did not stop it."""
    started = Traffic(host.url)
    yield started
    started.kill()


@pytest.fixture(scope="module")
def v1_deployed(host) -> Run:
    """The first deploy, on a machine that never ran the app, and a few messages to read."""
    deploy = host.script("deploy", "v1")
    if deploy.returncode == 0:
        for i in range(5):
            post_message(host.url, f"seed message {i}")
    return deploy


def other(tag: str) -> str:
    return "v2" if tag == "v1" else "v1"


def assert_users_saw_nothing(report: Report) -> None:
    print(f"traffic: {report}")
    assert report.failed == [], report
    assert report.problems == [], report
    assert report.requests > 100 and report.writes > 3, report


@pytest.fixture(scope="module")
def v2_deployed(host, v1_deployed) -> tuple[Run, Report, dict]:
    """v1 -> v2 through scripts/remote under traffic: the deploy, the traffic's report (p99
    during the switch apart), and which upstreams nginx used meanwhile."""
    assert v1_deployed.returncode == 0, v1_deployed
    users = Traffic(host.url)
    try:
        since = host.lines()
        deploy = host.remote("deploy", "v2")
        finished = deploy.wait()
        window = (deploy.when("Switching nginx"), deploy.when("nginx now sends every request"))
        report = users.stop(window if None not in window else None)
        return finished, report, host.upstreams(since)
    finally:
        users.kill()


def test_first_deploy_puts_v1_live_on_an_empty_machine(host, v1_deployed):
    assert v1_deployed.returncode == 0, v1_deployed
    assert host.live() == ("v1", "")
    host.assert_consistent()


def test_remote_deploy_of_v2_fails_no_user_and_switches_within_the_latency_bound(host, v2_deployed):
    deploy, report, served = v2_deployed
    print(f"requests per upstream: {served}")
    assert deploy.returncode == 0, deploy
    assert_users_saw_nothing(report)
    assert report.window_requests > 10, report
    assert report.window_p99_ms <= SWITCH_P99_MS, report
    assert set(served) == {f"127.0.0.1:{port}" for port in host.ports.values()}, served
    assert host.live() == ("v2", "v1")
    host.assert_consistent()
    assert os.access(host.dir / "host/scripts/deploy", os.X_OK), "scripts/remote shipped no scripts/deploy"


def test_a_release_that_crashes_at_start_is_rejected_without_waiting_for_the_health_timeout(host, v2_deployed, traffic):
    color = host.recorded("color")
    pid = host.pid(color)
    deploy = host.script("deploy", "crashes")
    assert_users_saw_nothing(traffic.stop())
    assert deploy.returncode == 1, deploy
    assert "is not running" in deploy.output, deploy
    assert deploy.seconds < HEALTH_TIMEOUT, deploy
    assert host.live() == ("v2", "v1")
    assert (host.recorded("color"), host.pid(color)) == (color, pid)
    host.assert_consistent()


def test_a_release_that_fails_the_smoke_test_is_rejected_before_it_serves_anyone(host, v2_deployed, traffic):
    live = host.recorded("color")
    idle = "green" if live == "blue" else "blue"
    pid = host.pid(live)
    since = host.lines()
    deploy = host.script("deploy", "rejects-posts")
    served = host.upstreams(since)
    assert_users_saw_nothing(traffic.stop())
    assert deploy.returncode == 1, deploy
    assert "failed the smoke test before the switch" in deploy.output, deploy
    assert set(served) == {f"127.0.0.1:{host.ports[live]}"}, f"nginx sent users to the idle {idle}: {served}"
    assert (host.live(), host.pid(live)) == (("v2", "v1"), pid)
    host.assert_consistent()


def test_rollback_from_a_version_that_is_not_live_changes_nothing(host, v2_deployed):
    color = host.recorded("color")
    pid = host.pid(color)
    rollback = host.script("rollback", "--from", "v1")
    assert rollback.returncode == 0, rollback
    assert "nothing to roll back" in rollback.output, rollback
    assert host.live() == ("v2", "v1")
    assert (host.recorded("color"), host.pid(color)) == (color, pid)
    host.assert_consistent()


def test_a_deploy_of_latest_is_refused_and_changes_nothing(host, v2_deployed):
    color = host.recorded("color")
    pid = host.pid(color)
    deploy = host.script("deploy", "latest")
    assert deploy.returncode == 2, deploy
    assert "'latest' moves" in deploy.output, deploy
    assert host.live() == ("v2", "v1")
    assert (host.recorded("color"), host.pid(color)) == (color, pid)
    host.assert_consistent()


# Where a deploy is interrupted: as each phase starts (the journal's phases), and while it
# stops the old color after the commit.
PHASES = {
    "prepare": "deploy phase: prepare", "migrate": "deploy phase: migrate", "start": "deploy phase: start",
    "verify": "deploy phase: verify", "switch": "deploy phase: switch", "committed": "deploy phase: committed",
    "drain": "Draining and stopping",
}
COMMITTED = ("committed", "drain")


@pytest.mark.parametrize("phase", PHASES)
def test_jenkins_rollback_after_a_deploy_killed_at_any_phase_repairs_and_the_next_deploy_succeeds(
        host, v2_deployed, traffic, phase):
    """SIGKILL leaves no trap to run: scripts/rollback --from TAG, what Jenkins runs after a
    failed deploy, repairs from the journal. Killed before the commit, TAG was never live:
    nothing to roll back. After it, TAG is live and is rolled back."""
    was = host.live()
    tag = other(was[0])
    deploy = host.remote("deploy", tag)
    deploy.wait_for_line(PHASES[phase])
    deploy.signal_group(signal.SIGKILL)
    deploy.wait()
    rollback = host.remote("rollback", tag).wait()
    assert rollback.returncode == 0, rollback
    if phase in COMMITTED:
        assert "Repair: finishing the deploy" in rollback.output, rollback
        assert host.live() == (was[0], tag)
    else:
        assert "nothing to roll back" in rollback.output, rollback
        assert host.live()[0] == was[0]
    host.assert_consistent()
    following = host.script("deploy", tag)
    assert_users_saw_nothing(traffic.stop())
    assert following.returncode == 0, following
    assert host.live()[0] == tag
    host.assert_consistent()


# SIGTERM (Jenkins aborting) and SIGHUP (the ssh session dropped) run the deploy's trap, which
# repairs at once; they take turns over the phases.
@pytest.mark.parametrize(("phase", "signal_name"),
                         [(phase, ("SIGTERM", "SIGHUP")[i % 2]) for i, phase in enumerate(PHASES)])
def test_a_deploy_interrupted_at_any_phase_repairs_on_its_way_out(host, v2_deployed, traffic, phase, signal_name):
    was = host.live()
    tag = other(was[0])
    deploy = host.start("deploy", tag)
    deploy.wait_for_line(PHASES[phase])
    deploy.signal_group(getattr(signal, signal_name))
    interrupted = deploy.wait()
    assert interrupted.returncode != 0, interrupted
    # Undone before the commit, finished after it.
    assert host.live()[0] == (tag if phase in COMMITTED else was[0]), interrupted
    host.assert_consistent()
    following = host.script("deploy", tag)
    assert_users_saw_nothing(traffic.stop())
    assert following.returncode == 0, following
    assert host.live()[0] == tag
    host.assert_consistent()


def test_the_next_deploy_repairs_one_killed_at_the_switch_first(host, v2_deployed, traffic):
    was = host.live()
    tag = other(was[0])
    deploy = host.start("deploy", tag)
    deploy.wait_for_line(PHASES["switch"])
    deploy.signal_group(signal.SIGKILL)
    deploy.wait()
    following = host.script("deploy", tag)
    assert_users_saw_nothing(traffic.stop())
    assert following.returncode == 0, following
    assert f"Repair: undoing the deploy of {tag}" in following.output, following
    assert host.live() == (tag, was[0])
    host.assert_consistent()


def test_remote_rollback_returns_to_the_previous_version_without_failing_a_user(host, v2_deployed, traffic):
    current, previous = host.live()
    rollback = host.remote("rollback", current).wait()
    assert_users_saw_nothing(traffic.stop())
    assert rollback.returncode == 0, rollback
    assert host.live() == (previous, current)
    host.assert_consistent()
