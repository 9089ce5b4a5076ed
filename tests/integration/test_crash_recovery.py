"""Same candles, same regimes: SIGKILL, a NATS restart and a Redis flush change no event and no snapshot.

The compute services and state_publisher run as real processes on servers of
this module's own (so a NATS restart disturbs no other test). A multi-series
history with regime changes, a gap, duplicates and hostile messages is
published, one symbol with a 5m series built from its 1m candles and the
screener deciding both on their consensus (the join's state under SIGKILL);
one run goes undisturbed, the others are SIGKILLed at seeded random points,
see NATS restarted once and Redis flushed once. Per series, the REGIMES stream
must hold exactly one vol event, one HMM event and one decision per candle,
byte-identical to the undisturbed run's and to ``regimes backtest`` over the
same candles, and Redis must hold the same snapshots, history, transitions
and consensus.

``REGIMES_SOAK=1`` runs more seeds over a longer history.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import msgpack
import numpy as np
import pytest
import redis.asyncio as aioredis

from regimes.backtest import backtest
from regimes.servers import ManagedServer, free_port, popen, start_nats, start_redis, stop_process
from shared.domain.aggregate import aggregate
from shared.domain.config import StrategyConfig, parse_strategy_config
from shared.domain.contracts import (
    MESSAGE_TYPES,
    Candle,
    DeadLetter,
    ScreenerDecision,
    decode,
    encode,
    events_in,
    to_plain,
)
from shared.domain.subjects import Names, SeriesKey, bar_close, timeframe_ms
from shared.infra.bus import connect, ensure_streams, now_ms, read_subject
from shared.infra.redis_keys import RedisKeys
from tests.factories import candle, candles_from_returns
from tests.harness import SMALL_VOL

ROOT = Path(__file__).resolve().parents[2]
SOAK = os.environ.get("REGIMES_SOAK") == "1"
SERVICES = ("vol_regime", "hmm_regime", "screener", "state_publisher")
KEYS = [SeriesKey("test", s, "1m") for s in ("AAA/USD", "BBB/USD", "CCC/USD")]
BUILT = SeriesKey("test", "AAA/USD", "5m")  # aggregated from AAA/USD's 1m candles (the universe's ``aggregate``)
SERIES = [*KEYS, BUILT]
BARS = 900 if SOAK else 260
SEEDS = range(1, 6) if SOAK else (1,)
CONFIG: dict[str, Any] = {
    # CCC/USD is left out of the universe: it must be classified, trained and decided all the same.
    "universe": [
        {"exchange": "test", "symbol": "AAA/USD", "timeframe": "1m", "tier": "CORE", "aggregate": ["5m"]},
        {"exchange": "test", "symbol": "BBB/USD", "timeframe": "1m", "tier": "CORE"},
    ],
    "consensus": {"enabled": True, "screener": True},
    "sizing": {"per_trade_nav_pct": 0.02},
    "vol_regimes": SMALL_VOL,
    "trend": {"fast_ema_bars": 3, "slow_ema_bars": 8, "score_scale": 0.004},
    "hmm": {
        "HMM_ENABLED": True,
        "HMM_BLEND_WITH_TREND": 0.5,
        "HMM_TRAINING_CANDLES": 120,
        "HMM_MIN_TRAIN_SAMPLES": 40,
        "HMM_RETRAIN_INTERVAL_SEC": 3600,
        "HMM_N_ITER": 10,
    },
}
VOLATILE = ("updated_at",)  # wall-clock stamps, the only fields allowed to differ


@dataclass(frozen=True)
class Message:
    subject: str
    data: bytes
    msg_id: str | None


def history(key: SeriesKey, seed: int) -> list[Candle]:
    """Calm, wild and trending stretches (regime changes for both models), with a 6-bar gap."""
    rng = np.random.default_rng(seed)
    parts, n = [], 0
    while n < BARS:
        sigma, drift = [(0.001, 0.0), (0.02, 0.0), (0.003, 0.002), (0.003, -0.002)][int(rng.integers(4))]
        size = int(rng.integers(20, 60))
        parts.append(rng.normal(drift, sigma, size))
        n += size
    candles = candles_from_returns(key, np.concatenate(parts)[:BARS].tolist())
    return candles[:120] + candles[126:]


class Prices(TypedDict):
    """A candle's prices and volume, as keyword arguments of the candle builder or fields of a raw payload."""

    open: float
    high: float
    low: float
    close: float
    volume: float


