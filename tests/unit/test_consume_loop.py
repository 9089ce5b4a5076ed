"""The one consume loop (shared.infra.consume.Consumer): its batch protocol, without a server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import msgpack
import nats.errors
import pytest
from hypothesis import HealthCheck, given, settings
from nats.aio.msg import Msg

from shared.domain.contracts import Candle, encode
from shared.domain.partitions import partition_of
from shared.domain.subjects import Names, SeriesKey
from shared.infra.bus import Out
from shared.infra.consume import Consumer, Hold
from shared.infra.kv_state import Repositioned
from shared.infra.ownership import Everything, Owner
from shared.infra.pull import Pull
from shared.infra.telemetry import Metrics
from tests import factories

KEY = SeriesKey("test", "AAA/USD", "1m")
OTHER = SeriesKey("test", "BBB/USD", "1m")
T0 = 1_700_000_040_000


def candle(i: int, key: SeriesKey = KEY) -> Candle:
    """Bar ``i`` of ``key``: one fixed bar shape, every candle the loop carries (the shared builder)."""
    return factories.candle(i, 10.5, key=key, open=10.0, high=11.0, low=9.0, volume=1.0)


@dataclass
class FakeMsg:
    data: bytes
    seq: int
    subject: str = "ohlcv.test.AAA-USD.1m"
    delivery: int = 0
    pending: int = 0  # messages the consumer still has behind this one

    @property
    def metadata(self) -> Any:
        return SimpleNamespace(
            num_pending=self.pending,
            stream="S",
            sequence=SimpleNamespace(stream=self.seq, consumer=self.delivery or self.seq),
        )


def as_msg(fake: FakeMsg) -> Msg:
    """``fake`` typed as the nats message the loop takes: it has every field the loop reads."""
    return cast(Msg, fake)


def fakes_of(*items: Candle | bytes, start: int = 1) -> list[FakeMsg]:
    out = []
    for i, item in enumerate(items):
        data = item if isinstance(item, bytes) else encode(item)
        subject = f"ohlcv.{item.key.token}" if isinstance(item, Candle) else "ohlcv.test.AAA-USD.1m"
        out.append(FakeMsg(data, start + i, subject))
    return out


def msgs_of(*items: Candle | bytes, start: int = 1) -> list[Msg]:
    return [as_msg(m) for m in fakes_of(*items, start=start)]


class FakeBus:
    service = "svc"

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.names = Names("")
        self.metrics = Metrics.create("svc")
        self.letters: list[tuple[str, bytes]] = []

    async def publish_all(self, outs: list[Out]) -> None:
        self.journal.extend(f"publish {o.msg_id}" for o in outs)

    async def dead_letter(self, reason: str, subject: str, payload: bytes, origin: str | None = None) -> None:
        self.letters.append((reason, payload))
        self.metrics.messages.labels(self.service, "dead_lettered").inc()


@dataclass
class FakeStore:
    journal: list[str]

    async def flush(self) -> None:
        self.journal.append("flush")

    def discard(self) -> None:
        self.journal.append("discard")


@dataclass
class FakePosition:
    journal: list[str]
    value: int = 0
    loads: int = 0

    async def load(self, partitions: frozenset[int]) -> dict[int, int]:
        self.loads += 1
        return dict.fromkeys(partitions, self.value)

    async def commit(self, seq: int) -> None:
        self.value = seq
        self.journal.append(f"commit {seq}")

    async def verify(self) -> None:
        return None


@dataclass
class Holding:
    """An owner holding a fixed set of partitions (the leases themselves are tested against a real server)."""

    partitions: int
    parts: frozenset[int]
    version: int = 0

    def owns(self, partition: int) -> bool:
        return partition in self.parts

    def held(self) -> frozenset[int]:
        return self.parts

    def valid(self) -> bool:
        return True

    async def rebalance(self, commit: Any) -> None:
        return None

    async def release_all(self) -> None:
        return None


@dataclass
class Rig:
    journal: list[str] = field(default_factory=list)

    def consumer(self, handler: Any, owner: Owner | None = None, **kw: Any) -> Consumer:
        self.bus = FakeBus(self.journal)
        self.position = FakePosition(self.journal)
        kw.setdefault("commit_delay_s", 0.0)  # every batch commits at once, unless a test is about the delay
        return Consumer(
            self.bus,  # type: ignore[arg-type]
            "S",
            ["ohlcv.>"],
            "d",
            {Candle: handler},
            self.position,
            stores=[FakeStore(self.journal)],
            owner=owner or Everything(),
            **kw,
        )


async def echo(c: Candle, _seq: int) -> list[Out]:
    return [Out("out", c, f"id{c.ts}")]


async def test_outputs_are_published_then_state_flushed_then_the_position_committed() -> None:
    rig = Rig()
    c = rig.consumer(echo)
    c._next_delivery = 1
    await c.process(msgs_of(candle(0), candle(1)))
    assert rig.journal == [f"publish id{candle(0).ts}", f"publish id{candle(1).ts}", "flush", "commit 2"]


@dataclass
class Idle:
    """The server after a burst: nothing comes within a fetch's timeout (each timeout asked for is kept)."""

    waits: list[float] = field(default_factory=list)

    async def fetch(self, batch: int, timeout: float) -> list[FakeMsg]:
        self.waits.append(timeout)
        await asyncio.sleep(timeout)
        raise nats.errors.TimeoutError


