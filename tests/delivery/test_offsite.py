"""Backups off the host, and recovery to a second: scripts/backup, scripts/archive-binlogs and
scripts/restore on a machine deployed with the process driver, against a real MariaDB that
writes binary logs, a real S3 implementation running locally (moto's server) reached with
the real AWS CLI, and a real Pushgateway.

Each backup is uploaded and verified, listed and fetched back byte for byte, and restores from
S3; an upload S3 refuses fails the backup and is pushed as a failure beside the last success's
time (what BackupOffsiteFailed and BackupOffsiteTooOld watch); restore --to brings back exactly
the rows written before the instant and refuses an instant the archive does not reach yet; and
the archiver's recovery point is measured."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from s3 import AWS_ENV, BUCKET, Service, get, local_s3
from support import ProcessHost, eventually, free_port, post_message

ARCHIVE_INTERVAL = 10


@pytest.fixture(scope="module")
def s3(run_dir):
    with local_s3(run_dir) as storage:
        yield storage


@pytest.fixture(scope="module")
def pushgateway(run_dir) -> str:
    port = free_port()
    server = Service(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
                     run_dir / "pushgateway.log")
    try:
        url = f"http://127.0.0.1:{port}"
        eventually(lambda: server.alive() and get(url + "/-/ready"), 30, "the Pushgateway to answer")
        yield url
    finally:
        server.stop()


def gauges(pushgateway: str, job: str) -> dict[str, float]:
    """The gauges the Pushgateway serves for a job's group."""
    found = {}
    for line in get(pushgateway + "/metrics").decode().splitlines():
        match = re.fullmatch(r'(\w+)\{([^}]*)\} (\S+)', line)
        if match and f'job="{job}"' in match.group(2):
            found[match.group(1)] = float(match.group(3))
    return found


@pytest.fixture(scope="module")
def database(new_database, mysql) -> str:
    if mysql.query("SELECT @@log_bin").strip() != b"1":
        # A server of the developer's own may lack them; the one a run starts never does.
        if os.environ.get("TEST_MYSQL_THROWAWAY") or not os.environ.get("TEST_MYSQL_URL"):
            pytest.fail("the run's own MariaDB writes no binary logs (--log-bin)")
        pytest.skip("the server at TEST_MYSQL_URL writes no binary logs (--log-bin)")
    return new_database("offsite")


@pytest.fixture(scope="module")
def host(run_dir, api_bin, mysql_server, database, s3, pushgateway):
    """v1 deployed with the process driver; its backups go to the local S3 under a prefix of
    its own, its metrics to the Pushgateway."""
    machine = ProcessHost(run_dir / "offsite-host", api_bin, mysql_server.env(database), releases={"v1": None})
    machine.prefix = f"host-{uuid.uuid4().hex[:8]}"
    machine.env.update(AWS_ENV, BACKUP_DIR=str(machine.dir / "backups"),
                       BACKUP_S3_URI=f"s3://{BUCKET}/{machine.prefix}", BACKUP_S3_ENDPOINT_URL=s3.endpoint,
                       BACKUP_PUSHGATEWAY_URL=pushgateway)
    try:
        deploy = machine.script("deploy", "v1")
        assert deploy.returncode == 0, deploy
        yield machine
    finally:
        machine.stop()


def messages(host) -> set[str]:
    with urllib.request.urlopen(host.url + "/api/messages?limit=100", timeout=10) as answer:
        return {m["message"] for m in json.load(answer)["items"]}


def written_file(run) -> Path:
    return Path(re.search(r"^wrote (\S+) ", run.output, re.MULTILINE).group(1))


@pytest.fixture(scope="module")
def uploaded(host, pushgateway):
    """One backup with the upload, and the messages it holds."""
    post_message(host.url, "in the uploaded backup")
    before = time.time()
    made = host.script("backup")
    assert made.returncode == 0, made
    return made, written_file(made), messages(host), before


