"""scripts/backup and scripts/restore on a machine deployed with the process driver, against a
real MariaDB: a backup full of texts that are easy to damage comes back byte for byte over a
populated database, with a safety dump of what was live, and the app answers again; old
backups are pruned; every file restore must not use is refused before anything is touched,
the live tables unchanged; a release that fails on the restored data gets the old data
back; and a restore after a deploy killed half-way first repairs the host, as the next
deploy would."""

from __future__ import annotations

import gzip
import json
import re
import signal
import uuid
import urllib.request
from pathlib import Path

import pytest
from support import HERE, ProcessHost, Run, answers, post_message

# 4-byte emoji, CJK, combining marks, right-to-left text, quotes and backslashes, the control
# characters a message may hold, invisible format characters and markup.
HOSTILE_TEXTS = [
    "emoji 👩🏽‍💻🎉 and flags 🇪🇺", "漢字かなカナ 한국어", "e\u0301 n\u0303 Å vs Å", "مرحبا بالعالم \u202eevil",
    "quotes ' \" ` and back\\slashes \\n \\\\", "tab\tnew\nline\r\nend", "zero\u200bwidth\ufeffbom",
    "<img src=x onerror=alert(1)>", "'); DROP TABLE messages; --", "Ω≈ç√∫ ¡™£¢∞§¶•ªº–≠",
]
AFTER_THE_BACKUP = "written after the backup"
STALE_BACKUPS = ["20200101T000000Z", "20200102T000000Z", "20200103T000000Z"]
KEEP = 2


@pytest.fixture(scope="module")
def database(new_database) -> str:
    return new_database("restore")


@pytest.fixture(scope="module")
def host(run_dir, api_bin, mysql_server, database, mysql):
    """v1 deployed with the process driver (the API and the scripts share the MYSQL_*
    variables), holding the hostile texts; idempotency keys fill its binary columns."""
    machine = ProcessHost(run_dir / "restore-host", api_bin, mysql_server.env(database),
                          releases={"v1": None, "v2": None, "fails-to-migrate": HERE / "releases/fails-to-migrate"})
    machine.env["BACKUP_DIR"] = str(machine.dir / "backups")
    try:
        deploy = machine.script("deploy", "v1")
        assert deploy.returncode == 0, deploy
        for text in HOSTILE_TEXTS:
            post_message(machine.url, text, idempotency_key=str(uuid.uuid4()))
        yield machine
    finally:
        machine.stop()


def backups(host) -> set[Path]:
    return set((host.dir / "backups").iterdir())


@pytest.fixture(scope="module")
def backup(host, database, mysql) -> tuple[Run, Path, list[bytes]]:
    """scripts/backup with BACKUP_KEEP=2 beside three older backups: its run, its file and the
    tables as they were; then one more message, so that what is live differs from it."""
    folder = host.dir / "backups"
    folder.mkdir()
    stale = {folder / f"{database}-{stamp}.sql.gz" for stamp in STALE_BACKUPS}
    for path in stale:
        path.write_bytes(gzip.compress(b"stale\n"))
    made = host.script("backup", BACKUP_KEEP=str(KEEP))
    tables = mysql.hex_snapshot(database)
    post_message(host.url, AFTER_THE_BACKUP)
    new = backups(host) - stale
    return made, (new.pop() if len(new) == 1 else folder / "missing.sql.gz"), tables


def test_backup_writes_a_dump_and_keeps_only_the_newest_backup_keep(backup, database):
    made, file, tables = backup
    assert made.returncode == 0, made
    assert sorted(path.name for path in file.parent.iterdir()) == [f"{database}-{STALE_BACKUPS[-1]}.sql.gz", file.name]
    assert gzip.decompress(file.read_bytes()).rstrip().splitlines()[-1].startswith(b"-- Dump completed")
    missing = [text for text in HOSTILE_TEXTS if text.encode().hex().upper().encode() not in b"".join(tables)]
    assert not missing, f"not in the database as written: {missing}"


def test_backup_explains_an_unreachable_database(host):
    made = host.script("backup", MYSQL_PORT="1")
    assert made.returncode != 0, made
    assert "cannot connect to MySQL" in made.output, made