async def loop_until_a_commit(rig: Rig, c: Consumer, sub: Idle) -> None:
    """Run ``c``'s loop over ``sub`` until it commits a position (5 s at most)."""
    stop = asyncio.Event()
    committed = rig.position.commit

    async def commit(seq: int) -> None:
        await committed(seq)
        stop.set()

    rig.position.commit = commit  # type: ignore[method-assign]
    c._owned_version = c.owner.version
    await asyncio.wait_for(c._loop(cast(Pull, sub), stop), 5)


async def test_what_batches_applied_is_written_once_the_commit_delay_is_over_not_with_their_outputs() -> None:
    # A burst of live candles: the outputs go on downstream at once; the state and position of every batch
    # since the last commit are written once, commit_delay_s after the first of them, by the loop going idle.
    rig = Rig()
    c = rig.consumer(echo, commit_delay_s=0.3)
    c._next_delivery = 1
    started = asyncio.get_running_loop().time()
    await c.process(msgs_of(candle(0), candle(1)))
    await c.process(msgs_of(candle(2), start=3))
    assert rig.journal == [f"publish id{candle(i).ts}" for i in range(3)]
    idle = Idle()
    await loop_until_a_commit(rig, c, idle)
    assert rig.journal[3:] == ["flush", "commit 3"]
    assert asyncio.get_running_loop().time() - started >= 0.3
    assert idle.waits
    assert max(idle.waits) <= 0.3  # the loop waited for news no longer than until the commit was due


def behind(msgs: list[Msg], pending: int = 100) -> list[Msg]:
    """``msgs`` with the last one saying ``pending`` more wait on the server (a burst, a backfill)."""
    cast(FakeMsg, msgs[-1]).pending = pending
    return msgs


async def test_while_more_is_pending_the_state_writes_wait_until_the_consumer_has_caught_up() -> None:
    # A burst of 10,000 live candles takes seconds: its state writes must not take CPU from its outputs midway.
    rig = Rig()
    c = rig.consumer(echo, commit_delay_s=0.05, behind_commit_delay_s=60.0)
    c._next_delivery = 1
    await c.process(behind(msgs_of(candle(0), candle(1))))
    await asyncio.sleep(0.1)  # past commit_delay_s, but the server said more was coming
    await c.process(behind(msgs_of(candle(2), start=3)))
    assert rig.journal == [f"publish id{candle(i).ts}" for i in range(3)]
    await loop_until_a_commit(rig, c, Idle())  # the burst is over: the next fetch finds nothing
    assert rig.journal[3:] == ["flush", "commit 3"]


