"""Fixtures of the Kubernetes manifests' tests: each overlay rendered by `kubectl kustomize`,
and the compose files and code they must agree with.

Run through `make test-k8s` (scripts/test-k8s), which installs what these need.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from manifests import OVERLAYS, Rendered, render  # noqa: E402


@pytest.fixture(scope="session", params=OVERLAYS)
def rendered(request) -> Rendered:
    """Each overlay, rendered."""
    return render(request.param)


@pytest.fixture(scope="session")
def production() -> Rendered:
    return render("production")


@pytest.fixture(scope="session")
def local() -> Rendered:
    return render("local")
