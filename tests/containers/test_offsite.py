"""Backups off the host, inside the production stack: the backup and binlog-archiver services
in the messages-backup image, the database writing binary logs, the backup account that
scripts/deploy keeps, and scripts/restore run in the host's folder taking a dump from S3 or
going back to an instant. S3 is moto's server (a stand-in for AWS S3) on this machine,
reached from the containers through the offsite network, with the access key the host's
secrets/backup_aws_credentials holds (on EC2: empty, the instance role instead)."""

from __future__ import annotations

import base64
import hashlib
import re
import time

import pytest
from harness import eventually
from s3 import BUCKET, CREDENTIALS_FILE, local_s3
from stack import http, snapshot

ARCHIVE_INTERVAL = 10


def messages(prod) -> set[str]:
    return {m["message"] for m in http("GET", prod.url + "/api/messages?limit=100").json["items"]}


def post(prod, text: str) -> None:
    assert http("POST", prod.url + "/api/messages", {"message": text}).status == 201


def test_without_a_bucket_the_archiver_waits_and_stops_at_once(prod):
    assert prod.compose.state("binlog-archiver") == "running/"
    assert "BACKUP_S3_URI is empty" in prod.compose.logs("binlog-archiver")
    prod.compose("stop", "binlog-archiver")
    # 143: it ended on the SIGTERM itself; 137 would be the kill after Docker's 10 s.
    assert prod.compose.inspect("binlog-archiver")["State"]["ExitCode"] == 143
    prod.compose("start", "binlog-archiver")


@pytest.fixture(scope="module")
def s3(engine, prod, workdir):
    """The local S3 on this machine's address on the stack's offsite network (its bridge's
    gateway), which the backup services reach as they would reach S3 on the way out."""
    gateway = engine.docker("network", "inspect", f"{prod.project}_offsite", "-f",
                            "{{range .IPAM.Config}}{{.Gateway}}{{end}}").stdout.strip()
    assert gateway, "the offsite network has no gateway address"
    with local_s3(workdir, gateway) as storage:
        yield storage


@pytest.fixture(scope="module")
def offsite(prod, s3):
    """The stack's backups going to the local S3 under the project's prefix: the settings in
    .env and the access key in secrets/, as an operator gives them, and the two services
    started again on them. Put back as they were at the end."""
    env_file = prod.path / ".env"
    credentials = prod.path / "secrets/backup_aws_credentials"
    env_before = env_file.read_text()
    prefix = prod.project
    env_file.write_text(env_before + f"BACKUP_S3_URI=s3://{BUCKET}/{prefix}\nBACKUP_S3_ENDPOINT_URL={s3.endpoint}\n"
                                     f"BACKUP_S3_REGION=us-east-1\nBINLOG_ARCHIVE_INTERVAL={ARCHIVE_INTERVAL}\n")
    credentials.write_text(CREDENTIALS_FILE)
    try:
        prod.compose("up", "-d", "--no-deps", "backup", "binlog-archiver")
        yield prefix
    finally:
        env_file.write_text(env_before)
        credentials.write_text("")
        prod.compose("up", "-d", "--no-deps", "backup", "binlog-archiver")


