"""Which replica processes which series: fixed partitions of the series, spread over the live replicas.

A series belongs to partition ``fnv1a(token) % partitions`` for good (the number
of partitions is fixed per deployment). A service that joins a symbol's
timeframes (the screener's consensus) partitions by the symbol instead
(``fnv1a(symbol_token)``), so every timeframe of a symbol is in one replica. Partitions are spread over the replicas
alive at the moment by rendezvous hashing: every replica computes the same
answer from the same member list, and a replica joining or leaving moves only
the partitions that must move (about 1/n of them), never a shuffle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Final, Literal

from shared.domain.subjects import SeriesKey, fnv1a

DEFAULT_PARTITIONS: Final[int] = 16  # enough to spread over a handful of replicas, few enough to lease cheaply
MAX_PARTITIONS: Final[int] = 256


PartitionBy = Literal["series", "symbol"]  # what a service's partitions split: series, or whole symbols


def partition_of(key: SeriesKey, partitions: int, by: PartitionBy = "series") -> int:
    """The partition (0-based) of a series, stable across processes and releases."""
    return fnv1a(key.token if by == "series" else key.symbol_token) % partitions


def assign(members: Iterable[str], partitions: int) -> dict[str, frozenset[int]]:
    """Partitions per member: each partition to the member with the highest rendezvous weight for it."""
    live = sorted(set(members))
    out: dict[str, set[int]] = {m: set() for m in live}
    for p in range(partitions):
        if live:
            out[max(live, key=lambda m: (_weight(m, p), m))].add(p)
    return {m: frozenset(ps) for m, ps in out.items()}


def _weight(member: str, partition: int) -> int:
    # A well-mixed hash: FNV over ids that differ only in their last characters would rank members by prefix.
    return int.from_bytes(hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest(), "big")


def desired(
    me: str, members: Iterable[str], partitions: int, holders: Mapping[int, str], *, sticky: bool
) -> frozenset[int]:
    """The partitions ``me`` should hold given the live ``members`` and the current lease ``holders``.

    ``sticky``: a partition stays with a live holder (a standby takes over only
    when the holder is gone), for services that must have one writer of
    everything (state_publisher). Otherwise the rendezvous assignment decides,
    and a holder hands over what is no longer its own.
    """
    live = set(members) | {me}
    if not sticky:
        return assign(live, partitions)[me]
    free = [p for p in range(partitions) if holders.get(p) not in live]
    mine = {p for p, holder in holders.items() if holder == me}
    spread = assign(live, partitions)[me]
    return frozenset(mine | {p for p in free if p in spread})
