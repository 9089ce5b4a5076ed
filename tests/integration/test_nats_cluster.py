"""A 3-node NATS cluster: one node SIGKILLed while candles flow loses nothing and doubles nothing; it then rejoins.

Three nats-server processes cluster on loopback (free client and route
ports, a JetStream store each under tmp). The stack's four consuming services
run as real processes with ``NATS_URL`` listing all three nodes and
``NATS_REPLICAS=3``. Candles are published at a pace; part-way, the node that
leads the candle stream is SIGKILLed. The stack must go on deciding on the two
left, and end with every candle's events exactly once in REGIMES,
byte-identical to ``regimes backtest``, and Redis equal to a run on a single
server. Then the node is started again on the same store and must be reported
current for every stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from regimes.servers import ClusterNode, ManagedServer, cluster_nodes, start_cluster_node, start_nats, start_redis
from shared.domain.config import parse_strategy_config
from shared.domain.errors import ConfigError
from shared.domain.subjects import Names
from shared.infra.bus import ensure_streams
from tests.harness import eventually
from tests.integration.test_crash_recovery import (
    CONFIG,
    KEYS,
    KINDS,
    ROOT,
    SERVICES,
    Message,
    Outcome,
    Procs,
    Servers,
    backtested,
    collect,
    expected_last,
    feed,
    redis_progress,
    settled,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
SEED = 3
REPLICAS = 3


@dataclass
class Cluster:
    nodes: list[ClusterNode]
    servers: dict[str, ManagedServer]
    redis: ManagedServer
    single: ManagedServer  # a standalone nats-server for the reference run

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{n.port}" for n in self.nodes)

    def node(self, name: str) -> ClusterNode:
        return next(n for n in self.nodes if n.name == name)

    def kill(self, name: str) -> None:
        proc = self.servers[name].proc
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def restart(self, name: str) -> None:
        self.servers[name] = start_cluster_node(self.node(name), self.nodes)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    nodes = cluster_nodes(tmp_path_factory.mktemp("cluster"))
    servers: dict[str, ManagedServer] = {}
    try:
        for node in nodes:
            servers[node.name] = start_cluster_node(node, nodes)
        c = Cluster(
            nodes, servers, start_redis(tmp_path_factory.mktemp("cluster-redis")),
            start_nats(tmp_path_factory.mktemp("single-nats")),
        )
        yield c
    finally:
        for server in servers.values():
            server.stop()
    c.redis.stop()
    c.single.stop()


async def connect(url: str) -> NATS:
    return await nats.connect(servers=url.split(","), name="cluster-test", max_reconnect_attempts=-1,
                              reconnect_time_wait=0.2, connect_timeout=2)


async def jetstream_ready(nc: NATS, names: Names, replicas: int) -> None:
    """Streams created at ``replicas`` once the cluster has elected its JetStream meta leader (bounded)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await ensure_streams(nc.jetstream(), names, 14, replicas)
            return
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


async def leader_of(nc: NATS, stream: str) -> str:
    info = await nc.jetstream().stream_info(stream)
    assert info.cluster is not None
    assert info.cluster.leader
    return info.cluster.leader