def test_the_backup_service_uploads_its_backup_and_s3_holds_it_byte_for_byte(prod, offsite, s3, workdir):
    keys = eventually(lambda: s3.keys(f"{offsite}/dumps/"), 120, what="the backup service's upload")
    (key,) = keys
    local = prod.path / "backups" / key.rsplit("/", 1)[1]
    assert s3.fetch(key, workdir / "fetched.sql.gz") == local.read_bytes()
    assert s3.head(key)["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(local.read_bytes()).digest()).decode()
    # The object is listed once uploaded; the service says so once it has checked it.
    verified = f"verified s3://{BUCKET}/{key}: {local.stat().st_size} bytes"
    eventually(lambda: verified in prod.compose.logs("backup"), 60, what="the backup service's check", interval=1)


def test_a_refused_upload_fails_the_backup_and_keeps_the_local_file(prod, offsite):
    before = set((prod.path / "backups").glob("messages-*.sql.gz"))
    made = prod.compose("run", "--rm", "-e", "BACKUP_S3_URI=s3://no-such-bucket-here/messages",
                        "--entrypoint", "/opt/messages/scripts/backup", "backup", check=False)
    output = made.stdout + made.stderr
    assert made.returncode == 1, output
    assert "NoSuchBucket" in output and "this backup exists only on this host" in output, output
    assert len(set((prod.path / "backups").glob("messages-*.sql.gz")) - before) == 1


def test_the_archiver_has_a_write_in_s3_within_an_interval_and_a_pass(prod, offsite, s3, workdir, results):
    """Measured from the acknowledged write to the moment a log holding its row is in S3 (the
    log being written when it was made, or a later one if a pass closed that one meanwhile)."""
    first = prod.sql("SHOW MASTER STATUS")[0][0]
    text = f"archived at {time.time()}"
    written = time.time()
    post(prod, text)
    fetched: dict[str, bytes] = {}

    def holding_the_row() -> str | None:
        for key in s3.keys(f"{offsite}/binlogs/"):
            name = key.rsplit("/", 1)[1]
            if name >= first and name not in fetched:
                fetched[name] = s3.fetch(key, workdir / name)
        return next((name for name, data in fetched.items() if text.encode() in data), None)

    log = eventually(holding_the_row, ARCHIVE_INTERVAL + 60, what="the write's binary log in S3")
    lag = time.time() - written
    results["binlog_archive_lag_seconds"] = round(lag, 1)
    print(f"recovery point: the write was in S3 {lag:.1f}s after its commit, in {log} "
          f"(BINLOG_ARCHIVE_INTERVAL={ARCHIVE_INTERVAL})")
    assert re.search(r"archived \d+ binary log\(s\)", prod.compose.logs("binlog-archiver"))


def test_restore_takes_a_dump_from_s3(prod, offsite, s3):
    made = prod.compose("run", "--rm", "--entrypoint", "/opt/messages/scripts/backup", "backup")
    file = re.search(r"^wrote /backups/(\S+) ", made.stdout, re.MULTILINE).group(1)
    at_backup = snapshot(prod)
    post(prod, "written after the backup in S3")

    # As docs/deployment.md runs it, from the host's folder: the settings come from .env.
    restore = prod.script("restore", f"s3://{BUCKET}/{offsite}/dumps/{file}")

    assert f"verified s3://{BUCKET}/{offsite}/dumps/{file}" in restore.stdout, restore.stdout
    assert snapshot(prod) == at_backup
    assert "written after the backup in S3" not in messages(prod)
    assert not list((prod.path / "backups").glob(".restore.*")), "the download is removed"


def test_restore_to_an_instant_brings_back_exactly_the_rows_written_before_it(prod, offsite, results):
    """Rows A, a backup, rows B, the instant T (a whole second after B's: binary logs count in
    seconds), rows C after T, one archive pass; then restore --to T."""
    for text in ("row A1", "row A2"):
        post(prod, text)
    prod.compose("run", "--rm", "--entrypoint", "/opt/messages/scripts/backup", "backup")
    for text in ("row B1", "row B2"):
        post(prod, text)
    instant = int(time.time()) + 2
    at_t = snapshot(prod)
    time.sleep(max(0.0, instant + 1 - time.time()))
    for text in ("row C1", "row C2"):
        post(prod, text)
    prod.compose("run", "--rm", "--entrypoint", "/opt/messages/scripts/archive-binlogs", "binlog-archiver")

    restore = prod.script("restore", "--to", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(instant)))

    took = re.search(r"Restored \S+ and the binary logs up to \S+ into messages in (\d+)s "
                     r"\(the API was stopped for (\d+)s\)", restore.stdout)
    results["restore_to"] = {"seconds": int(took.group(1)), "api_stopped_seconds": int(took.group(2))}
    assert snapshot(prod) == at_t
    shown = messages(prod)
    assert {"row A1", "row A2", "row B1", "row B2"} <= shown
    assert not {"row C1", "row C2"} & shown
    assert prod.compose.state(f"api-{prod.state('color')}") == "running/healthy"