async def test_behind_past_the_plain_delay_the_next_fetch_still_waits_its_whole_timeout() -> None:
    # A fetch cut to a millisecond could come back empty under load and pass for having caught up.
    rig = Rig()
    c = rig.consumer(echo, commit_delay_s=0.05, behind_commit_delay_s=60.0, fetch_timeout=0.3)
    c._next_delivery = 1
    await c.process(behind(msgs_of(candle(0), candle(1))))
    await asyncio.sleep(0.1)
    waits: list[float] = []

    class Rest:  # the rest of the burst, with nothing behind it
        async def fetch(self, batch: int, timeout: float) -> list[Msg]:
            waits.append(timeout)
            return msgs_of(candle(2), start=3)

    await loop_until_a_commit(rig, c, cast(Idle, Rest()))
    assert waits == [0.3]
    assert rig.journal[3:] == ["flush", "commit 3"]


async def test_behind_for_long_the_state_is_written_after_behind_commit_delay_s_at_the_latest() -> None:
    # A backfill that never catches up still bounds what a crash replays.
    rig = Rig()
    c = rig.consumer(echo, commit_delay_s=0.0, behind_commit_delay_s=0.2)
    c._next_delivery = 1
    await c.process(behind(msgs_of(candle(0))))
    assert rig.journal == [f"publish id{candle(0).ts}"]
    await asyncio.sleep(0.25)
    await c.process(behind(msgs_of(candle(1), start=2)))
    assert rig.journal[1:] == [f"publish id{candle(1).ts}", "flush", "commit 2"]


async def test_a_message_with_nothing_behind_it_commits_after_the_plain_delay() -> None:
    rig = Rig()
    c = rig.consumer(echo, commit_delay_s=0.0, behind_commit_delay_s=60.0)
    c._next_delivery = 1
    await c.process(behind(msgs_of(candle(0), candle(1)), pending=0))
    assert rig.journal[-2:] == ["flush", "commit 2"]


async def test_a_clean_stop_commits_what_waited_for_the_commit_delay() -> None:
    rig = Rig()
    c = rig.consumer(echo, commit_delay_s=60.0)
    c._next_delivery = 1
    await c.process(msgs_of(candle(0), candle(1)))
    assert rig.journal == [f"publish id{candle(i).ts}" for i in range(2)]
    stop = asyncio.Event()
    stop.set()
    c._owned_version = c.owner.version
    await asyncio.wait_for(c._loop(cast(Pull, None), stop), 5)  # stopped before any fetch
    assert rig.journal[2:] == ["flush", "commit 2"]


async def test_a_bad_message_and_a_handler_bug_are_dead_lettered_and_the_rest_goes_on() -> None:
    rig = Rig()

    async def buggy(c: Candle, seq: int) -> list[Out]:
        if c.ts == candle(1).ts:
            raise AttributeError("'NoneType' object has no attribute 'x'")
        return await echo(c, seq)

    c = rig.consumer(buggy)
    c._next_delivery = 1
    await c.process(msgs_of(b"\xc1junk", candle(1), candle(2)))
    reasons = [r for r, _ in rig.bus.letters]
    assert reasons[0].startswith("not msgpack")
    assert reasons[1] == "handler error: AttributeError: 'NoneType' object has no attribute 'x'"
    assert rig.bus.letters[0][1] == b"\xc1junk"  # the original bytes, untouched
    assert f"publish id{candle(2).ts}" in rig.journal
    assert rig.journal[-1] == "commit 3"  # refused messages are behind the position: never seen again


async def test_a_payload_for_another_series_than_its_subject_is_dead_lettered() -> None:
    rig = Rig()
    c = rig.consumer(echo)
    c._next_delivery = 1
    spoof = as_msg(FakeMsg(encode(candle(0, OTHER)), 1, subject="ohlcv.test.AAA-USD.1m"))
    await c.process([spoof])
    assert rig.bus.letters[0][0] == "subject names series test:AAA/USD:1m but the payload is for test:BBB/USD:1m"
    assert not any(j.startswith("publish") for j in rig.journal)


@pytest.mark.parametrize(
    ("ts", "reason"),
    [
        (6_311_347_200_000, "in the future"),  # 2170
        (60_000, "before"),  # 1970
    ],
)
async def test_a_candle_dated_in_the_future_or_before_the_floor_is_dead_lettered(ts: int, reason: str) -> None:
    rig = Rig()
    c = rig.consumer(echo)
    c._next_delivery = 1
    bad = Candle("test", "AAA/USD", "1m", ts, 10.0, 11.0, 9.0, 10.5, 1.0)
    await c.process(msgs_of(bad))
    assert reason in rig.bus.letters[0][0]