def test_backup_uploads_a_copy_that_s3_holds_byte_for_byte(uploaded, host, s3, pushgateway, run_dir):
    made, file, _, before = uploaded
    key = f"{host.prefix}/dumps/{file.name}"
    assert f"verified s3://{BUCKET}/{key}" in made.output, made
    assert s3.keys(f"{host.prefix}/dumps/") == [key]
    assert s3.fetch(key, run_dir / "fetched.sql.gz") == file.read_bytes()
    head = s3.head(key)
    assert head["ContentLength"] == file.stat().st_size
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(file.read_bytes()).digest()).decode()
    pushed = gauges(pushgateway, "messages_backup_offsite")
    assert pushed["messages_backup_offsite_failed"] == 0
    assert before <= pushed["messages_backup_offsite_last_success_timestamp_seconds"] <= time.time()
    assert pushed["messages_backup_offsite_size_bytes"] == file.stat().st_size


def test_restore_takes_a_dump_from_s3(uploaded, host):
    _, file, at_backup, _ = uploaded
    post_message(host.url, "written after the uploaded backup")

    key = f"{host.prefix}/dumps/{file.name}"
    restore = host.script("restore", f"s3://{BUCKET}/{key}")

    assert restore.returncode == 0, restore
    assert f"verified s3://{BUCKET}/{key}: {file.stat().st_size} bytes" in restore.output, restore
    assert messages(host) == at_backup
    assert not list((host.dir / "backups").glob(".restore.*")), "the download is removed"


def test_a_refused_upload_fails_the_backup_and_is_reported(uploaded, host, pushgateway):
    last_success = gauges(pushgateway, "messages_backup_offsite")["messages_backup_offsite_last_success_timestamp_seconds"]

    made = host.script("backup", BACKUP_S3_URI="s3://no-such-bucket-here/messages")

    assert made.returncode == 1, made
    assert "NoSuchBucket" in made.output, made
    assert "this backup exists only on this host" in made.output, made
    assert written_file(made).exists(), "the local backup is kept"
    pushed = gauges(pushgateway, "messages_backup_offsite")
    assert pushed["messages_backup_offsite_failed"] == 1
    # What BackupOffsiteTooOld measures from stays: the time of the last verified upload.
    assert pushed["messages_backup_offsite_last_success_timestamp_seconds"] == last_success


def at_next_second(seconds: float) -> float:
    """Sleeps until `seconds` (epoch) has passed."""
    time.sleep(max(0.0, seconds - time.time()))
    return time.time()


@pytest.fixture(scope="module")
def point_in_time(host, mysql, database):
    """Rows A, a backup, rows B, the instant T (a whole second after B's second: binary logs
    count in seconds), rows C a second after T, one archive pass. The tables as they were
    at T, and T."""
    for text in ("row A1", "row A2"):
        post_message(host.url, text)
    made = host.script("backup")
    assert made.returncode == 0, made
    for text in ("row B1", "row B2"):
        post_message(host.url, text)
    instant = int(time.time()) + 2
    at_t = mysql.hex_snapshot(database)
    at_next_second(instant + 1)
    for text in ("row C1", "row C2"):
        post_message(host.url, text)
    archived = host.script("archive-binlogs")
    assert archived.returncode == 0, archived
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(instant)), at_t


def test_restore_to_an_instant_brings_back_exactly_the_rows_written_before_it(point_in_time, host, mysql, database):
    instant, at_t = point_in_time
    assert {"row A1", "row B1", "row C1"} <= messages(host)

    restore = host.script("restore", "--to", instant)

    assert restore.returncode == 0, restore
    print(re.search(r"Restored .*", restore.output).group(0), f"({restore.seconds:.1f}s measured)")
    assert mysql.hex_snapshot(database) == at_t
    shown = messages(host)
    assert {"row A1", "row A2", "row B1", "row B2"} <= shown
    assert not {"row C1", "row C2"} & shown
    host.assert_serves("v1")


def test_restore_to_an_instant_the_archive_does_not_reach_is_refused(point_in_time, host, mysql, database):
    post_message(host.url, "not archived yet")
    instant = at_next_second(int(time.time()) + 1)
    live = mysql.hex_snapshot(database)

    restore = host.script("restore", "--to", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(instant))))

    assert restore.returncode == 1, restore
    assert "the archived binary logs reach only" in restore.output, restore
    assert "nothing was changed" in restore.output, restore
    assert mysql.hex_snapshot(database) == live


