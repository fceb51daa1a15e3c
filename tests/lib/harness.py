"""What the pytest suites that start processes share: free ports, waiting on evidence, the
API binary, and the run's folder, removed after a green run and kept (its path printed)
after a failed one. Beside it: client.py (HTTP with timing), stream.py (the live stream
read on a thread), load.py (threads of HTTP clients) and traffic.py (users during a
deploy: keep-alive readers, writers with Idempotency-Keys, a resumed live stream).

A suite's conftest.py puts this folder on sys.path and takes the fixtures and hooks:

    api_bin = harness.api_bin
    run_dir = harness.run_dir_fixture("messages-delivery.")
    pytest_sessionfinish = harness.remove_run_dir_after_green_run
    pytest_terminal_summary = harness.report_kept_run_dir("state/*.log, *.out")
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = pytest.StashKey[Path]()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(check, timeout: float, what: str, interval: float = 0.2):
    """Calls `check` until it returns something truthy, which it returns; fails after
    `timeout` seconds. An exception from `check` counts as "not yet" (a service still
    starting refuses connections, a command fails) and the last one is named if time runs
    out; an AssertionError ends the wait at once: a check asserts what waiting cannot change
    (the process it waits for has exited)."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except AssertionError:
            raise
        except Exception as error:  # noqa: BLE001 - named in the failure
            last_error, result = error, None
        if result:
            return result
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")


@pytest.fixture(scope="session")
def api_bin() -> Path:
    """The API binary under test: API_BIN, or the debug build (not built here)."""
    path = Path(os.environ.get("API_BIN", ROOT / "target/debug/messages-api")).resolve()
    if not os.access(path, os.X_OK):
        pytest.fail(f"No API binary at {path}: build it with 'cargo build -p messages-api' or set API_BIN.",
                    pytrace=False)
    return path


def run_dir_fixture(prefix: str):
    """A session fixture `run_dir`: a new temporary folder for the run's logs."""

    @pytest.fixture(scope="session")
    def run_dir(request) -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        request.config.stash[RUN_DIR] = path
        return path

    return run_dir


def remove_run_dir_after_green_run(session, exitstatus):
    path = session.config.stash.get(RUN_DIR, None)
    if path and exitstatus == 0:
        shutil.rmtree(path, ignore_errors=True)


def report_kept_run_dir(what: str):
    """A `pytest_terminal_summary` hook that prints where a failed run's logs are."""

    def pytest_terminal_summary(terminalreporter, exitstatus, config):
        path = config.stash.get(RUN_DIR, None)
        if path and path.exists():
            terminalreporter.write_line(f"Logs of the failed run are kept in {path} ({what})", red=True)

    return pytest_terminal_summary