async def test_a_bus_failure_inside_a_handler_fails_the_batch_and_commits_nothing() -> None:
    rig = Rig()

    async def kv_down(_c: Candle, _seq: int) -> list[Out]:
        raise nats.errors.TimeoutError

    c = rig.consumer(kv_down)
    c._next_delivery = 1
    with pytest.raises(nats.errors.TimeoutError):
        await c.process(msgs_of(candle(0)))
    assert rig.bus.letters == []
    assert not any(j.startswith("commit") for j in rig.journal)


async def test_stale_messages_count_as_skipped_and_series_of_other_replicas_are_left_alone() -> None:
    rig = Rig()

    async def stale(_c: Candle, _seq: int) -> None:
        return None

    c = rig.consumer(stale)
    c._next_delivery = 1
    await c.process(msgs_of(candle(0)))
    assert rig.bus.metrics.count("svc", "skipped") == 1
    others = frozenset({1 - partition_of(KEY, 2)})
    c2 = rig.consumer(echo, owner=Holding(2, others))
    c2._next_delivery = 1
    await c2.process(msgs_of(candle(0)))
    assert rig.bus.metrics.count("svc", "not_owned") == 1
    assert rig.bus.metrics.count("svc", "handled") == 0


async def test_a_held_series_waits_in_order_while_others_go_on_and_the_position_stays_below_it() -> None:
    rig = Rig()
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[tuple[str, int]] = []

    async def training(c: Candle, seq: int) -> list[Out] | Hold:
        if c.key == KEY and c.ts == candle(1).ts and not ready.done():
            return Hold(ready)
        seen.append((c.symbol, c.ts))
        return await echo(c, seq)

    c = rig.consumer(training)
    c._next_delivery = 1
    await c.process(msgs_of(candle(0), candle(1), candle(1, OTHER), candle(2)))
    assert seen == [("AAA/USD", candle(0).ts), ("BBB/USD", candle(1).ts)]
    assert rig.position.value == 1  # stops short of the first held message (seq 2)
    ready.set_result(None)
    await c.process([])
    assert seen[2:] == [("AAA/USD", candle(1).ts), ("AAA/USD", candle(2).ts)]
    assert rig.position.value == 4


async def test_the_position_stays_below_what_a_core_keeps_in_memory_only() -> None:
    rig = Rig()
    water: list[int] = [2]
    c = rig.consumer(echo, low_water=lambda: water[0] if water else None)
    c._next_delivery = 1
    await c.process(msgs_of(candle(0), candle(1), candle(2)))
    assert rig.position.value == 1
    water.clear()
    await c.process(msgs_of(candle(3), start=4))
    assert rig.position.value == 4


async def test_a_hole_in_the_deliveries_makes_the_loop_start_over_from_its_position() -> None:
    rig = Rig()
    c = rig.consumer(echo)
    c._next_delivery = 1
    first, _lost, third = msgs_of(candle(0), candle(1), candle(2))
    await c.process([first])
    with pytest.raises(Repositioned):
        await c.process([third])


async def test_a_failed_batch_is_applied_again_from_the_committed_position_before_anything_newer() -> None:
    journal: list[str] = []
    stop = asyncio.Event()
    stream = fakes_of(candle(0), candle(1), candle(2))
    rig = Rig(journal)
    failures = [1]

    async def flaky(c: Candle, seq: int) -> list[Out]:
        if c.ts == candle(1).ts and failures:
            failures.pop()
            raise nats.errors.TimeoutError
        if c.ts == candle(2).ts:
            stop.set()
        return await echo(c, seq)

    c = rig.consumer(flaky)

    class Sub:
        def __init__(self, start: int) -> None:
            self.queue = [m for m in stream if m.seq >= start]
            for i, m in enumerate(self.queue):
                m.delivery = i + 1

        async def fetch(self, batch: int, timeout: float) -> list[FakeMsg]:
            out, self.queue = self.queue[:2], self.queue[2:]
            return out

        async def unsubscribe(self) -> None:
            return None

    async def open_() -> Any:
        c._owned_version = c.owner.version
        c.committed = c._last_seq = min((await rig.position.load(frozenset({0}))).values())
        c._next_delivery = 1
        return Sub(c.committed + 1)

    c._open = open_  # type: ignore[method-assign]
    await asyncio.wait_for(c.run(stop), 10)
    published = [j for j in journal if j.startswith("publish")]
    # The failed batch (candles 0 and 1) is replayed whole from position 0, before candle 2.
    assert published == [f"publish id{candle(i).ts}" for i in (0, 1, 2)]
    assert "discard" in journal
    assert rig.position.loads == 2
    assert rig.position.value == 3


