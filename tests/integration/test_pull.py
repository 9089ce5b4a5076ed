"""One pull request's messages read off the queue (shared.infra.pull): what the consume loop relies on from a
fetch, against a real nats-server, so that a nats-py whose private parts moved fails here (and a delivery's
``num_pending``, by which the loop knows it is behind).

Real nats-server with JetStream (the session's); each test has its own namespace and stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api as js_api

from shared.infra.pull import Pull


@pytest.fixture
async def pull(nc: NATS, namespace: str) -> AsyncIterator[Pull]:
    """A durable pull consumer over a stream of the test's own, as the consume loop makes it (no acks)."""
    js = nc.jetstream()
    name = f"{namespace}_S"
    await js.add_stream(js_api.StreamConfig(name=name, subjects=[f"{namespace}.s.>"]))
    await js.add_consumer(name, js_api.ConsumerConfig(durable_name="d", ack_policy=js_api.AckPolicy.NONE))
    sub = Pull(await js.pull_subscribe_bind(durable="d", stream=name))
    yield sub
    with contextlib.suppress(nats.errors.ConnectionClosedError):  # a test closed the connection
        await sub.unsubscribe()


async def publish(nc: NATS, namespace: str, n: int, start: int = 0) -> None:
    js = nc.jetstream()
    await asyncio.gather(*(js.publish(f"{namespace}.s.{i % 7}", str(i).encode()) for i in range(start, start + n)))


def bodies(msgs: list[Msg]) -> list[int]:
    return [int(m.data) for m in msgs]


async def test_a_fetch_returns_what_is_there_in_stream_order_up_to_the_batch(
    nc: NATS, namespace: str, pull: Pull
) -> None:
    for i in range(5):  # one at a time: stream order is publish order
        await publish(nc, namespace, 1, start=i)
    first = await pull.fetch(3, timeout=1.0)
    assert bodies(first) == [0, 1, 2]
    assert first[-1].metadata.num_pending == 2  # more waits on the server: the loop's "behind"
    got = await pull.fetch(10, timeout=1.0)
    assert bodies(got) == [3, 4]
    assert [m.metadata.sequence.consumer for m in got] == [4, 5]  # consecutive deliveries, as the loop checks
    assert got[-1].metadata.num_pending == 0  # caught up


async def test_a_fetch_waits_for_the_first_message_and_then_returns_without_waiting_out_its_timeout(
    nc: NATS, namespace: str, pull: Pull
) -> None:
    fetching = asyncio.ensure_future(pull.fetch(256, timeout=5.0))
    await asyncio.sleep(0)  # the pull request is on its way before anything is published
    await publish(nc, namespace, 1)
    got = await asyncio.wait_for(fetching, 3.0)  # well inside the fetch's own 5 s
    assert bodies(got) == [0]


async def test_a_fetch_with_nothing_to_deliver_times_out(pull: Pull) -> None:
    with pytest.raises(TimeoutError):
        await pull.fetch(10, timeout=0.2)


async def test_a_full_batch_leaves_the_rest_for_the_next_fetch_and_a_late_status_is_dropped(
    nc: NATS, namespace: str, pull: Pull
) -> None:
    with pytest.raises(TimeoutError):  # an empty pull first: its closing status may come after the fetch gave up
        await pull.fetch(10, timeout=0.001)
    await publish(nc, namespace, 601)
    seen: list[int] = []
    while len(seen) < 601:
        seen += bodies(await pull.fetch(256, timeout=1.0))
    assert sorted(seen) == list(range(601))
    assert len(seen) == 601  # nothing twice


async def test_a_fetch_on_a_closed_connection_raises_connection_closed(nc: NATS, pull: Pull) -> None:
    await nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await pull.fetch(10, timeout=0.2)


async def test_a_fetch_from_a_deleted_consumer_raises_an_api_error_the_loop_retries_on(
    nc: NATS, namespace: str, pull: Pull
) -> None:
    await nc.jetstream().delete_consumer(f"{namespace}_S", "d")
    with pytest.raises((nats.js.errors.Error, TimeoutError)):  # a 409, or no answer at all: both start over
        await pull.fetch(10, timeout=0.5)
