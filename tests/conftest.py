"""Fixtures: an ephemeral nats-server and Redis for the session, and a fresh namespace per test.

The servers run on free ports with their own data directories and are stopped
at the end; the tests never touch a server they did not start. Every test gets
its own namespace, so its subjects, streams, buckets and Redis keys are its own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from regimes.servers import ManagedServer, start_nats, start_redis
from tests.harness import StackFactory, _make_stack

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedServer]:
    server = start_nats(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
async def make_stack(nats_server: ManagedServer, redis_server: ManagedServer) -> AsyncIterator[StackFactory]:
    """Build stacks (each in its own namespace) on the session's servers; all stopped at the end."""
    async for factory in _make_stack(nats_server, redis_server):
        yield factory
