"""Which series the stack accepts: the first ``MAX_SERIES`` to appear in the candle stream, and no others.

The registry is KV bucket ``series``: series token -> the OHLCV stream sequence
of its first candle, created by whichever service sees it first. A series is
admitted when fewer than ``MAX_SERIES`` series appeared before it. Every
consumer of candles registers every series it reads, in stream order (those
of other replicas' partitions too), so each knows every earlier series by the
time it decides: vol_regime and hmm_regime, and any replica of either, make
the same decision for the same candle, whatever their timing.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass, field

import nats.js.errors
from nats.js.kv import KeyValue

from shared.domain.subjects import SeriesKey

DEFAULT_MAX_SERIES = 10_000


@dataclass
class Admission:
    kv: KeyValue
    max_series: int
    _first: dict[str, int] = field(default_factory=dict)  # token -> stream seq of its first candle
    _order: list[int] = field(default_factory=list)  # every first seq known, ascending
    _loaded: bool = False

    async def load(self) -> None:
        """Every series registered so far (once per process)."""
        if self._loaded:
            return
        try:
            tokens = await self.kv.keys()
        except nats.js.errors.NoKeysError:
            tokens = []
        for start in range(0, len(tokens), 256):
            chunk = tokens[start : start + 256]
            entries = await asyncio.gather(*(self.kv.get(t) for t in chunk))
            for token, entry in zip(chunk, entries, strict=True):
                self._know(token, int(entry.value or b"0"))
        self._loaded = True

    async def admit(self, key: SeriesKey, seq: int) -> bool:
        """Register ``key`` if new (its first candle is at ``seq``); whether it is within the cap."""
        first = self._first.get(key.token)
        if first is None:
            first = await self._register(key.token, seq)
        return bisect.bisect_left(self._order, first) < self.max_series

    def known(self) -> dict[str, int]:
        return dict(self._first)

    async def _register(self, token: str, seq: int) -> int:
        try:
            await self.kv.create(token, str(seq).encode())
            first = seq
        except nats.js.errors.KeyWrongLastSequenceError:
            first = int((await self.kv.get(token)).value or b"0")  # another service registered it first
        self._know(token, first)
        return first

    def _know(self, token: str, first: int) -> None:
        if token not in self._first:
            self._first[token] = first
            bisect.insort(self._order, first)


def refusal(max_series: int) -> str:
    """The dead-letter reason of a candle for a series beyond the cap."""
    return f"series cap reached: MAX_SERIES={max_series} series are admitted already"
