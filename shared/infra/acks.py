"""JetStream publishes pipelined over one reply inbox: send them all, then await every ack together.

nats-py's ``js.publish`` is a request per message: a fresh inbox token, a
future and a ``wait_for`` timer each, and the ack parsed by ``json.loads``
into a dataclass. On a burst of a thousand live candles that plumbing costs
more than the regime math (profiled: a fifth of vol_regime's busy time). Here
every publish of a connection replies to one wildcard subscription, a reply
is matched by a counter, the whole set shares one timeout, and the ack is
decoded by msgspec. KV writes are publishes too (``$KV.<bucket>.<key>`` with
an expected last subject sequence), so state flushes go the same way.

A failure raises what nats-py would have raised for that message (the first
one in send order), so callers keep their error handling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

_NO_RESPONDERS = "503"
_WRONG_LAST_SEQUENCE = frozenset({10071, 10164})  # JetStream's "wrong last sequence" error codes (KV compare-and-set)
_EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"


class Ack(msgspec.Struct, frozen=True):
    """A JetStream publish ack: where the message went (``seq`` is a KV entry's new revision)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, object] | None = None


_decode_ack = msgspec.json.Decoder(Ack).decode


@dataclass(frozen=True, slots=True)
class Publish:
    """One message to store: subject, bytes, headers (e.g. ``Nats-Msg-Id``)."""

    subject: str
    payload: bytes
    headers: Mapping[str, str] | None = None


def kv_write(kv: KeyValue, key: str, value: bytes, revision: int) -> Publish:
    """A compare-and-set write of ``key``: stored only if its last revision is ``revision`` (0: no entry yet)."""
    # nats-py's own KV writes publish to this subject; its prefix also covers a JetStream domain.
    return Publish(f"{kv._pre}{key}", value, {_EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision)})


@dataclass
class AckPipeline:
    """Pipelined JetStream publishes of one connection (see the module doc); :meth:`send` is the one entry."""

    nc: NATS
    timeout: float = 5.0  # s for the acks of one :meth:`send`, however many it sends
    _prefix: str = ""
    _sub: Subscription | None = None
    _next: int = 0
    _waiting: dict[str, asyncio.Future[Ack]] = field(default_factory=dict)
    _opening: asyncio.Lock = field(default_factory=asyncio.Lock)  # two first sends must not open two inboxes

    async def send(self, items: Sequence[Publish]) -> list[Ack]:
        """Publish ``items`` in order and return their acks; raises the first failure (nothing is retried here)."""
        outcomes = await self.send_each(items)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes  # type: ignore[return-value]  # no exception among them

    async def send_each(self, items: Sequence[Publish]) -> list[Ack | BaseException]:
        """Publish ``items`` in order; each one's ack or failure. A missing ack fails the whole send (TimeoutError)."""
        if not items:
            return []
        if self._sub is None:
            async with self._opening:
                if self._sub is None:
                    prefix = self.nc.new_inbox() + "."
                    self._prefix = prefix  # before the subscription exists: its first reply is matched by it
                    self._sub = await self.nc.subscribe(prefix + "*", cb=self._on_reply)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Ack]] = []
        tokens: list[str] = []
        try:
            for item in items:
                self._next += 1
                token = str(self._next)
                future: asyncio.Future[Ack] = loop.create_future()
                self._waiting[token] = future
                tokens.append(token)
                futures.append(future)
                await self.nc.publish(item.subject, item.payload, reply=self._prefix + token,
                                      headers=dict(item.headers) if item.headers else None)
            _done, pending = await asyncio.wait(futures, timeout=self.timeout)
            if pending:
                raise nats.errors.TimeoutError
            return [f.exception() or f.result() for f in futures]
        finally:
            for token in tokens:
                self._waiting.pop(token, None)
            for f in futures:  # an exception nobody reads would be logged at garbage collection
                if f.done() and not f.cancelled():
                    f.exception()

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix) :])
        if future is None or future.done():
            return  # a late ack of a send that timed out: that send was already failed
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            ack = _decode_ack(msg.data)
        except msgspec.DecodeError as exc:
            future.set_exception(nats.js.errors.Error(f"unreadable publish ack: {exc}"))
            return
        if ack.error is None:
            future.set_result(ack)
            return
        future.set_exception(_api_error(ack.error))


def _api_error(err: Mapping[str, object]) -> Exception:
    """The exception nats-py raises for this ack error (a KV compare-and-set miss included)."""
    if err.get("err_code") in _WRONG_LAST_SEQUENCE:
        return nats.js.errors.KeyWrongLastSequenceError(description=str(err.get("description", "")))
    try:
        nats.js.errors.APIError.from_error(dict(err))
    except nats.js.errors.APIError as exc:  # from_error raises the subclass for the code
        return exc
    except (KeyError, TypeError):
        pass
    return nats.js.errors.APIError(description=str(err))
