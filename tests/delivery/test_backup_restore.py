"""scripts/backup and scripts/restore outside Docker, against a real MariaDB: a database full
of texts that are easy to damage comes back byte for byte, old backups are pruned, and
every file or database restore must not touch is refused with a clear reason."""

from __future__ import annotations

import gzip
import itertools
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from support import ROOT, Run, eventually, free_port, post_message, run, serving, stop_pid

# 4-byte emoji, CJK, combining marks, right-to-left text, quotes and backslashes, the control
# characters a message may hold, invisible format characters and markup.
HOSTILE_TEXTS = [
    "emoji 👩🏽‍💻🎉 and flags 🇪🇺", "漢字かなカナ 한국어", "e\u0301 n\u0303 Å vs Å", "مرحبا بالعالم \u202eevil",
    "quotes ' \" ` and back\\slashes \\n \\\\", "tab\tnew\nline\r\nend", "zero\u200bwidth\ufeffbom",
    "<img src=x onerror=alert(1)>", "'); DROP TABLE messages; --", "Ω≈ç√∫ ¡™£¢∞§¶•ªº–≠",
]
STALE_BACKUPS = ["20200101T000000Z", "20200102T000000Z", "20200103T000000Z"]
KEEP = 2


@pytest.fixture(scope="module")
def source(api_bin, mysql_server, new_database, run_dir) -> str:
    """A database the API migrated and wrote the hostile texts into (idempotency keys fill
    its binary columns)."""
    database = new_database("backup")
    port = free_port()
    env = {**os.environ, "DATABASE_URL": mysql_server.url(database), "HOST": "127.0.0.1", "PORT": str(port),
           "TOKEN_SEALING_KEY": "the delivery tests' token sealing secret, 32+ bytes"}
    with open(run_dir / "backup-api.log", "w") as log:
        api = subprocess.Popen([api_bin, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: serving(api, url + "/health"), 60, "the API to turn healthy")
        for text in HOSTILE_TEXTS:
            post_message(url, text, idempotency_key=str(uuid.uuid4()))
    finally:
        stop_pid(api.pid, 10)
        api.wait()
    return database


@pytest.fixture(scope="module")
def script(mysql_server, run_dir):
    """Runs scripts/NAME ARGS connected to DATABASE, with EXTRA variables."""
    runs = itertools.count(1)

    def run_script(name: str, *args: str, database: str, **extra: str) -> Run:
        env = {**os.environ, **mysql_server.env(database), "BACKUP_DIR": str(run_dir / "backups"), **extra}
        return run([ROOT / "scripts" / name, *args], env=env, log=run_dir / f"{name}-{next(runs)}.out")

    return run_script


@pytest.fixture(scope="module")
def backup(source, script, run_dir) -> tuple[Run, Path]:
    """scripts/backup with BACKUP_KEEP=2 beside three older backups; its run and its file."""
    backups = run_dir / "backups"
    backups.mkdir()
    stale = {backups / f"{source}-{stamp}.sql.gz" for stamp in STALE_BACKUPS}
    for path in stale:
        path.write_bytes(gzip.compress(b"stale\n"))
    made = script("backup", database=source, BACKUP_KEEP=str(KEEP))
    new = set(backups.glob(f"{source}-*.sql.gz")) - stale
    return made, (new.pop() if len(new) == 1 else backups / "missing.sql.gz")


def test_backup_writes_a_dump_and_keeps_only_the_newest_backup_keep(backup, source):
    made, file = backup
    assert made.returncode == 0, made
    assert sorted(path.name for path in file.parent.iterdir()) == [f"{source}-{STALE_BACKUPS[-1]}.sql.gz", file.name]
    assert gzip.decompress(file.read_bytes()).rstrip().splitlines()[-1].startswith(b"-- Dump completed")


def test_backup_explains_an_unreachable_database(script, source):
    made = script("backup", database=source, MYSQL_PORT="1")
    assert made.returncode != 0, made
    assert "cannot connect to MySQL" in made.output, made


def test_restore_refuses_a_corrupt_file(backup, script, new_database, mysql, run_dir):
    cut = run_dir / "corrupt.sql.gz"
    cut.write_bytes(backup[1].read_bytes()[:200])
    target = new_database("corrupt", create=False)
    restore = script("restore", str(cut), database=target)
    assert restore.returncode != 0, restore
    assert "is corrupt" in restore.output, restore
    assert not mysql.exists(target)


def test_restore_refuses_a_dump_that_stops_early(backup, script, new_database, mysql, run_dir):
    lines = gzip.decompress(backup[1].read_bytes()).splitlines(keepends=True)
    short = run_dir / "short.sql.gz"
    short.write_bytes(gzip.compress(b"".join(lines[:-3])))
    target = new_database("short", create=False)
    restore = script("restore", str(short), database=target)
    assert restore.returncode != 0, restore
    assert "is incomplete" in restore.output, restore
    assert not mysql.exists(target)


def test_restore_into_the_dropped_database_gives_back_every_table_and_row_byte_for_byte(backup, source, mysql,
                                                                                          script):
    before = mysql.snapshot(source)
    assert len(mysql.tables(source)) >= 3
    missing = [text for text in HOSTILE_TEXTS if text.encode() not in before]
    assert not missing, f"not in the database as written: {missing}"
    mysql.query(f"DROP DATABASE `{source}`")
    restore = script("restore", str(backup[1]), database=source)
    assert restore.returncode == 0, restore
    assert mysql.snapshot(source) == before


def test_restore_refuses_a_database_that_holds_tables(backup, source, mysql, script):
    before = mysql.snapshot(source)
    restore = script("restore", str(backup[1]), database=source)
    assert restore.returncode != 0, restore
    assert "already holds" in restore.output, restore
    assert mysql.snapshot(source) == before
