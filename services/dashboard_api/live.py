"""The live stream's clients, all fed from the API's one subscription to the change notices.

Every /api/stream client used to open a Redis pub/sub connection of its own: about a
hundred idle browser tabs took every connection of redis-py's pool, and every other
endpoint answered 503. Now :class:`~services.dashboard_api.read_model.ChangeFeed`
(subscribed anyway, for the caches) hands each notice to :class:`Fanout`, which puts it
on every client's queue; a client costs a queue and a socket, no Redis connection.
Past ``API_SSE_MAX_CLIENTS`` a new client is refused (503, ``Retry-After``) so the
clients cannot take the memory and sockets the other endpoints need.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

HELLO = ("hello", "{}")  # the page refetches everything on it: also the answer to a lost notice
QUEUE_MAX = 64  # notices a slow client may lag by; beyond, it is told to refetch everything instead
_CLOSE = ("", "")


class Client:
    """One stream client's notices, in order; a client that falls behind gets one HELLO instead of the backlog."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(QUEUE_MAX)

    def put(self, item: tuple[str, str]) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._drain()
            self._queue.put_nowait(HELLO if item is not _CLOSE else _CLOSE)

    def close(self) -> None:
        self._drain()
        self._queue.put_nowait(_CLOSE)

    async def next(self, timeout: float) -> tuple[str, str] | None:
        """The next event (``None`` after ``timeout`` s of quiet); ``("", "")`` once the stream must end."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    def _drain(self) -> None:
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                self._queue.get_nowait()


class Fanout:
    """The connected stream clients, at most ``cap``; what the feed hears goes to each of them."""

    def __init__(self, cap: int, on_count: Callable[[int], None] = lambda _n: None) -> None:
        self.cap = cap
        self._clients: set[Client] = set()
        self._on_count = on_count

    def __len__(self) -> int:
        return len(self._clients)

    def join(self) -> Client | None:
        """A new client, or None when ``cap`` are connected already."""
        if len(self._clients) >= self.cap:
            return None
        client = Client()
        self._clients.add(client)
        self._on_count(len(self._clients))
        return client

    def leave(self, client: Client) -> None:
        self._clients.discard(client)
        self._on_count(len(self._clients))

    def publish(self, data: str) -> None:
        for client in self._clients:
            client.put(("change", data))

    def close_all(self) -> None:
        """The subscription is lost: end every stream, so each browser reconnects and refetches when it is back."""
        for client in self._clients:
            client.close()
