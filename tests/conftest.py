"""Fixtures shared by the whole suite.

- ``valkey``: one real embedded Valkey for the session (no persistence).
- ``valkey_factory``: private Valkey servers for tests that stop or restart theirs.
- ``stream_prefix``: a unique key prefix per test, so tests sharing ``valkey`` never
  see each other's streams, groups or epochs.

Auth is on for every test: :func:`tests.auth.install` (run before collection) makes the
channels and HTTP clients tests create carry real tokens and Envoy's identity; see
:mod:`tests.auth` for acting as another role or as nobody.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator

import pytest

from services.shared.valkey import EmbeddedValkey
from tests import auth


def pytest_configure(config: pytest.Config) -> None:
    auth.install()


@pytest.fixture(autouse=True)
def _test_subject(request: pytest.FixtureRequest) -> None:
    """Each test's automatic tokens name a subject of its own (per-subject rate limits)."""
    auth.set_test_key(hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10])


@pytest.fixture(scope="session")
def valkey() -> Iterator[EmbeddedValkey]:
    """A running Valkey shared by the session. Don't stop it; use ``valkey_factory``."""
    with EmbeddedValkey() as server:
        yield server


@pytest.fixture
def valkey_factory() -> Iterator[Callable[[], EmbeddedValkey]]:
    """Start private Valkey servers; all are stopped and removed after the test."""
    servers: list[EmbeddedValkey] = []

    def start() -> EmbeddedValkey:
        server = EmbeddedValkey().start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def stream_prefix() -> str:
    """A key prefix unique to this test (``t<hex>:``)."""
    return f"t{uuid.uuid4().hex[:10]}:"