async def test_a_service_whose_nats_connection_closes_for_good_fails_instead_of_idling() -> None:
    from shared.infra.service import _watch_closed

    closed, stop = asyncio.Event(), asyncio.Event()
    watcher = asyncio.create_task(_watch_closed(closed, stop))
    closed.set()
    with pytest.raises(ConnectionError, match="closed"):
        await asyncio.wait_for(watcher, 5)
    # A clean stop closes the connection too: that is no failure.
    closed2, stop2 = asyncio.Event(), asyncio.Event()
    watcher2 = asyncio.create_task(_watch_closed(closed2, stop2))
    stop2.set()
    closed2.set()
    await asyncio.wait_for(watcher2, 5)


def test_a_dead_letter_is_bounded_whatever_it_carries() -> None:
    import hashlib

    from shared.domain.contracts import DEAD_LETTER_PAYLOAD_BYTES, DeadLetter, decode

    payload = b"x" * 1_000_000
    letter = DeadLetter.of("svc", "r" * 10_000, "s" * 10_000, payload, T0)
    wire = encode(letter)
    assert len(wire) < DEAD_LETTER_PAYLOAD_BYTES + 3 * 1024
    back = decode(wire)
    assert back.payload == payload[:DEAD_LETTER_PAYLOAD_BYTES]
    assert (back.payload_size, back.payload_sha256) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert back.truncated


def _mutations() -> Any:
    from hypothesis import strategies as st

    base = {**{"kind": "candle", "v": 1}, **{k: getattr(candle(0), k) for k in Candle.__struct_fields__}}
    values = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=40), st.binary(max_size=40), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
    )
    mutated = st.fixed_dictionaries({}, optional={k: values for k in base}).map(lambda m: {**base, **m})
    wire = st.one_of(
        st.binary(max_size=300),
        mutated.map(lambda m: msgpack.packb(m, use_bin_type=True)),
        st.dictionaries(st.text(max_size=10), values, max_size=6).map(lambda m: msgpack.packb(m, use_bin_type=True)),
    )
    subjects = st.sampled_from(["ohlcv.test.AAA-USD.1m", "ohlcv.test.BBB-USD.1m", "x"])
    return st.lists(st.tuples(wire, subjects), max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=_mutations())
def test_fuzzed_messages_are_each_applied_or_dead_lettered_and_never_stop_the_loop(
    batch: list[tuple[bytes, str]],
) -> None:
    rig = Rig()
    c = rig.consumer(echo)
    c._next_delivery = 1
    msgs = [as_msg(FakeMsg(data, i + 1, subject)) for i, (data, subject) in enumerate(batch)]
    asyncio.run(c.process(msgs))
    handled = rig.bus.metrics.count("svc", "handled")
    assert handled + len(rig.bus.letters) == len(msgs)
    assert all(reason for reason, _ in rig.bus.letters)
    assert rig.position.value == (len(msgs) or 0)


async def test_a_commit_after_a_failed_batch_never_moves_the_position_past_what_was_discarded() -> None:
    # A replica handing a partition over commits first; if its last batch failed (its state discarded),
    # that commit must not cover the messages it fetched but never made durable: the successor replays them.
    rig = Rig()
    c = rig.consumer(echo)
    c.committed = 3  # durable up to 3 ...
    c._last_seq = 9  # ... fetched up to 9 when the batch failed
    c._reset()
    await c._commit_locked()
    assert rig.position.value in (0, 3)  # never 9
    assert "commit 9" not in rig.journal
