"""Session fixtures of the delivery tests: the run's folder, the API binary, a database.

Run through scripts/test-delivery, which installs what these need.

    API_BIN         the API binary (default target/debug/messages-api; not built here)
    TEST_MYSQL_URL  mysql://user[:password]@host[:port] of a server to create databases on;
                    unset: a throwaway MariaDB is started for the run
    TEST_MYSQL_THROWAWAY  set: that server is the run's own (scripts/test starts it with
                    binary logs), so the point-in-time tests must find --log-bin and may
                    reset its binary logs

Everything started is stopped at the end. The run's folder (API, nginx, wrk and script
logs) is removed after a green run and kept, with its path printed, after a failed one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import harness  # noqa: E402
from support import MariaDB, MySQL, Server  # noqa: E402

api_bin = harness.api_bin
run_dir = harness.run_dir_fixture("messages-delivery.")
pytest_sessionfinish = harness.remove_run_dir_after_green_run
pytest_terminal_summary = harness.report_kept_run_dir("state/*.log, nginx/logs/, *.out")


@pytest.fixture(scope="session")
def mysql_server(run_dir) -> Server:
    if os.environ.get("TEST_MYSQL_URL"):
        yield Server.parse(os.environ["TEST_MYSQL_URL"])
        return
    mariadb = MariaDB(run_dir / "mariadb")
    try:
        yield mariadb.start()
    finally:
        mariadb.stop()


@pytest.fixture(scope="session")
def mysql(mysql_server, run_dir) -> MySQL:
    return MySQL(mysql_server, run_dir / "mysql")


@pytest.fixture(scope="session")
def new_database(mysql):
    """Creates an empty utf8mb4 database for this run (`new_database("deploy")`), or with
    create=False only names one; every one is dropped at the end."""
    created = []

    def create(purpose: str, create: bool = True) -> str:
        name = f"delivery_{os.getpid()}_{purpose}"
        created.append(name)
        if create:
            mysql.query(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return name

    yield create
    for name in created:
        mysql.query(f"DROP DATABASE IF EXISTS `{name}`")
