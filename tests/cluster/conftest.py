"""Fixtures of the cluster tests: the running cluster, the API binary, API replicas.

Run through scripts/test-cluster, which starts the three Galera nodes and HAProxy
(scripts/lib/galera.sh) and passes them in GALERA_DIR, GALERA_NODE_PORTS_LIST,
HAPROXY_PORT and HAPROXY_SOCKET.

    API_BIN   the API binary (default target/debug/messages-api; not built here)

The run's folder (API logs) is removed after a green run and kept, with its path printed,
after a failed one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import harness  # noqa: E402
from support import NODES, Api, Cluster  # noqa: E402

api_bin = harness.api_bin
run_dir = harness.run_dir_fixture("messages-cluster.")
pytest_sessionfinish = harness.remove_run_dir_after_green_run
pytest_terminal_summary = harness.report_kept_run_dir("*/replica-*.log")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if "GALERA_DIR" not in os.environ:
        pytest.fail("No cluster: run these tests with scripts/test-cluster (make test-cluster).", pytrace=False)
    cluster = Cluster()
    for node in NODES:
        assert cluster.synced(node), f"node{node} is not Synced: {cluster.status(node)}"
    yield cluster
    # The load balancer outlives every failure the tests cause.
    assert not cluster.haproxy_ended(), cluster.haproxy_ended()


@pytest.fixture
def start_api(api_bin, run_dir, request):
    """Starts API replicas (not waiting for them); all are stopped after the test."""
    started: list[Api] = []
    folder = run_dir / request.node.name

    def start(database_url: str, name: str, **env: str) -> Api:
        api = Api(api_bin, database_url, folder, name, **env)
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


@pytest.fixture
def replicas(cluster, start_api) -> tuple[Api, Api]:
    """Two replicas through HAProxy on a fresh database, ready."""
    url = cluster.url(database=cluster.create_database())
    first = start_api(url, "replica-a").wait_ready()
    second = start_api(url, "replica-b").wait_ready()
    return first, second
