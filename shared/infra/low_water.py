"""The lowest stream sequence any key still keeps in memory only, found without visiting every key.

A consumer whose core buffers events per key (the screener's join) must keep
its position below the oldest event still buffered (``Consumer.low_water``).
With 10,000 series each waiting on its other half in a burst, asking every
key at every commit was two fifths of the screener's busy time. This keeps a
lazy min-heap instead: each entry's recorded sequence is at most that key's
true low water, which only rises while it holds events (they leave from the
front; new ones come with higher sequences), so the top entry, once checked,
is the minimum.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")


class LowWaters(Generic[K]):
    """Call :meth:`touch` before a key's buffer takes an event at ``seq``; calling the object gives the lowest
    low water of all keys (None: nothing waits). ``lookup(key)`` answers one key's (None: its buffer is empty).

    A consume-loop store: :meth:`discard` (the loop's reset) forgets every entry, since the stream is then
    read again from the committed position, at sequences below those recorded.
    """

    def __init__(self, lookup: Callable[[K], int | None]) -> None:
        self._lookup = lookup
        self._heap: list[tuple[int, K]] = []
        self._queued: set[K] = set()

    def touch(self, key: K, seq: int) -> None:
        # A key not queued has an empty buffer, so the event at ``seq`` becomes its oldest: recorded exactly.
        # A queued key's recorded sequence is already at most its true one, which this event cannot lower.
        if key not in self._queued:
            heapq.heappush(self._heap, (seq, key))
            self._queued.add(key)

    def __call__(self) -> int | None:
        heap = self._heap
        while heap:
            recorded, key = heap[0]
            mark = self._lookup(key)
            if mark is None:
                heapq.heappop(heap)
                self._queued.discard(key)
            elif mark > recorded:
                heapq.heapreplace(heap, (mark, key))
            else:
                return mark
        return None

    async def flush(self) -> None:
        return None

    def discard(self) -> None:
        self._heap.clear()
        self._queued.clear()