# The files restore refuses, each made from the good backup, and what it must say.
def truncated(dump: bytes, _: str) -> bytes:
    whole = gzip.compress(dump)
    return whole[: len(whole) // 2]


def corrupt(dump: bytes, _: str) -> bytes:
    data = bytearray(gzip.compress(dump))
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    return bytes(data)


def stops_early(dump: bytes, _: str) -> bytes:
    return gzip.compress(b"".join(dump.splitlines(keepends=True)[:-3]))


def from_a_newer_schema(dump: bytes, _: str) -> bytes:
    """The same dump, with a migration this release does not ship among those
    applied (MariaDB's mysqldump puts each row of an INSERT on a line of its own)."""
    newer, count = re.subn(rb"(INSERT INTO `__diesel_schema_migrations` VALUES.*?);\n",
                           lambda m: m.group(1) + b",('29991231000000','2026-12-31 00:00:00');\n", dump,
                           flags=re.DOTALL)
    assert count == 1
    return gzip.compress(newer)


def fails_to_load(dump: bytes, _: str) -> bytes:
    lines = dump.splitlines(keepends=True)
    return gzip.compress(b"".join(lines[:-5] + [b"INSERT INTO no_such_table VALUES (1);\n"] + lines[-5:]))


def names_its_database(dump: bytes, database: str) -> bytes:
    """What mysqldump --databases writes: the database's own CREATE DATABASE and USE; and
    more than a pipe holds after them, as in a real database's dump."""
    return gzip.compress(f"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `{database}`;\nUSE `{database}`;\n".encode()
                         + b"-- padding\n" * 50_000 + dump)


REFUSED = [
    (truncated, ["is not an intact gzip file", "unexpected end of file"]),
    (corrupt, ["is not an intact gzip file"]),
    (stops_early, ["is incomplete: the dump inside stops before its end"]),
    (from_a_newer_schema, ["comes from a newer schema than the live release v1 runs", "29991231000000",
                           "Deploy a release that ships them"]),
    (fails_to_load, ["does not load into MySQL", "no_such_table"]),
    (names_its_database, ["names databases of its own"]),
]


@pytest.mark.parametrize("damage, messages", REFUSED, ids=[damage.__name__ for damage, _ in REFUSED])
def test_restore_refuses_a_bad_file_and_changes_nothing(damage, messages, host, backup, database, mysql, run_dir):
    bad = run_dir / f"{damage.__name__}.sql.gz"
    bad.write_bytes(damage(gzip.decompress(backup[1].read_bytes()), database))
    live = mysql.hex_snapshot(database)
    color = host.recorded("color")
    pid = host.pid(color)
    before = backups(host)

    restore = host.script("restore", str(bad))

    assert restore.returncode == 1, restore
    for message in messages + ["refused: ", "nothing was changed"]:
        assert message in restore.output, restore
    assert mysql.hex_snapshot(database) == live
    assert not [d for d in mysql.databases() if d.startswith(f"{database}_restore")]
    assert backups(host) == before, "a refused restore writes no safety dump"
    # Refused before the API was stopped: the same process serves on.
    assert host.pid(color) == pid
    assert answers(host.url + "/health")


def test_restore_over_the_populated_database_gives_exactly_the_backup_and_keeps_what_was_live(
        host, backup, database, mysql):
    _, file, at_backup = backup
    live = mysql.hex_snapshot(database)
    assert live != at_backup
    before = backups(host)

    restore = host.script("restore", str(file))

    assert restore.returncode == 0, restore
    print(re.search(r"Restored .*", restore.output).group(0), f"({restore.seconds:.1f}s measured)")
    assert mysql.hex_snapshot(database) == at_backup
    assert not [d for d in mysql.databases() if d.startswith(f"{database}_restore")]
    (safety,) = backups(host) - before
    assert re.fullmatch(rf"{database}-\d{{8}}T\d{{6}}Z-before-restore\.sql\.gz", safety.name), safety
    kept = gzip.decompress(safety.read_bytes())
    assert AFTER_THE_BACKUP.encode() in kept
    assert kept.rstrip().splitlines()[-1].startswith(b"-- Dump completed")
    host.assert_serves("v1")
    with urllib.request.urlopen(host.url + "/api/messages?limit=100", timeout=10) as answer:
        listed = {m["message"] for m in json.load(answer)["items"]}
    assert listed == set(HOSTILE_TEXTS)

    # The safety dump is a backup like any other: restoring it brings back what was live.
    again = host.script("restore", str(safety))
    assert again.returncode == 0, again
    assert mysql.hex_snapshot(database) == live


def test_a_release_that_fails_on_the_restored_data_gets_the_tables_that_were_live_back(host, backup, database, mysql):
    """The restore gets as far as the swap; then the live release's migration job fails, and
    the old tables go back before the API starts again."""
    live = mysql.hex_snapshot(database)
    (host.state / "current").write_text("fails-to-migrate\n")
    try:
        restore = host.script("restore", str(backup[1]))
    finally:
        (host.state / "current").write_text("v1\n")

    assert restore.returncode == 1, restore
    assert "this build's migrations fail" in restore.output, restore
    assert "putting the tables that were live back" in restore.output, restore
    assert "is as it was before the restore" in restore.output, restore
    assert mysql.hex_snapshot(database) == live
    assert not [d for d in mysql.databases() if d.startswith(f"{database}_restore")]
    assert answers(host.url + "/health")


@pytest.mark.parametrize("phase", ["verify", "switch", "committed"])
def test_restore_after_a_deploy_killed_half_way_repairs_the_host_first(phase, host, backup, database, mysql):
    """SIGKILL leaves the journal, both colors running and, from the switch on, nginx perhaps
    on the new one: the restore repairs that as the next deploy would (undone before the
    commit, finished after it) before it stops and starts the colors."""
    was = host.live()[0]
    tag = "v2" if was == "v1" else "v1"
    deploy = host.start("deploy", tag)
    deploy.wait_for_line(f"deploy phase: {phase}")
    deploy.signal_group(signal.SIGKILL)
    deploy.wait()
    assert (host.state / "deploying").exists(), "the killed deploy left no journal to repair"

    restore = host.script("restore", str(backup[1]))

    assert restore.returncode == 0, restore
    host.assert_consistent()
    assert host.live()[0] == (tag if phase == "committed" else was)
    assert mysql.hex_snapshot(database) == backup[2]
    repair = "Repair: finishing the deploy" if phase == "committed" else f"Repair: undoing the deploy of {tag}"
    assert repair in restore.output, restore