@pytest.mark.parametrize("instant, message", [
    ("2026-12-04 10:15", "--to takes a UTC instant like 2026-12-04T10:15:00Z"),
    ("2026-12-04T10:15:00+01:00", "--to takes a UTC instant like 2026-12-04T10:15:00Z"),
    ("2026-02-30T10:15:00Z", "--to takes a UTC instant like 2026-12-04T10:15:00Z"),
    ("2999-01-01T00:00:00Z", "is in the future"),
])
def test_restore_refuses_an_instant_it_cannot_read_or_reach(instant, message, host, mysql, database):
    live = mysql.hex_snapshot(database)
    restore = host.script("restore", "--to", instant)
    assert (restore.returncode, message in restore.output) == (1, True), restore
    assert mysql.hex_snapshot(database) == live


def test_restore_to_an_instant_needs_the_archive_in_s3(host, mysql, database):
    live = mysql.hex_snapshot(database)
    restore = host.script("restore", "--to", "2026-12-04T10:15:00Z", BACKUP_S3_URI="")
    assert restore.returncode == 1, restore
    assert "set BACKUP_S3_URI" in restore.output and "nothing was changed" in restore.output, restore
    assert mysql.hex_snapshot(database) == live


def test_the_archiver_has_each_write_off_the_host_within_one_interval_and_a_pass(host, mysql, s3, pushgateway):
    """The worst case: a write just after a pass waits for the next one. Measured from the
    commit to the moment the log holding it is listed in S3."""
    archiver = Service([str(Path(__file__).resolve().parents[2] / "scripts/archive-binlogs"),
                        "--every", str(ARCHIVE_INTERVAL)], host.dir / "archiver.out", env=host.env)
    try:
        def last_pass() -> float:
            archiver.alive()
            return gauges(pushgateway, "messages_binlog_archive").get(
                "messages_binlog_archive_last_success_timestamp_seconds", 0)

        first = eventually(lambda: last_pass() > time.time() - 5 and last_pass(), 60, "a first archive pass")
        eventually(lambda: last_pass() > first, ARCHIVE_INTERVAL + 30, "a second archive pass")
        written = time.time()
        post_message(host.url, "measured")
        log = mysql.query("SHOW MASTER STATUS").split(b"\t")[0].decode()
        eventually(lambda: f"{host.prefix}/binlogs/{log}" in s3.keys(f"{host.prefix}/binlogs/"),
                   ARCHIVE_INTERVAL + 60, f"{log} in S3")
        lag = time.time() - written
    finally:
        archiver.stop()
    print(f"recovery point: the write was in S3 {lag:.1f}s after its commit (archive-binlogs --every {ARCHIVE_INTERVAL})")
    # One interval, plus one pass (a handful of AWS CLI calls, slow on a loaded machine).
    assert lag <= ARCHIVE_INTERVAL + 30


def test_the_archiver_refuses_logs_of_a_server_that_started_again(host, mysql, s3, pushgateway):
    """A new server (or RESET MASTER) numbers its logs from 1 again. The archive must not mix
    the two servers' logs under one name, nor call the pass a success. Last in this file: it
    resets the binary logs of the run's own server."""
    if os.environ.get("TEST_MYSQL_URL") and not os.environ.get("TEST_MYSQL_THROWAWAY"):
        pytest.skip("resets the server's binary logs: runs only on a server the run starts")
    prefix = f"{host.prefix}/binlogs/"
    first = host.script("archive-binlogs")
    assert first.returncode == 0, first
    versions_before = s3.aws("s3api", "list-object-versions", "--bucket", BUCKET, "--prefix", prefix)
    success_before = gauges(pushgateway, "messages_binlog_archive")[
        "messages_binlog_archive_last_success_timestamp_seconds"]

    mysql.query("RESET MASTER")
    post_message(host.url, "written after the logs started again")
    again = host.script("archive-binlogs")

    assert again.returncode == 1, again
    assert re.search(r"S3 already holds a different \S+\.000001 \(\d+ bytes there, \d+ bytes here\)",
                     again.output), again
    assert "Nothing was uploaded" in again.output, again
    assert s3.aws("s3api", "list-object-versions", "--bucket", BUCKET, "--prefix", prefix) == versions_before
    assert gauges(pushgateway, "messages_binlog_archive")[
        "messages_binlog_archive_last_success_timestamp_seconds"] == success_before