def hostile(names: Names) -> list[Message]:
    """What an attacker or a broken producer sends: each must be dead-lettered and change nothing."""
    key = KEYS[0]
    subject = names.ohlcv(key)
    good = {"kind": "candle", "exchange": key.exchange, "symbol": key.symbol, "timeframe": "1m", "v": 1}
    bar: Prices = {"open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 1.0}
    future = msgpack.packb({**good, **bar, "ts": 6_000_000_000_000})  # 2160
    nan = msgpack.packb({**good, **bar, "close": math.nan, "ts": 1_700_000_040_000})
    spoof = encode(candle(key=SeriesKey("test", "SPOOF/USD", "1m"), ts=1_700_003_040_000, **bar))
    huge = msgpack.packb({**good, **bar, "ts": 1_700_000_040_000, "pad": "x" * 900_000})
    return [
        Message(subject, b"\xc1 not msgpack", None),
        Message(subject, future, None),
        Message(subject, nan, None),
        Message(subject, spoof, None),
        Message(subject, huge, None),
    ]


def _by_close(c: Candle) -> tuple[int, str, int]:
    """In the order the bars close, as ingest publishes them (a 5m bar after the 1m bar that ends it)."""
    return bar_close(c.ts, c.timeframe), c.symbol, timeframe_ms(c.timeframe)


def feed(names: Names, seed: int, with_hostile: bool) -> tuple[list[Message], list[Candle]]:
    """The messages to publish, and the candles they carry in stream order (for the backtest)."""
    series = [history(k, seed * 10 + i) for i, k in enumerate(KEYS)]
    series.append(aggregate(series[0], BUILT.timeframe))
    merged = sorted((c for s in series for c in s), key=_by_close)
    stream: list[Candle] = list(merged)
    msgs = [Message(names.ohlcv(c.key), encode(c), c.msg_id) for c in merged]
    if with_hostile:
        rng = random.Random(seed)
        # Duplicates without a message id land in the stream twice: consumers must skip the second copy,
        # a late one (an older candle after newer ones) included.
        for _ in range(8):
            i = rng.randrange(10, len(merged))
            dup = merged[rng.randrange(max(0, i - 30), i)]
            msgs.insert(i, Message(names.ohlcv(dup.key), encode(dup), None))
            stream.insert(i, dup)
        for j, bad in enumerate(hostile(names)):
            msgs.insert(40 + 97 * j, bad)
    return msgs, stream


@dataclass
class Procs:
    """The four services as real processes, SIGKILLable and restartable."""

    env: dict[str, str]
    logs: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str) -> None:
        """Start ``name``: a service, or ``service#n`` for one more replica of it."""
        module = f"services.{name.split('#')[0]}"
        self.running[name] = popen([sys.executable, "-m", module], env=self.env, log=self.logs / name)

    def kill(self, name: str) -> None:
        """SIGKILL, and check nothing it started outlives it (hmm_regime's training worker)."""
        proc = self.running.pop(name)
        children = children_of(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 30  # a worker caught mid-start on a loaded machine takes a while to exit
        while children and time.monotonic() < deadline:
            children = [pid for pid in children if Path(f"/proc/{pid}").exists() and not zombie(pid)]
            time.sleep(0.05)
        assert not children, f"{name}'s children {children} outlived it"

    def stop_all(self) -> None:
        for proc in self.running.values():
            stop_process(proc)
        self.running.clear()


def children_of(pid: int) -> list[int]:
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            out.append(int(status.parent.name))
    return out


def zombie(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


@dataclass
class Servers:
    nats: ManagedServer
    redis: ManagedServer
    nats_dir: Path

    def restart_nats(self) -> None:
        self.nats.proc.send_signal(signal.SIGKILL)
        self.nats.proc.wait(10)
        self.nats = start_nats(self.nats_dir, port=self.nats.port)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    nats_dir = tmp_path_factory.mktemp("crash-nats")
    s = Servers(start_nats(nats_dir, port=free_port()), start_redis(tmp_path_factory.mktemp("crash-redis")), nats_dir)
    yield s
    s.nats.stop()
    s.redis.stop()


@dataclass(frozen=True)
class Faults:
    seed: int
    kills: int = 6
    restart_nats: bool = True
    flush_redis: bool = True
    pace_s: float = 0.0  # pause after each published message; 0: as fast as possible


@dataclass(frozen=True)
class Scaling:
    """Replicas join (1 -> 3) a third of the way in and are SIGKILLed (3 -> 2) two thirds in, candles flowing."""

    seed: int


@dataclass
class Outcome:
    stream: dict[str, list[bytes]]  # subject (namespace stripped) -> message bytes in stream order
    redis: dict[str, Any]
    dead_letters: list[dict[str, Any]]


async def run(
    servers: Servers, tmp: Path, seed: int, faults: Faults | Scaling | None, import_files: bool = False
) -> Outcome:
    # Each run its own namespace: the fault schedules of one seed differ by their own seeds.
    kind = "u" if faults is None else f"{'s' if isinstance(faults, Scaling) else 'f'}{faults.seed}"
    namespace = f"c{seed}{kind}{'i' if import_files else ''}{os.getpid() % 1000}"
    names = Names(namespace)
    cfg_path = tmp / f"{namespace}.json"
    cfg_path.write_text(json.dumps(CONFIG))
    logs = tmp / f"logs-{namespace}"
    logs.mkdir()
    env = {
        **os.environ,
        "NATS_URL": servers.nats.url,
        "REDIS_URL": servers.redis.url,
        "REGIMES_NAMESPACE": namespace,
        "STRATEGY_CONFIG": str(cfg_path),
        "HEALTH_INTERVAL_SEC": "0.5",
        # A SIGKILLed replica's partitions are taken over within about this long (the default is 5 s).
        "LEASE_TTL_SEC": "2",
        "PYTHONPATH": str(ROOT),
    }
    msgs, stream = feed(names, seed, with_hostile=not import_files)
    expected = expected_last(stream, parse_strategy_config(CONFIG, {}))
    nc = await connect(servers.nats.url, "crash-test", attempts=5)
    await ensure_streams(nc.jetstream(), names, 14)
    procs = Procs(env, logs)
    rng = random.Random(seed)
    for name in SERVICES:
        procs.start(name)
    try:
        if import_files:
            await import_interrupted(env, tmp / f"files-{namespace}", stream, rng)
        elif isinstance(faults, Scaling):
            await publish_scaling(nc, procs, msgs, rng)
        else:
            await publish(nc, servers, procs, msgs, faults, rng)
        if isinstance(faults, Faults):
            for _ in range(2):  # and while they catch up
                await asyncio.sleep(rng.uniform(0.2, 1.5))
                victim = rng.choice(SERVICES)
                procs.kill(victim)
                procs.start(victim)
        nc = await settled(nc, servers, names, expected, procs)
        outcome = await collect(nc, servers, names)
    finally:
        procs.stop_all()
        await nc.close()
    return outcome


async def publish(
    nc: Any, servers: Servers, procs: Procs, msgs: list[Message], faults: Faults | None, rng: Any
) -> None:
    names_at = {}
    if faults is not None:
        points = sorted(rng.sample(range(len(msgs)), faults.kills + 2))
        names_at = {p: rng.choice(SERVICES) for p in points[: faults.kills]}
        if faults.restart_nats:
            names_at[points[-2]] = "nats"
        if faults.flush_redis:
            names_at[points[-1]] = "redis"
    i = 0
    while i < len(msgs):
        m = msgs[i]
        try:
            await nc.jetstream().publish(m.subject, m.data, headers={"Nats-Msg-Id": m.msg_id} if m.msg_id else None)
        except Exception:  # NATS is restarting: the client reconnects; publish the same message again
            await asyncio.sleep(0.2)
            continue
        what = names_at.pop(i, None)
        if what == "nats":
            servers.restart_nats()
        elif what == "redis":
            r = aioredis.from_url(servers.redis.url)
            await r.flushall()
            await r.aclose()
        elif what is not None:
            await asyncio.sleep(rng.uniform(0.0, 0.3))  # mid-batch, mid-flush or mid-commit: wherever it lands
            procs.kill(what)
            procs.start(what)
        if faults is not None and faults.pace_s:
            await asyncio.sleep(faults.pace_s)
        i += 1


SCALED = ("vol_regime", "hmm_regime", "screener")


async def publish_scaling(nc: Any, procs: Procs, msgs: list[Message], rng: Any) -> None:
    procs.start("state_publisher#2")  # a standby from the start
    third = len(msgs) // 3
    for i, m in enumerate(msgs):
        await nc.jetstream().publish(m.subject, m.data, headers={"Nats-Msg-Id": m.msg_id} if m.msg_id else None)
        if i == third:
            for name in SCALED:
                procs.start(f"{name}#2")
                procs.start(f"{name}#3")
        elif i == 2 * third:
            for name in SCALED:
                procs.kill(rng.choice([name, f"{name}#2", f"{name}#3"]))
            procs.kill("state_publisher")  # the standby takes over from here
        if i % 50 == 0:
            await asyncio.sleep(0.05)  # let the joins and handovers happen while candles still flow


def write_freqtrade_files(folder: Path, stream: list[Candle]) -> None:
    folder.mkdir()
    for key in KEYS:
        rows = [[c.ts, c.open, c.high, c.low, c.close, c.volume] for c in stream if c.key == key]
        (folder / f"{key.symbol.replace('/', '_')}-1m.json").write_text(json.dumps(rows))


async def import_interrupted(env: dict[str, str], folder: Path, stream: list[Candle], rng: Any) -> None:
    """``regimes import`` of freqtrade files, SIGKILLed part-way, then run again to the end."""
    await asyncio.to_thread(write_freqtrade_files, folder, stream)
    args = [sys.executable, "-m", "regimes.cli", "import", str(folder), "--exchange", "test"]
    first = popen(args, env=env)
    await asyncio.sleep(rng.uniform(1.0, 2.5))
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    again = await asyncio.create_subprocess_exec(*args, env=env, stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(again.communicate(), 120)
    assert again.returncode == 0, err.decode()[-2000:]


def expected_last(stream: list[Candle], config: StrategyConfig) -> dict[str, int]:
    """Per series token, the ts of the last decision the stack must reach."""
    return {e.key.token: e.ts for e in backtest(stream, config, now_ms()) if isinstance(e, ScreenerDecision)}


KINDS = ("vol_regime", "hmm_regime", "screener_decision")


async def settled(nc: Any, servers: Servers, names: Names, expected: dict[str, int], procs: Procs) -> Any:
    """Wait until Redis shows every series' last decision and has read all of REGIMES; fail with the logs."""
    deadline = time.monotonic() + (600 if SOAK else 150)
    last: Any = None
    while time.monotonic() < deadline:
        try:
            info = await nc.jetstream().stream_info(names.stream_regimes)
            position, decided = await redis_progress(servers, names)
            last = (decided, position, info.state.last_seq)
            if decided == expected and position == info.state.last_seq:
                return nc
        except Exception as exc:  # NATS restarting under us
            last = exc
        await asyncio.sleep(0.3)
    tails = {n: (procs.logs / n).read_text()[-3000:] for n in SERVICES if (procs.logs / n).exists()}
    raise AssertionError(f"not settled: {last}; logs: {json.dumps(tails, indent=1)[-12000:]}")


async def redis_progress(servers: Servers, names: Names) -> tuple[int, dict[str, int]]:
    """state_publisher's position, and each series' last decision ts in its snapshot."""
    r = aioredis.from_url(servers.redis.url, decode_responses=True)
    try:
        raw = await r.get(names.redis_key("position", names.durable("state_publisher")))
        snaps = await r.mget([names.redis_key("symbol", k.token) for k in SERIES])
    finally:
        await r.aclose()
    decided = {}
    for key, snap in zip(SERIES, snaps, strict=True):
        screener = json.loads(snap)["screener"] if snap else None
        if screener:
            decided[key.token] = screener["ts"]
    return int(raw or 0), decided


async def collect(nc: Any, servers: Servers, names: Names) -> Outcome:
    js = nc.jetstream()
    stream: dict[str, list[bytes]] = {}
    kinds = tuple(MESSAGE_TYPES.values())
    for subjects in (names.vol_all, names.hmm_all, names.screener_all):
        for msg in await read_subject(js, names.stream_regimes, subjects, keep_last=0, decode_as=kinds):
            # Batches are transport: what must match is every event, one by one.
            for event in events_in(msg):
                stream.setdefault(f"{type(event).KIND}.{event.key.token}", []).append(encode(event))
    dead = await read_subject(js, names.stream_dlq, names.dlq_all, keep_last=0, decode_as=(DeadLetter,))
    letters = [to_plain(d) for d in dead]
    r = aioredis.from_url(servers.redis.url, decode_responses=True)
    try:
        state: dict[str, Any] = {}
        for key in SERIES:
            t = key.token
            snap = json.loads(await r.get(names.redis_key("symbol", t)) or "null")
            state[t] = {
                "snapshot": {k: v for k, v in (snap or {}).items() if k not in VOLATILE},
                "history": await r.lrange(names.redis_key("history", t), 0, -1),
                "transitions": await r.lrange(names.redis_key("transitions", t), 0, -1),
            }
        state["consensus"] = json.loads(await r.get(RedisKeys(names).consensus("test", "AAA/USD")) or "null")
        summary = json.loads(await r.get(names.redis_key("summary")) or "{}")
        state["summary"] = {k: v for k, v in summary.items() if k not in VOLATILE}
    finally:
        await r.aclose()
    return Outcome(stream, state, letters)


def backtested(seed: int, with_hostile: bool) -> dict[str, list[bytes]]:
    _msgs, stream = feed(Names("x"), seed, with_hostile)
    out: dict[str, list[bytes]] = {}
    for event in backtest(stream, parse_strategy_config(CONFIG, {}), now_ms()):
        out.setdefault(f"{type(event).KIND}.{event.key.token}", []).append(encode(event))
    return out


@pytest.fixture(scope="module")
def undisturbed(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, bool], Outcome]:
    """The reference runs, one per seed and feed: nothing killed, nothing restarted."""
    tmp = tmp_path_factory.mktemp("undisturbed")
    runs = [(seed, imp) for seed in SEEDS for imp in (False, True)]
    return {(seed, imp): asyncio.run(run(servers, tmp, seed, None, import_files=imp)) for seed, imp in runs}


def assert_same(run_: Outcome, ref: Outcome) -> None:
    assert run_.stream.keys() == ref.stream.keys()
    for subject, events in ref.stream.items():
        assert run_.stream[subject] == events, subject
    for part, value in ref.redis.items():
        assert run_.redis[part] == value, part


@pytest.mark.parametrize("seed", SEEDS)
def test_the_stack_gives_exactly_what_the_backtest_gives(seed: int, undisturbed: dict[Any, Outcome]) -> None:
    ref = undisturbed[(seed, False)]
    expected = backtested(seed, with_hostile=True)
    assert ref.stream == expected
    for key in KEYS:  # one vol event, one HMM event and one decision per applied candle
        _msgs, stream = feed(Names("x"), seed, with_hostile=True)
        applied = len({c.ts for c in stream if c.key == key})
        assert [len(ref.stream[f"{kind}.{key.token}"]) for kind in KINDS] == [applied] * 3
        assert ref.redis[key.token]["snapshot"]["screener"] is not None
        assert ref.redis[key.token]["history"]
    joined = [decode(d).consensus for d in ref.stream[f"screener_decision.{BUILT.token}"]]
    assert any(c is not None and "1m" in c.voting for c in joined), "the 5m bars were decided with the 1m verdicts"
    assert ref.redis["consensus"] is not None


@pytest.mark.parametrize("seed", SEEDS)
def test_hostile_messages_are_dead_lettered_bounded_and_change_nothing(
    seed: int, undisturbed: dict[Any, Outcome]
) -> None:
    letters = undisturbed[(seed, False)].dead_letters
    reasons = {(d["service"], d["reason"].split(":")[0].split(" ")[0]) for d in letters}
    for service in ("vol_regime", "hmm_regime"):
        assert sum(1 for s, _ in reasons if s == service) >= 4, reasons
    assert all(len(msgpack.packb(d)) < 8192 for d in letters)
    assert any(d["payload_size"] > 900_000 for d in letters)
    # The hostile messages changed nothing: the stack equals a backtest that never saw them.
    assert undisturbed[(seed, False)].stream == backtested(seed, with_hostile=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_sigkills_a_nats_restart_and_a_redis_flush_change_no_event_and_no_snapshot(
    seed: int, servers: Servers, tmp_path: Path, undisturbed: dict[Any, Outcome]
) -> None:
    disturbed = asyncio.run(run(servers, tmp_path, seed, Faults(seed)))
    assert_same(disturbed, undisturbed[(seed, False)])


@pytest.mark.parametrize("seed", SEEDS)
def test_a_slow_run_with_sigkills_gives_the_same_as_a_fast_one(
    seed: int, servers: Servers, tmp_path: Path, undisturbed: dict[Any, Outcome]
) -> None:
    slow = Faults(seed + 100, kills=3, restart_nats=False, flush_redis=False, pace_s=0.004)
    disturbed = asyncio.run(run(servers, tmp_path, seed, slow))
    assert_same(disturbed, undisturbed[(seed, False)])


@pytest.mark.parametrize("seed", SEEDS)
def test_an_interrupted_and_rerun_import_gives_the_same_as_one_import(
    seed: int, servers: Servers, tmp_path: Path, undisturbed: dict[Any, Outcome]
) -> None:
    disturbed = asyncio.run(run(servers, tmp_path, seed, Faults(seed + 200, kills=2), import_files=True))
    assert_same(disturbed, undisturbed[(seed, True)])


@pytest.mark.parametrize("seed", SEEDS)
def test_replicas_joining_and_sigkilled_while_candles_flow_change_no_event_and_no_snapshot(
    seed: int, servers: Servers, tmp_path: Path, undisturbed: dict[Any, Outcome]
) -> None:
    scaled = asyncio.run(run(servers, tmp_path, seed, Scaling(seed)))
    assert_same(scaled, undisturbed[(seed, False)])
