"""The one consume loop (shared.bus.Consumer.process): its batch protocol, without a server."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import nats.errors
import pytest

from shared.bus import Consumer, Out
from shared.contracts import Candle, encode
from shared.subjects import SeriesKey
from shared.telemetry import Metrics

KEY = SeriesKey("test", "AAA/USD", "1m")


def candle(i: int) -> Candle:
    return Candle("test", "AAA/USD", "1m", 60_000 * (1000 + i), 10.0, 11.0, 9.0, 10.5, 1.0)


@dataclass
class FakeMsg:
    data: bytes
    subject: str = "ohlcv.test.AAA-USD.1m"
    journal: list[str] = field(default_factory=list)
    metadata: Any = field(
        default_factory=lambda: SimpleNamespace(num_pending=0, stream="S", sequence=SimpleNamespace(stream=1))
    )

    async def ack(self) -> None:
        self.journal.append("ack")


class FakeBus:
    service = "svc"

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.metrics = Metrics.create("svc")
        self.letters: list[tuple[str, bytes]] = []

    async def publish(self, out: Out) -> None:
        self.journal.append(f"publish {out.msg_id}")

    async def dead_letter(self, reason: str, subject: str, payload: bytes, origin: str | None = None) -> None:
        self.letters.append((reason, payload))
        self.metrics.messages.labels(self.service, "dead_lettered").inc()


class FakeStore:
    def __init__(self, journal: list[str]) -> None:
        self.journal = journal

    async def flush(self) -> None:
        self.journal.append("flush")

    def discard(self) -> None:
        self.journal.append("discard")


def consumer(journal: list[str], handler: Any, partition: tuple[int, int] = (0, 1)) -> tuple[Consumer, FakeBus]:
    bus = FakeBus(journal)

    async def after() -> None:
        journal.append("after_batch")

    c = Consumer(
        bus,  # type: ignore[arg-type]
        "S",
        ["ohlcv.>"],
        "d",
        {Candle: handler},
        stores=[FakeStore(journal)],  # type: ignore[list-item]
        partition=partition,
        after_batch=after,
    )
    return c, bus


async def echo(c: Candle, _subject: str) -> list[Out]:
    return [Out("out", c, f"id{c.ts}")]


async def test_outputs_are_published_then_state_flushed_then_the_batch_acked() -> None:
    journal: list[str] = []
    c, _ = consumer(journal, echo)
    await c.process([FakeMsg(encode(candle(i)), journal=journal) for i in range(2)])
    ids = [f"publish id{candle(i).ts}" for i in range(2)]
    assert journal == [*ids, "flush", "after_batch", "ack", "ack"]


async def test_a_bad_message_and_a_handler_bug_are_dead_lettered_and_the_rest_goes_on() -> None:
    journal: list[str] = []

    async def buggy(c: Candle, subject: str) -> list[Out]:
        if c.ts == candle(1).ts:
            raise AttributeError("'NoneType' object has no attribute 'x'")
        return await echo(c, subject)

    c, bus = consumer(journal, buggy)
    msgs = [FakeMsg(b"\xc1junk", journal=journal), FakeMsg(encode(candle(1)), journal=journal)]
    msgs.append(FakeMsg(encode(candle(2)), journal=journal))
    await c.process(msgs)
    reasons = [r for r, _ in bus.letters]
    assert reasons[0].startswith("not msgpack")
    assert reasons[1] == "handler error: AttributeError: 'NoneType' object has no attribute 'x'"
    assert bus.letters[0][1] == b"\xc1junk"  # the original bytes, untouched
    assert journal.count("ack") == 3  # refused messages are acked: never redelivered
    assert f"publish id{candle(2).ts}" in journal


async def test_a_bus_failure_inside_a_handler_fails_the_batch_instead_of_blaming_the_message() -> None:
    journal: list[str] = []

    async def kv_down(_c: Candle, _subject: str) -> list[Out]:
        raise nats.errors.TimeoutError

    c, bus = consumer(journal, kv_down)
    with pytest.raises(nats.errors.TimeoutError):
        await c.process([FakeMsg(encode(candle(0)), journal=journal)])
    assert bus.letters == []
    assert "ack" not in journal


async def test_stale_messages_count_as_skipped_and_series_of_other_replicas_are_left_alone() -> None:
    journal: list[str] = []

    async def stale(_c: Candle, _subject: str) -> None:
        return None

    c, bus = consumer(journal, stale)
    await c.process([FakeMsg(encode(candle(0)), journal=journal)])
    assert bus.metrics.count("svc", "skipped") == 1
    other = 1 - next(r for r in (0, 1) if KEY.owned_by(r, 2))
    c2, bus2 = consumer(journal, echo, partition=(other, 2))
    await c2.process([FakeMsg(encode(candle(0)), journal=journal)])
    assert bus2.metrics.count("svc", "not_owned") == 1
    assert bus2.metrics.count("svc", "handled") == 0


async def test_a_redis_outage_retries_the_batch_instead_of_stopping_the_service() -> None:
    import asyncio

    from redis.exceptions import ConnectionError as RedisConnectionError

    journal: list[str] = []
    stop = asyncio.Event()
    writes: list[int] = []

    async def write() -> None:
        writes.append(1)
        if len(writes) == 1:
            raise RedisConnectionError("redis went away")
        stop.set()

    class Sub:
        async def fetch(self, batch: int, timeout: float) -> list[FakeMsg]:
            msg = FakeMsg(encode(candle(0)), journal=journal)

            async def nak(delay: float | None = None) -> None:
                journal.append("nak")

            msg.nak = nak  # type: ignore[attr-defined]
            return [msg]

    c, _ = consumer(journal, echo)
    c.after_batch = write
    c.retry_on = (RedisConnectionError,)
    await c._loop(Sub(), stop)  # type: ignore[arg-type]
    assert journal.count("nak") == 1  # the first batch goes back to be redelivered...
    assert journal[-1] == "ack"  # ...and the next one lands once Redis is back
    assert len(writes) == 2
