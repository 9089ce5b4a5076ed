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
from collections.abc import Mapping
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
        for token, first in (await registered(self.kv)).items():
            self._know(token, first)
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


async def registered(kv: KeyValue, known: Mapping[str, int] | None = None) -> dict[str, int]:
    """Every series in the registry: token -> stream sequence of its first candle (gets 256 at a time).

    An entry never changes once written, so ``known`` (a previous answer) is kept as it is and only
    tokens new since then are read: a reader polling the registry pays one key listing, not one get
    per series.
    """
    try:
        listed = await kv.keys()
    except nats.js.errors.NoKeysError:
        return {}
    before = known or {}
    # Only what the bucket still lists: a purged or recreated bucket must not leave ghosts behind.
    out = {t: before[t] for t in listed if t in before}
    tokens = [t for t in listed if t not in out]
    for start in range(0, len(tokens), 256):
        chunk = tokens[start : start + 256]
        entries = await asyncio.gather(*(kv.get(t) for t in chunk))
        for token, entry in zip(chunk, entries, strict=True):
            out[token] = int(entry.value or b"0")
    return out


def admitted(first: dict[str, int], max_series: int) -> list[tuple[str, int]]:
    """The admitted series, oldest first, by :meth:`Admission.admit`'s rule: fewer than ``max_series`` before it."""
    order = sorted(first.values())
    inside = [(token, seq) for token, seq in first.items() if bisect.bisect_left(order, seq) < max_series]
    return sorted(inside, key=lambda item: (item[1], item[0]))


def refusal(max_series: int) -> str:
    """The dead-letter reason of a candle for a series beyond the cap."""
    return f"series cap reached: MAX_SERIES={max_series} series are admitted already"