async def stack_run(
    url: str, redis: ManagedServer, tmp: Path, namespace: str, replicas: int, fault: Any = None
) -> tuple[Outcome, list[int]]:
    """The four services over ``url`` (one server, or a cluster's nodes); ``fault(nc)`` is awaited part-way.

    Returns the outcome and the ts up to which every series was decided when the fault struck.
    """
    names = Names(namespace)
    cfg_path = tmp / f"{namespace}.json"
    cfg_path.write_text(json.dumps(CONFIG))
    logs = tmp / f"logs-{namespace}"
    logs.mkdir()
    env = {
        **os.environ, "NATS_URL": url, "NATS_REPLICAS": str(replicas), "REDIS_URL": redis.url,
        "REGIMES_NAMESPACE": namespace, "STRATEGY_CONFIG": str(cfg_path), "HEALTH_INTERVAL_SEC": "0.5",
        "LEASE_TTL_SEC": "2",  # a restarted service takes its partitions back within this
        "PYTHONPATH": str(ROOT),
    }
    msgs, stream = feed(names, SEED, with_hostile=False)
    expected = expected_last(stream, parse_strategy_config(CONFIG, {}))
    nc = await connect(url)
    await jetstream_ready(nc, names, replicas)
    procs = Procs(env, logs)
    for name in SERVICES:
        procs.start(name)
    servers = Servers(nats=None, redis=redis, nats_dir=tmp)  # type: ignore[arg-type]
    during: list[int] = []
    restarter = asyncio.create_task(keep_running(procs))
    try:
        await eventually(lambda: all_healthy(nc, names), timeout=60)
        await publish(nc, msgs, len(msgs) // 3, fault, servers, names, during)
        nc = await settled(nc, servers, names, expected, procs)
        return await collect(nc, servers, names), during
    finally:
        restarter.cancel()
        procs.stop_all()
        await nc.close()


async def keep_running(procs: Procs) -> None:
    """What compose's restart policy and `regimes up` do: a service that exited is started again.

    A service whose start-up meets the cluster mid-election (its JetStream API
    requests time out) exits non-zero, as it does when NATS is down at start.
    """
    while True:
        for name, proc in list(procs.running.items()):
            if proc.poll() is not None:
                procs.start(name)
        await asyncio.sleep(0.2)


async def all_healthy(nc: NATS, names: Names) -> bool:
    try:
        kv = await nc.jetstream().key_value(names.bucket("health"))
        keys = set(await kv.keys())
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
        return False
    return set(SERVICES) <= {k.split(".", 1)[0] for k in keys}  # keys are "<service>.<replica id>"


async def publish(
    nc: NATS, msgs: list[Message], fault_at: int, fault: Any, servers: Servers, names: Names, during: list[int]
) -> None:
    """Publish every message once stored (a publish cut by the failover is sent again: its Msg-Id dedupes it)."""
    i = 0
    while i < len(msgs):
        m = msgs[i]
        try:
            await nc.jetstream().publish(m.subject, m.data, headers={"Nats-Msg-Id": m.msg_id}, timeout=2)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
            await asyncio.sleep(0.1)
            continue
        if i == fault_at and fault is not None:
            _position, decided = await redis_progress(servers, names)
            during.append(len(decided) and min(decided.values()))  # how far every series was decided
            await fault(nc)
        await asyncio.sleep(0.003)  # a live feed's pace: the kill lands while consumers are mid-stream
        i += 1


async def current_everywhere(nc: NATS, node: str) -> dict[str, Any]:
    """Per stream (KV buckets' included), whether ``node`` is a replica that is current with no lag."""
    js = nc.jetstream()
    out: dict[str, Any] = {}
    for name in await js.streams_info():
        cluster, stream = name.cluster, name.config.name
        assert cluster is not None
        assert stream is not None
        peers = {p.name: p for p in cluster.replicas or []}
        if cluster.leader == node:
            out[stream] = True
        elif node in peers:
            out[stream] = bool(peers[node].current and not peers[node].lag)
        else:
            out[stream] = "not a replica"
    return out


async def test_a_node_killed_mid_stream_loses_and_doubles_nothing_and_rejoins_current(
    cluster: Cluster, tmp_path: Path
) -> None:
    killed: list[str] = []

    async def kill_the_candle_leader(nc: NATS) -> None:
        leader = await leader_of(nc, Names(namespace).stream_ohlcv)
        cluster.kill(leader)
        killed.append(leader)

    namespace = f"cl{os.getpid() % 1000}"
    clustered, during = await stack_run(cluster.url, cluster.redis, tmp_path, namespace, REPLICAS,
                                        kill_the_candle_leader)
    assert killed, "the fault never ran"
    # Nothing lost, nothing doubled: per series, one vol event, one HMM event and one decision per candle,
    # the very bytes the backtest gives.
    assert clustered.stream == backtested(SEED, with_hostile=False)
    _msgs, stream = feed(Names("x"), SEED, with_hostile=False)
    for key in KEYS:
        applied = len({c.ts for c in stream if c.key == key})
        assert [len(clustered.stream[f"{kind}.{key.token}"]) for kind in KINDS] == [applied] * 3
    # The stack kept deciding on two nodes: it got from where it was at the kill to the end with the third down.
    assert cluster.servers[killed[0]].proc.poll() is not None
    assert during[0] < min(expected_last(stream, parse_strategy_config(CONFIG, {})).values())

    # Redis holds what a run on one server gives.
    single, _ = await stack_run(cluster.single.url, cluster.redis, tmp_path, f"s{namespace}", 1)
    assert single.stream == clustered.stream
    assert single.redis == clustered.redis

    # The node comes back on its store and catches up: current on every stream it holds a replica of.
    survivors = ",".join(f"nats://127.0.0.1:{n.port}" for n in cluster.nodes if n.name != killed[0])
    cluster.restart(killed[0])
    nc = await connect(survivors)
    try:
        deadline = time.monotonic() + 60
        while True:
            state = await current_everywhere(nc, killed[0])
            ours = {k: v for k, v in state.items() if namespace in k}
            if ours and all(v is True for v in ours.values()):
                break
            assert time.monotonic() < deadline, f"{killed[0]} not current: {state}"
            await asyncio.sleep(0.5)
        # Every stream and bucket of the run is R3 on 3 nodes: the node holds a replica of each, all current.
        assert len(ours) >= 4 + 5, ours  # OHLCV, REGIMES, TELEMETRY, DLQ and the services' KV buckets
    finally:
        await nc.close()


async def test_replicas_on_a_lone_server_stop_start_up_naming_the_setting(
    nats_server: ManagedServer, namespace: str
) -> None:
    """NATS_REPLICAS=3 against one server can never work: the service refuses to start (exit 2), naming the key."""
    from services.vol_regime.__main__ import build
    from shared.infra.service import serve
    from shared.infra.settings import Settings
    from tests.harness import small_config

    settings = Settings(nats_url=nats_server.url, namespace=namespace, nats_replicas=3)
    config = small_config([("AAA/USD", "CORE")])
    with pytest.raises(ConfigError, match="NATS_REPLICAS"):
        await serve("vol_regime", build, settings, config, asyncio.Event(), handle_signals=False)
