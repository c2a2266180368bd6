"""Where the real PostgreSQL and Redis servers are, whether Node.js is, and what to do without them.

On a fresh laptop without them, tests that need them skip with a reason. CI exports
``DRAMAVERSE_REQUIRE_SERVICES=1`` so that a missing server fails the run instead of hiding it.
Addresses come from ``TEST_POSTGRES_URL`` and ``TEST_REDIS_URL`` (defaults: the local servers).
"""

from __future__ import annotations

import os
import shutil
import socket
from urllib.parse import urlsplit

import pytest

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def _absent(name: str, url: str) -> None:
    _missing(f"{name} is not reachable at {url} (set TEST_{name.upper()}_URL to point at one)")


def _missing(message: str) -> None:
    if os.environ.get("DRAMAVERSE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message}; DRAMAVERSE_REQUIRE_SERVICES=1 says it must be there")
    pytest.skip(message)


def require_postgres() -> str:
    """The test PostgreSQL URL, or skip (fail in CI) when no server answers there."""
    if not _reachable(POSTGRES_URL, 5432):
        _absent("Postgres", POSTGRES_URL)
    return POSTGRES_URL


def require_redis() -> str:
    """The test Redis URL, or skip (fail in CI) when no server answers there."""
    if not _reachable(REDIS_URL, 6379):
        _absent("Redis", REDIS_URL)
    return REDIS_URL


def require_node() -> str:
    """The ``node`` executable, or skip (fail in CI) when Node.js is not installed."""
    node = shutil.which("node")
    if node is None:
        _missing("Node.js is not installed (`node` is not on PATH)")
    assert node is not None
    return node
