"""The delivery files a host keeps in releases/ (scripts/remote uploads them, the deploy stages
each release's as releases/TAG): after a committed deploy, the live release, the one it
replaced (what scripts/rollback returns to) and the newest DEPLOY_KEEP_RELEASES stay, and
the rest is removed, never an upload still in progress. On the process driver, deploying
through scripts/remote as Jenkins does."""

from __future__ import annotations

import os

import pytest
from support import ProcessHost, Running

TAGS = ("r1", "r2", "r3", "r4")


@pytest.fixture(scope="module")
def host(run_dir, api_bin, mysql_server, new_database):
    machine = ProcessHost(run_dir / "pruning-host", api_bin,
                          {"DATABASE_URL": mysql_server.url(new_database("pruning"))},
                          releases={tag: None for tag in TAGS})
    try:
        yield machine
    finally:
        machine.stop()


def kept(host) -> set[str]:
    """The releases staged on the host (uploads, .upload.*, are not releases yet)."""
    return {entry.name for entry in (host.dir / "host/releases").iterdir() if not entry.name.startswith(".")}


def succeeded(running: Running) -> str:
    finished = running.wait()
    assert finished.returncode == 0, finished
    return finished.output


def test_a_committed_deploy_keeps_the_live_release_its_rollback_target_and_the_newest_few(host):
    for tag in TAGS[:3]:
        output = succeeded(host.remote("deploy", tag))
        assert "removing release" not in output, output
    # The default keeps five: nothing is removed yet.
    assert kept(host) == {"r1", "r2", "r3"}
    assert host.live() == ("r3", "r2")

    output = succeeded(host.remote("deploy", "r4", DEPLOY_KEEP_RELEASES="1"))
    # r4 is live and the newest, r3 what a rollback returns to.
    assert kept(host) == {"r3", "r4"}, output
    assert "removing release r1" in output and "removing release r2" in output, output
    host.assert_consistent()


def test_a_rollback_keeps_both_releases_and_an_upload_in_progress_with_no_others_kept(host):
    """DEPLOY_KEEP_RELEASES=0: only the live release and its rollback target stay. A folder
    that scripts/remote is still uploading into, and which no deploy has staged yet, stays."""
    assert host.live() == ("r4", "r3")
    releases = host.dir / "host/releases"
    stale = releases / "r0"
    stale.mkdir()
    os.utime(stale, (1, 1))
    uploading = releases / ".upload.Xy12ab"
    (uploading / "scripts").mkdir(parents=True)

    output = succeeded(host.remote("rollback", "r4", DEPLOY_KEEP_RELEASES="0"))

    assert host.live() == ("r3", "r4")
    assert kept(host) == {"r3", "r4"}, output
    assert (uploading / "scripts").is_dir()
    assert "removing release r0" in output, output
    host.assert_consistent()


def test_a_deploy_refuses_a_keep_setting_that_is_not_a_count_before_changing_anything(host):
    was = host.live()
    before = kept(host)
    deploy = host.script("deploy", "r1", DEPLOY_KEEP_RELEASES="five")
    assert deploy.returncode == 2, deploy
    assert "DEPLOY_KEEP_RELEASES" in deploy.output, deploy
    assert host.live() == was
    assert kept(host) == before
    host.assert_consistent()
