"""Elastic replicas: which partitions of the series this process may process, held by leases in JetStream KV.

Built on NATS's own primitives, no coordinator:

- **Membership.** Every replica of a service puts ``<service>.<replica id>`` into
  KV bucket ``members`` every beat (``LEASE_TTL_SEC`` / 5); the bucket's TTL
  (``LEASE_TTL_SEC``) drops a replica that stops beating (SIGKILL, OOM, a lost node).
- **Leases.** Partition ``p`` of a service is processed only by the holder of
  key ``<service>.p<p>`` in bucket ``leases`` (same TTL). It is taken with a
  create (fails while another holds it), renewed every beat with a
  compare-and-set on its revision, and handed over by a delete on that
  revision after the holder has committed everything it applied.
- **Assignment.** Every replica computes the same wanted partitions from the
  same member list (:mod:`shared.domain.partitions`), so replicas joining and
  leaving move only what must move.
- **Fencing.** A holder whose renewals fail stops before its lease can have
  lapsed (:meth:`Leases.valid`); and every write it makes is a compare-and-set
  on the revision it read (state and positions in KV, positions in Redis), so
  a replica that was paused past its lease cannot overwrite its successor.

A partition moves within about one beat when a replica joins or stops
cleanly, and within ``LEASE_TTL_SEC`` plus one beat when one dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from shared.domain.partitions import desired

log = logging.getLogger(__name__)

Commit = Callable[[], Awaitable[None]]

# A lease older than this part of its TTL since its last renewal is no longer trusted locally: the margin covers
# the time between a renewal's request and its effect, and the writes of the batch under way.
_TRUST = 0.6


class Owner(Protocol):
    """The partitions a consumer may process now; ``version`` changes whenever they do."""

    partitions: int
    version: int

    def owns(self, partition: int) -> bool: ...

    def held(self) -> frozenset[int]: ...

    def valid(self) -> bool: ...

    async def rebalance(self, commit: Commit) -> None: ...

    async def release_all(self) -> None: ...


@dataclass
class Everything:
    """One process owns every partition, no leases: tools, unit tests, a stack of one replica by design."""

    partitions: int = 1
    version: int = 0

    def owns(self, partition: int) -> bool:
        return True

    def held(self) -> frozenset[int]:
        return frozenset(range(self.partitions))

    def valid(self) -> bool:
        return True

    async def rebalance(self, commit: Commit) -> None:
        return None

    async def release_all(self) -> None:
        return None


@dataclass
class Leases:
    """This replica's leases on the partitions of one service (see the module doc)."""

    members: KeyValue
    leases: KeyValue
    service: str
    me: str  # the replica id: unique per process
    partitions: int
    ttl_s: float
    sticky: bool = False  # one writer of everything: a live holder keeps its partitions (state_publisher)
    version: int = 0
    _held: dict[int, int] = field(default_factory=dict)  # partition -> revision of our lease
    _renewed_at: float = float("-inf")  # monotonic s of the last renewal round that kept every lease
    _beat_at: float = float("-inf")
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def beat_s(self) -> float:
        return self.ttl_s / 5.0

    def owns(self, partition: int) -> bool:
        return partition in self._held

    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    def valid(self) -> bool:
        """Whether every lease held is surely still ours (by the local clock)."""
        return not self._held or time.monotonic() < self._renewed_at + _TRUST * self.ttl_s

    def _key(self, partition: int) -> str:
        return f"{self.service}.p{partition}"

    async def rebalance(self, commit: Commit) -> None:
        """Once a beat: say we are alive, renew, hand over what is no longer ours (after ``commit``), take what is."""
        async with self._lock:
            if time.monotonic() - self._beat_at < self.beat_s:
                return
            self._beat_at = started = time.monotonic()
            await self.members.put(f"{self.service}.{self.me}", str(sorted(self._held)).encode())
            await self._renew(started)
            members = await self._members()
            holders = await self._holders()
            want = desired(self.me, members, self.partitions, holders, sticky=self.sticky)
            give = sorted(set(self._held) - want)
            if give:
                await commit()  # what was applied for these partitions is durable before anyone else reads them
                for p in give:
                    await self._release(p)
            for p in sorted(want - set(self._held)):
                if holders.get(p) in (None, self.me) or holders[p] not in members:
                    await self._take(p)

    async def release_all(self) -> None:
        """On a clean stop: give every partition back at once (a successor need not wait out the TTL)."""
        async with self._lock:
            for p in sorted(self._held):
                with contextlib.suppress(*_KV_ERRORS):
                    await self._release(p)
            with contextlib.suppress(*_KV_ERRORS):
                await self.members.delete(f"{self.service}.{self.me}")

    async def _renew(self, started: float) -> None:
        kept = True
        for p, rev in sorted(self._held.items()):
            try:
                self._held[p] = await self.leases.update(self._key(p), self.me.encode(), last=rev)
            except nats.js.errors.KeyWrongLastSequenceError:
                log.warning("lease on %s partition %d lost (it lapsed and was taken)", self.service, p)
                del self._held[p]
                self.version += 1
                kept = False
        if kept:
            self._renewed_at = started

    async def _members(self) -> set[str]:
        prefix = f"{self.service}."
        try:
            keys = await self.members.keys()
        except nats.js.errors.NoKeysError:
            keys = []
        return {k[len(prefix) :] for k in keys if k.startswith(prefix)} | {self.me}

    async def _holders(self) -> dict[int, str]:
        async def holder(p: int) -> str | None:
            try:
                entry = await self.leases.get(self._key(p))
            except nats.js.errors.KeyNotFoundError:
                return None
            return entry.value.decode() if entry.value else None

        found = await asyncio.gather(*(holder(p) for p in range(self.partitions)))
        return {p: h for p, h in enumerate(found) if h is not None}

    async def _take(self, p: int) -> None:
        try:
            self._held[p] = await self.leases.create(self._key(p), self.me.encode())
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyValueError):
            return  # another replica got there first, or the old holder's lease has not lapsed yet
        if len(self._held) == 1:
            self._renewed_at = time.monotonic()
        self.version += 1
        log.info("took partition %d of %s", p, self.service)

    async def _release(self, p: int) -> None:
        rev = self._held.pop(p)
        self.version += 1
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await self.leases.delete(self._key(p), last=rev)
        log.info("handed over partition %d of %s", p, self.service)


_KV_ERRORS = (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError)
