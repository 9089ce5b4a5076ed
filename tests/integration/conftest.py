"""What the integration tests share: their marker, and a plain NATS connection to the session's server."""

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS

from regimes.servers import ManagedServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
async def nc(nats_server: ManagedServer) -> AsyncIterator[NATS]:
    """A connection of the test's own to the session's nats-server, closed after it."""
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()
