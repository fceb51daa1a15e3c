"""Adoption of a two-tier-flask-app database: the production stack started on a db volume
that holds the Flask app's table and rows."""

import pytest
from stack import Host, http

# The Flask app's own table, and rows as it wrote them.
FLASK_SCHEMA = "CREATE TABLE messages (id INT AUTO_INCREMENT PRIMARY KEY, message TEXT);"
ROWS = {1: "first post from Flask", 2: "ünïcödé ✓", 5: "after a gap in the ids", 6: None}


@pytest.fixture(scope="module")
def legacy(engine, images, workdir):
    host = Host(engine, workdir / "legacy-host", "messages-legacy-test", images["registry"], "v1")
    host.down()
    host.compose("up", "-d", "--wait", "db")
    values = ", ".join(f"({id_}, {'NULL' if text is None else repr(text)})" for id_, text in ROWS.items())
    host.sql(f"{FLASK_SCHEMA} INSERT INTO messages (id, message) VALUES {values};")
    host.compose("stop", "db")
    try:
        yield host
    finally:
        host.down()


def test_the_migration_job_upgrades_the_flask_table_and_every_row_survives(legacy):
    legacy.script("deploy", "v1")
    listed = http("GET", legacy.url + "/api/messages?limit=100").json["items"]
    assert {m["id"]: m["message"] for m in listed} == {
        id_: text if text is not None else "" for id_, text in ROWS.items()
    }
    created = http("POST", legacy.url + "/api/messages", {"message": "new after the upgrade"})
    assert created.status == 201
    assert created.json["id"] > max(ROWS)
