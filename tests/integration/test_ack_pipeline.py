"""Pipelined JetStream publishes (shared.infra.acks): every ack comes back to its own message, failures are
the errors nats-py raises, and state written through them is compare-and-set like ``kv.update``.

Real nats-server with JetStream (the session's); each test has its own namespace.
"""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import api as js_api

from shared.domain.subjects import SeriesKey
from shared.infra.acks import Ack, AckPipeline, Publish, kv_write
from shared.infra.bus import kv_bucket
from shared.infra.kv_state import Repositioned, StateStore


@pytest.fixture
async def stream(nc: NATS, namespace: str) -> str:
    """A stream of the test's own, holding ``<namespace>.s.>``; its name."""
    name = f"{namespace}_S"
    await nc.jetstream().add_stream(js_api.StreamConfig(name=name, subjects=[f"{namespace}.s.>"]))
    return name


async def test_each_message_gets_its_own_ack_in_order_and_a_repeated_msg_id_is_a_duplicate(
    nc: NATS, namespace: str, stream: str
) -> None:
    js = nc.jetstream()
    acks = AckPipeline(nc)
    items = [Publish(f"{namespace}.s.{i % 3}", str(i).encode(), {"Nats-Msg-Id": f"m{i}"}) for i in range(500)]
    first = await acks.send(items)
    assert [a.seq for a in first] == list(range(1, 501))
    assert not any(a.duplicate for a in first)
    again = await acks.send([*items[:10], Publish(f"{namespace}.s.0", b"new", {"Nats-Msg-Id": "fresh"})])
    assert [a.duplicate for a in again] == [True] * 10 + [False]
    assert again[-1].seq == 501
    stored = await js.get_msg(stream, 250)
    assert stored.data == b"249"


async def test_a_subject_no_stream_holds_fails_with_no_responders_and_the_others_are_stored(
    nc: NATS, namespace: str, stream: str
) -> None:
    outcomes = await AckPipeline(nc).send_each(
        [Publish(f"{namespace}.s.a", b"1"), Publish(f"{namespace}.nowhere", b"2"),
         Publish(f"{namespace}.s.b", b"3")]
    )
    assert isinstance(outcomes[0], Ack)
    assert isinstance(outcomes[2], Ack)
    assert isinstance(outcomes[1], nats.js.errors.NoStreamResponseError)
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await AckPipeline(nc).send([Publish(f"{namespace}.nowhere", b"2")])


async def test_a_reply_that_never_comes_fails_the_whole_send_with_a_timeout(
    nc: NATS, namespace: str
) -> None:
    await nc.subscribe(f"{namespace}.silent", cb=_ignore)  # a listener, never an answer
    with pytest.raises(nats.errors.TimeoutError):
        await AckPipeline(nc, timeout=0.3).send([Publish(f"{namespace}.silent", b"x")])


async def _ignore(_msg: object) -> None:
    return None


async def test_kv_writes_are_compare_and_set_on_the_revision(nc: NATS, namespace: str) -> None:
    kv = await kv_bucket(nc.jetstream(), f"{namespace}_kv")
    acks = AckPipeline(nc)
    created = await acks.send([kv_write(kv, "a", b"1", 0), kv_write(kv, "b", b"1", 0)])
    assert [(await kv.get(k)).revision for k in ("a", "b")] == [a.seq for a in created]
    outcomes = await acks.send_each([kv_write(kv, "a", b"2", created[0].seq), kv_write(kv, "b", b"2", 999)])
    assert isinstance(outcomes[0], Ack)
    assert isinstance(outcomes[1], nats.js.errors.KeyWrongLastSequenceError)
    assert (await kv.get("a")).value == b"2"
    assert (await kv.get("b")).value == b"1", "a write on a stale revision must not land"
    again = await acks.send_each([kv_write(kv, "a", b"3", 0)])  # "create" of a key that exists
    assert isinstance(again[0], nats.js.errors.KeyWrongLastSequenceError)


def _store(kv: object, acks: AckPipeline) -> StateStore[dict[str, int]]:
    return StateStore(kv, acks, new=lambda _k: {"n": 0}, dump=dict, load=lambda _k, raw: dict(raw))  # type: ignore[arg-type]


async def test_a_state_store_writes_through_the_pipeline_recreates_a_deleted_key_and_refuses_a_stolen_one(
    nc: NATS, namespace: str
) -> None:
    kv = await kv_bucket(nc.jetstream(), f"{namespace}_state")
    keys = [SeriesKey("test", f"S{i}/USD", "1m") for i in range(50)]
    store = _store(kv, AckPipeline(nc))
    for i, key in enumerate(keys):
        (await store.get(key))["n"] = i
        store.mark(key)
    await store.flush()
    fresh = _store(kv, AckPipeline(nc))
    assert [(await fresh.get(k))["n"] for k in keys] == list(range(50))

    # A deleted key reads as absent; writing it again is a create over the delete marker.
    await kv.delete(keys[0].token)
    again = _store(kv, AckPipeline(nc))
    (await again.get(keys[0]))["n"] = 7
    again.mark(keys[0])
    await again.flush()
    assert (await _store(kv, AckPipeline(nc)).get(keys[0]))["n"] == 7

    # Another writer moved a key since this store read it: the flush must not overwrite it.
    (await again.get(keys[1]))["n"] = 100
    await kv.put(keys[1].token, b"\x81\xa1n\x05")  # msgpack {"n": 5}, written by "another replica"
    again.mark(keys[1])
    with pytest.raises(Repositioned):
        await again.flush()
    assert (await _store(kv, AckPipeline(nc)).get(keys[1]))["n"] == 5


async def test_sends_from_many_tasks_at_once_each_get_their_own_acks(
    nc: NATS, namespace: str, stream: str
) -> None:
    """Ingest's sources publish concurrently through one pipeline: no ack may reach another task's message."""
    js = nc.jetstream()
    acks = AckPipeline(nc)

    async def one_task(t: int) -> list[Ack]:
        return await acks.send([Publish(f"{namespace}.s.{t}", f"{t}.{i}".encode(), {"Nats-Msg-Id": f"{t}.{i}"})
                                for i in range(50)])

    results = await asyncio.gather(*(one_task(t) for t in range(8)))
    seqs = sorted(a.seq for r in results for a in r)
    assert seqs == list(range(1, 401))
    for t, result in enumerate(results):
        stored = [(await js.get_msg(stream, a.seq)).data for a in result]
        assert stored == [f"{t}.{i}".encode() for i in range(50)]
