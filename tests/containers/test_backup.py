"""Backup and restore inside the production stack, with docs/deployment.md's own commands: the backup
service, a backup by hand, and `scripts/restore FILE` in the host's folder, which refuses a
damaged or too new backup without touching the live tables and restores a good one over a
populated database."""

import gzip
import re

import pytest
from harness import eventually
from stack import http, snapshot

TEXTS = ["emoji 👩🏽‍💻🎉", "漢字かなカナ 한국어", "quotes ' \" ` and back\\slashes", "tab\tnew\nline",
         "<img src=x onerror=alert(1)>"]
AFTER_THE_BACKUP = "written after the backup"


def restore_databases(prod) -> list:
    return prod.sql("SHOW DATABASES LIKE 'messages\\_restore%'", database="mysql")


def backups(prod) -> set:
    return set((prod.path / "backups").glob("messages-*.sql.gz"))


def listed(prod) -> set:
    return {m["message"] for m in http("GET", prod.url + "/api/messages?limit=100").json["items"]}


def test_the_backup_service_writes_a_backup_at_start(prod):
    found = eventually(lambda: sorted(backups(prod)), 30, what="the backup service's first file")
    assert found[0].stat().st_uid == prod.backup_uid


@pytest.fixture(scope="module")
def backed_up(prod):
    """The texts written, a backup by hand as docs/deployment.md runs it, the tables as they were
    then; then one more message, so that what is live differs from the backup."""
    for text in TEXTS:
        assert http("POST", prod.url + "/api/messages", {"message": text}).status == 201
    before = backups(prod)
    prod.compose("run", "--rm", "--entrypoint", "/opt/messages/scripts/backup", "backup")
    (file,) = backups(prod) - before
    tables = snapshot(prod)
    assert http("POST", prod.url + "/api/messages", {"message": AFTER_THE_BACKUP}).status == 201
    return file, tables


def truncated(dump: bytes) -> bytes:
    whole = gzip.compress(dump)
    return whole[: len(whole) // 2]


def corrupt(dump: bytes) -> bytes:
    data = bytearray(gzip.compress(dump))
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    return bytes(data)


def from_a_newer_schema(dump: bytes) -> bytes:
    """The same dump, with a migration the live release does not ship among those
    applied (MariaDB's mysqldump puts each row of an INSERT on a line of its own)."""
    newer, count = re.subn(rb"(INSERT INTO `__diesel_schema_migrations` VALUES.*?);\n",
                           lambda m: m.group(1) + b",('29991231000000','2026-12-31 00:00:00');\n", dump,
                           flags=re.DOTALL)
    assert count == 1
    return gzip.compress(newer)


REFUSED = [
    (truncated, ["is not an intact gzip file", "unexpected end of file"]),
    (corrupt, ["is not an intact gzip file"]),
    (from_a_newer_schema, ["comes from a newer schema than the live release", "29991231000000"]),
]


@pytest.mark.parametrize("damage, messages", REFUSED, ids=[damage.__name__ for damage, _ in REFUSED])
def test_restore_refuses_a_bad_backup_and_the_live_tables_stay_as_they_were(damage, messages, prod, backed_up,
                                                                             workdir):
    bad = workdir / f"{damage.__name__}.sql.gz"
    bad.write_bytes(damage(gzip.decompress(backed_up[0].read_bytes())))
    live = snapshot(prod)
    color = f"api-{prod.state('color')}"
    container = prod.compose.container(color)
    before = backups(prod)

    restore = prod.script("restore", str(bad), check=False)

    output = restore.stdout + restore.stderr
    assert restore.returncode == 1, output
    for message in messages + ["refused: ", "nothing was changed"]:
        assert message in output, output
    assert snapshot(prod) == live
    assert restore_databases(prod) == []
    assert backups(prod) == before, "a refused restore writes no safety dump"
    # Refused before the API was stopped: the same container serves on.
    assert (prod.compose.container(color), prod.compose.state(color)) == (container, "running/healthy")
    assert AFTER_THE_BACKUP in listed(prod)


def test_restore_over_the_populated_database_gives_exactly_the_backup_and_the_app_answers_again(
        prod, backed_up, results):
    file, at_backup = backed_up
    assert snapshot(prod) != at_backup
    before = backups(prod)

    # As docs/deployment.md runs it, from the host's folder.
    restore = prod.script("restore", f"backups/{file.name}")

    rows = sum(len(part) for part in at_backup[1::2])
    took = re.search(r"Restored \S+ into messages in (\d+)s \(the API was stopped for (\d+)s\)", restore.stdout)
    results["restore"] = {"seconds": int(took.group(1)), "api_stopped_seconds": int(took.group(2)), "rows": rows,
                          "backup_bytes": file.stat().st_size}
    assert snapshot(prod) == at_backup
    assert restore_databases(prod) == []
    (safety,) = backups(prod) - before
    assert re.fullmatch(r"messages-\d{8}T\d{6}Z-before-restore\.sql\.gz", safety.name), safety
    assert AFTER_THE_BACKUP.encode() in gzip.decompress(safety.read_bytes())
    color = f"api-{prod.state('color')}"
    assert prod.compose.state(color) == "running/healthy"
    texts = listed(prod)
    assert set(TEXTS) <= texts and AFTER_THE_BACKUP not in texts
