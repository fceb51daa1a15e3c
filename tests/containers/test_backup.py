"""Backup and restore inside the production stack, with the README's own commands."""

from harness import eventually
from stack import http

TEXTS = ["emoji 👩🏽‍💻🎉", "漢字かなカナ 한국어", "quotes ' \" ` and back\\slashes", "tab\tnew\nline",
         "<img src=x onerror=alert(1)>"]


def snapshot(prod) -> list[list[str]]:
    return prod.sql("SELECT id, HEX(message), created_at, updated_at FROM messages ORDER BY id")


def test_the_backup_service_writes_a_backup_at_start(prod):
    backups = eventually(lambda: sorted((prod.path / "backups").glob("messages-*.sql.gz")), 30,
                         what="the backup service's first file")
    assert backups[0].stat().st_uid == prod.backup_uid


def test_restore_into_an_empty_database_brings_every_row_back(prod):
    for text in TEXTS:
        assert http("POST", prod.url + "/api/messages", {"message": text}).status == 201
    before = snapshot(prod)
    assert len(before) >= len(TEXTS)
    prod.compose("run", "--rm", "--entrypoint", "/opt/messages/scripts/backup", "backup")
    newest = sorted((prod.path / "backups").glob("messages-*.sql.gz"))[-1]

    prod.compose("stop", "api-blue", "api-green")
    prod.sql("DROP DATABASE messages", database="mysql")
    prod.compose("run", "--rm", "--entrypoint", "/opt/messages/scripts/restore", "backup",
                 f"/backups/{newest.name}")
    assert snapshot(prod) == before
    prod.script("deploy", prod.state("current"))
    listed = http("GET", prod.url + "/api/messages?limit=100").json["items"]
    assert {m["message"] for m in listed} >= set(TEXTS)
