"""The whole pipeline as real processes: bulk imports, live bursts and the API, on servers of its own.

A nats-server and a Redis on free ports in a temp dir; per case a fresh namespace and fresh
vol_regime, hmm_regime, screener and state_publisher processes (dashboard_api for the API).

* ``NxM``: ``regimes import`` of N freqtrade files of M random-walk 1m candles. End to end =
  first publish (the first OHLCV message seen on a core subscription) until state_publisher's
  position is REGIMES' last sequence and every series' snapshot shows its last candle; the
  same from the import command's start (its Python start-up and file reading included) beside it.
  CPU µs per candle = utime+stime of each process tree (/proc; the import's from wait4).
  Per service candles/s = candles / wall time from the first publish until that service's last
  output message arrived (state_publisher: settled).
  ``100x500`` and ``10x200`` also compare every decision with ``regimes backtest``.
* ``burstN``: N series warmed with WARM_BARS live candles each and settled, then one closed
  candle per series published at once; candle -> decision (core NATS arrival) and candle ->
  Redis (pub/sub change notice, then a GET showing the new screener ts), ms from the publish.
* ``apiN`` (``api``: 1000 series, 100 with --quick): wrk on dashboard_api over the Redis a case
  with N series filled (an ``Nx3`` import first when none ran).

    .venv/bin/python bench/bench_pipeline.py [--quick] [--cases 1x20000 burst1000 api ...] [--max-wait S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import numpy as np
import redis.asyncio as aioredis
from nats.js.errors import NotFoundError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from regimes.servers import ManagedServer, free_port, popen, start_nats, start_redis, stop_process  # noqa: E402
from shared.domain.contracts import (  # noqa: E402
    Candle,
    ScreenerDecision,
    ScreenerDecisionBatch,
    events_in,
    to_plain,
)
from shared.domain.subjects import Names  # noqa: E402
from shared.infra.acks import AckPipeline  # noqa: E402
from shared.infra.bus import publish_candles, publish_messages, read_subject  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, however it is run
from pipeline_data import BAR_MS, EXCHANGE, candle, last_closed_ts, series_keys, write_config, write_files  # noqa: E402
from pipeline_report import print_block, print_table  # noqa: E402
from proc_stats import proc_table, rss_mb, tree_cpu_us, until_quiet  # noqa: E402

WARM_BARS = 2
COMPUTE = ("vol_regime", "hmm_regime", "screener", "state_publisher")
FULL_CASES = ("1x20000", "100x500", "1000x50", "10000x10", "burst100", "burst1000", "burst10000", "api")
QUICK_CASES = ("1x2000", "10x200", "burst100", "api")
CHECKED = frozenset({"100x500", "10x200"})


class CaseFailed(RuntimeError):
    """A case that could not finish in its time budget; the message says what was reached."""


@dataclass
class Bench:
    """The run's servers, options and the namespaces cases left filled in Redis (series count -> ns, config)."""

    tmp: Path
    nats: ManagedServer
    redis: ManagedServer
    quick: bool
    max_wait: float | None
    stamp: str
    profile: Path | None = None  # py-spy's collapsed stacks of every service go here (--profile)
    filled: dict[int, tuple[str, Path]] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)  # case -> times run: a case named twice gets a namespace each

    def namespace(self, name: str) -> str:
        """A fresh namespace for a run of case ``name`` (``--cases burst1000 burst1000`` runs it twice)."""
        n = self.runs[name] = self.runs.get(name, 0) + 1
        return f"b{self.stamp}_{name}" + (f"_{n}" if n > 1 else "")

    def env(self, namespace: str, config: Path) -> dict[str, str]:
        return {
            **os.environ, "NATS_URL": self.nats.url, "REDIS_URL": self.redis.url, "REGIMES_NAMESPACE": namespace,
            "STRATEGY_CONFIG": str(config), "HEALTH_INTERVAL_SEC": "2", "PYTHONPATH": str(ROOT),
        }

    def budget(self, candles: int) -> float:
        """Seconds a case may wait for the stack: 60 + candles / 100, within [120, 1200], capped by --max-wait."""
        wait = min(1200.0, max(120.0, 60 + candles / 100))
        return min(wait, self.max_wait) if self.max_wait else wait


@dataclass
class Procs:
    """Running services by name, and the folder of their logs."""

    logs: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def tails(self) -> str:
        return "\n".join(f"--- {n}:\n" + (self.logs / n).read_text(errors="replace")[-1500:] for n in self.running)


@contextlib.contextmanager
def services(bench: Bench, env: dict[str, str], names: tuple[str, ...]) -> Iterator[Procs]:
    """The named services as real processes, logging to the temp dir; stopped (SIGTERM, then SIGKILL) after."""
    logs = bench.tmp / f"logs-{env['REGIMES_NAMESPACE']}"
    logs.mkdir(exist_ok=True)
    procs = Procs(logs)
    try:
        for name in names:
            cmd = [sys.executable, "-m", f"services.{name}"]
            if bench.profile is not None:  # py-spy stops with its target and writes the stacks then
                out = bench.profile / f"{env['REGIMES_NAMESPACE']}-{name}.txt"
                cmd = ["py-spy", "record", "--format", "raw", "--subprocesses", "--rate", "200", "-o", str(out),
                       "--", *cmd]
            procs.running[name] = popen(cmd, env=env, log=logs / name)
        yield procs
    finally:
        for proc in procs.running.values():
            if bench.profile is not None:  # the service itself, so py-spy sees it end and writes its stacks
                for child in [p for p, (pp, _) in proc_table().items() if pp == proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
            stop_process(proc)


async def wait_ready(js: Any, names: Names, procs: Procs, timeout: float = 90.0) -> None:
    """Until every compute service has created its durable consumer."""
    streams = {"vol_regime": names.stream_ohlcv, "hmm_regime": names.stream_ohlcv}
    deadline = time.monotonic() + timeout
    missing = [n for n in procs.running if n != "dashboard_api"]
    while missing and time.monotonic() < deadline:
        for name in list(missing):
            if procs.running[name].poll() is not None:
                raise CaseFailed(f"{name} exited with {procs.running[name].returncode}\n{procs.tails()}")
            # A replica's consumer is named ``<service>-<replica id>``: any of them means the service is reading.
            prefix = names.durable(name) + "-"
            with contextlib.suppress(NotFoundError):
                consumers = await js.consumers_info(streams.get(name, names.stream_regimes))
                if any(c.name.startswith(prefix) for c in consumers):
                    missing.remove(name)
        await asyncio.sleep(0.2)
    if missing:
        raise CaseFailed(f"not ready after {timeout:.0f}s: {missing}\n{procs.tails()}")
    # Then until start-up work is over (hmm_regime's training worker imports hmmlearn): the CPU of a case is
    # that of its candles, not of a process start.
    await until_quiet({n: p.pid for n, p in procs.running.items()}, 30.0)


class Arrivals:
    """Messages seen on a core subscription: how many, when the first and last came, first arrival per series."""

    def __init__(self, names: Names, since: float = float("inf")) -> None:
        self.names, self.since, self.count, self.last, self.first_at = names, since, 0, 0.0, 0.0
        self.first: dict[str, float] = {}

    async def on_msg(self, msg: Any) -> None:
        now = time.monotonic()
        if not self.count:
            self.first_at = now
        self.count, self.last = self.count + 1, now
        if now >= self.since:
            self.first.setdefault(self.names.series_of(msg.subject).token, now)


class _ScreenerTs(msgspec.Struct):
    ts: int | None = None


class _SnapshotTs(msgspec.Struct):
    """The one field of a snapshot the burst waits for; msgspec skips the rest without building it."""

    screener: _ScreenerTs | None = None


# The observer shares the two cores with the stack: json.loads of every 1.6 kB snapshot it looks at cost
# about as much CPU per series as a service.
_snapshot_ts = msgspec.json.Decoder(_SnapshotTs).decode


async def in_redis(r: aioredis.Redis, names: Names, want: dict[str, int]) -> set[str]:
    """Tokens whose snapshot's screener.ts equals ``want[token]`` (MGET in chunks of 1000)."""
    tokens, done = list(want), set()
    for i in range(0, len(tokens), 1000):
        chunk = tokens[i : i + 1000]
        for token, raw in zip(chunk, await r.mget([names.redis_key("symbol", t) for t in chunk]), strict=True):
            screener = _snapshot_ts(raw).screener if raw else None
            if screener is not None and screener.ts == want[token]:
                done.add(token)
    return done


async def settle(js: Any, r: aioredis.Redis, names: Names, want: dict[str, int], fed: asyncio.Future[Any],
                 budget: float) -> float:
    """Monotonic time (to 0.02 s) from which the feed was done, state_publisher's position was REGIMES' last
    sequence and every series' snapshot showed its last candle (written in one MULTI with the position);
    CaseFailed with what was reached after ``budget`` s."""
    deadline, checked, since, done = time.monotonic() + budget, 0.0, 0.0, set[str]()
    position_key, reached = names.redis_key("position", names.durable("state_publisher")), (0, 0)
    while time.monotonic() < deadline:
        now = time.monotonic()
        if fed.done() and fed.exception() is not None:
            raise fed.exception()  # type: ignore[misc]
        last = reached
        reached = (int(await r.get(position_key) or 0), (await js.stream_info(names.stream_regimes)).state.last_seq)
        since = since if reached == last else now
        if fed.done() and reached[0] == reached[1] > 0 and now - checked > 0.5:
            checked = now
            done |= await in_redis(r, names, {t: ts for t, ts in want.items() if t not in done})
            if len(done) == len(want):
                return since
        await asyncio.sleep(0.02)
    raise CaseFailed(f"not settled in {budget:.0f}s: position {reached[0]} of REGIMES last_seq {reached[1]}, "
                     f"feed {'done' if fed.done() else 'still running'}, {len(done)}/{len(want)} series in Redis")


async def run_import(env: dict[str, str], folder: Path, logs: Path, budget: float) -> dict[str, Any]:
    """``regimes import`` as a subprocess: its reported rate (candles/s), wall s and CPU µs (wait4 rusage)."""
    log = logs / "import"
    started = time.monotonic()
    proc = popen([sys.executable, "-m", "regimes.cli", "import", str(folder), "--exchange", EXCHANGE], env=env, log=log)
    waiter = asyncio.ensure_future(asyncio.to_thread(os.wait4, proc.pid, 0))
    try:
        await asyncio.wait([waiter], timeout=budget)
    finally:
        if not waiter.done():
            proc.kill()
    _pid, status, usage = await waiter
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall, text = time.monotonic() - started, log.read_text(errors="replace")
    if proc.returncode != 0:
        raise CaseFailed(f"import exited with {proc.returncode} after {wall:.0f}s: {text[-800:]}")
    rates = re.findall(r"([\d,]+)/s", text)
    return {"reported_rate": float(rates[-1].replace(",", "")) if rates else None, "wall_s": wall,
            "cpu_us": (usage.ru_utime + usage.ru_stime) * 1e6, "started": started}


async def bare_consumer(js: Any, names: Names, candles: int) -> dict[str, Any]:
    """A plain pull consumer over the whole OHLCV stream (fetch 500, ``await msg.ack()`` each): messages/s,
    and candles/s (the stream's candles / the same time), None if it could not read them all in 120 s."""
    durable, total = names.durable("bench_reference"), (await js.stream_info(names.stream_ohlcv)).state.messages
    sub = await js.pull_subscribe(names.ohlcv_all, durable=durable, stream=names.stream_ohlcv)
    got, started = 0, time.monotonic()
    try:
        while got < total and time.monotonic() - started < 120:
            with contextlib.suppress(TimeoutError):
                for msg in await sub.fetch(min(500, total - got), timeout=2):
                    await msg.ack()
                    got += 1
        elapsed = time.monotonic() - started
    finally:
        await sub.unsubscribe()
        await js.delete_consumer(names.stream_ohlcv, durable)
    rate = got / elapsed if got == total else None
    return {"messages": total, "msgs_per_s": rate, "candles_per_s": rate and rate * candles / total}


async def read_decisions(js: Any, names: Names) -> list[dict[str, Any]]:
    """Every screener decision of the REGIMES stream, one plain map each (batches unpacked)."""
    stored = await read_subject(js, names.stream_regimes, names.screener_all, keep_last=0,
                                decode_as=(ScreenerDecision, ScreenerDecisionBatch))
    return [to_plain(d) for m in stored for d in events_in(m)]


def by_series(msgs: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """The events of single and ``*_batch`` messages per series, in order, without ``kind`` (batched ones have none)."""
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for msg in msgs:
        for e in msg["events"] if str(msg.get("kind", "")).endswith("_batch") else [msg]:
            out.setdefault((e["exchange"], e["symbol"], e["timeframe"]), []).append(
                {k: v for k, v in e.items() if k != "kind"})
    return out


async def compare_backtest(js: Any, names: Names, env: dict[str, str], folder: Path, out: Path) -> dict[str, Any]:
    """``regimes backtest`` over the same files against the stack's decisions: equal per series, field by field."""
    args = ["-m", "regimes.cli", "backtest", str(folder), "--exchange", EXCHANGE, "--config", env["STRATEGY_CONFIG"],
            "--out", str(out)]
    proc = await asyncio.create_subprocess_exec(sys.executable, *args, env=env, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)
    try:
        _o, err = await asyncio.wait_for(proc.communicate(), 600)
    except TimeoutError:
        proc.kill()
        raise CaseFailed("backtest took over 600s") from None
    if proc.returncode != 0:
        raise CaseFailed(f"backtest exited with {proc.returncode}: {err.decode()[-800:]}")
    text = await asyncio.to_thread(out.read_text)
    lines = (json.loads(line) for line in text.splitlines() if line)
    expected = by_series(m for m in lines if m.get("kind", "").startswith("screener_decision"))
    actual = by_series(await read_decisions(js, names))
    equal = expected == actual
    return {"equal": equal, "compared": sum(len(v) for v in expected.values()),
            "stack": sum(len(v) for v in actual.values())}


@contextlib.asynccontextmanager
async def clients(bench: Bench) -> AsyncIterator[tuple[Any, aioredis.Redis]]:
    """A NATS connection and a Redis client of the bench itself, closed after."""
    nc = await nats.connect(bench.nats.url, name="bench", max_reconnect_attempts=3)
    r = aioredis.from_url(bench.redis.url)
    try:
        yield nc, r
    finally:
        await r.aclose()
        await nc.close()


async def bulk_case(bench: Bench, name: str, series: int, bars: int) -> dict[str, Any]:
    """One bulk import of ``series`` x ``bars`` candles, measured end to end (see the module doc)."""
    ns, keys, candles = bench.namespace(name), series_keys(series), series * bars
    names, folder = Names(ns), bench.tmp / f"files-{ns}"
    want = await asyncio.to_thread(write_files, folder, keys, bars, seed=series * 7919 + bars)
    env = bench.env(ns, write_config(bench.tmp / f"{ns}.json", keys[0]))
    res: dict[str, Any] = {"case": name, "series": series, "bars": bars, "candles": candles}
    async with clients(bench) as (nc, r):
        js = nc.jetstream()
        with services(bench, env, COMPUTE) as procs:
            await wait_ready(js, names, procs)
            outputs = {"vol_regime": Arrivals(names), "hmm_regime": Arrivals(names), "screener": Arrivals(names)}
            for svc, subject in zip(outputs, (names.vol_all, names.hmm_all, names.screener_all), strict=True):
                await nc.subscribe(subject, cb=outputs[svc].on_msg)
            published = Arrivals(names)
            await nc.subscribe(names.ohlcv_all, cb=published.on_msg)
            pids = {n: p.pid for n, p in procs.running.items()} | {
                "nats-server": bench.nats.proc.pid, "redis-server": bench.redis.proc.pid}
            rss0, cpu0 = rss_mb(pids["hmm_regime"]), tree_cpu_us(pids)
            feed = asyncio.ensure_future(run_import(env, folder, procs.logs, bench.budget(candles)))
            t_end = await settle(js, r, names, want, feed, bench.budget(candles))
            cpu1, imp = tree_cpu_us(pids), feed.result()
            res["rss_mb"] = {n: rss_mb(p) for n, p in pids.items()}
        res["import"] = {k: v for k, v in imp.items() if k != "started"}
        started = published.first_at if published.count else imp["started"]
        res["e2e_s"] = t_end - started
        res["e2e_rate"] = candles / res["e2e_s"]
        res["from_command_s"] = t_end - imp["started"]
        res["cpu_us_per_candle"] = {n: (cpu1[n] - cpu0[n]) / candles for n in pids} | {
            "import": imp["cpu_us"] / candles}
        res["service_rate"] = {n: candles / (a.last - started) if a.count else None for n, a in outputs.items()} | {
            "state_publisher": res["e2e_rate"]}
        res["output_messages"] = {n: a.count for n, a in outputs.items()}
        res["hmm_bytes_per_series"] = (res["rss_mb"]["hmm_regime"] - rss0) * 1024 * 1024 / series
        res["bare_consumer"] = await bare_consumer(js, names, candles)
        if name in CHECKED:
            res["backtest"] = await compare_backtest(js, names, env, folder, bench.tmp / f"{ns}.jsonl")
    bench.filled[series] = (ns, Path(env["STRATEGY_CONFIG"]))
    return res


async def redis_arrivals(r: aioredis.Redis, names: Names, want: dict[str, int], seen: dict[str, float],
                         ids: dict[str, str]) -> None:
    """Until cancelled: on each change notice, GET the series it lists and stamp those showing their new candle;
    every 5 s also the rest (a missed notice then costs at most 5 s)."""
    pubsub = r.pubsub()
    await pubsub.subscribe(names.redis_key("changes"))
    polled = time.monotonic()
    try:
        while len(seen) < len(want):
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            now = time.monotonic()
            listed = [ids[s] for s in json.loads(msg["data"])["series"] if s in ids] if msg else []
            if now - polled > 5.0:
                listed, polled = list(want), now
            todo = {t: want[t] for t in listed if t not in seen}
            for token in await in_redis(r, names, todo) if todo else ():
                seen[token] = now
    finally:
        await pubsub.aclose()


def spread(latencies: list[float]) -> dict[str, float | None]:
    """p50 / p99 / max in ms of latencies given in s."""
    if not latencies:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    a = np.array(latencies) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


async def burst_case(bench: Bench, name: str, series: int) -> dict[str, Any]:
    """``series`` series warmed with WARM_BARS candles each and settled, then one candle each, all at once."""
    ns, keys = bench.namespace(name), series_keys(series)
    names, base = Names(ns), last_closed_ts()
    env = bench.env(ns, write_config(bench.tmp / f"{ns}.json", keys[0]))
    prices = dict(zip(keys, np.random.default_rng(series).uniform(1.0, 1000.0, series).tolist(), strict=True))
    warm = [candle(k, base - (WARM_BARS - i) * BAR_MS, p * 1.001**i) for i in range(WARM_BARS)
            for k, p in prices.items()]
    async with clients(bench) as (nc, r):
        js = nc.jetstream()
        with services(bench, env, COMPUTE) as procs:
            await wait_ready(js, names, procs)
            fed = asyncio.ensure_future(publish_messages(AckPipeline(nc, timeout=120.0), names, warm))  # live: one each
            await settle(js, r, names, {k.token: base - BAR_MS for k in keys}, fed, bench.budget(len(warm)))
            pids = {n: p.pid for n, p in procs.running.items()} | {
                "nats-server": bench.nats.proc.pid, "redis-server": bench.redis.proc.pid}
            cpu0, own0 = tree_cpu_us(pids), time.process_time()
            res = await burst(bench, nc, r, names, [candle(k, base, p * 1.001**WARM_BARS) for k, p in prices.items()])
            own = (time.process_time() - own0) * 1e6 / series  # the feed's and the observers' share of the cores
            # The services write their state (and hmm_regime may train) after the burst's outputs: counted too.
            await until_quiet(pids, 60.0)
            cpu1 = tree_cpu_us(pids)
            res["cpu_us_per_series"] = {n: (cpu1[n] - cpu0[n]) / series for n in pids} | {"bench itself": own}
    bench.filled[series] = (ns, Path(env["STRATEGY_CONFIG"]))
    return {"case": name, "series": series, "warm_bars": WARM_BARS, **res}


async def burst(bench: Bench, nc: Any, r: aioredis.Redis, names: Names, candles: list[Candle]) -> dict[str, Any]:
    """Publish ``candles`` at once; latencies from the start of the publish to decision and to Redis."""
    want, seen = {c.key.token: c.ts for c in candles}, dict[str, float]()
    stages = {"vol": Arrivals(names), "hmm": Arrivals(names), "decision": Arrivals(names)}
    subs = [await nc.subscribe(subject, cb=stages[k].on_msg)
            for k, subject in (("vol", names.vol_all), ("hmm", names.hmm_all), ("decision", names.screener_all))]
    ids = {c.key.id: c.key.token for c in candles}
    listener = asyncio.ensure_future(redis_arrivals(r, names, want, seen, ids))
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    for arrivals in stages.values():
        arrivals.since = t0
    try:
        await publish_candles(AckPipeline(nc, timeout=120.0), names, candles)  # as ohlcv_ingest does a tick
        published = time.monotonic() - t0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(listener), bench.budget(len(candles)))
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        for sub in subs:
            await sub.unsubscribe()
    out: dict[str, Any] = {"published_s": published, "decided": len(stages["decision"].first), "in_redis": len(seen)}
    for k, arrivals in stages.items():  # each stage's first output per series: where the time goes
        out[k] = spread([t - t0 for t in arrivals.first.values()])
    out["redis"] = spread([t - t0 for t in seen.values()])
    out["all_in_redis_s"] = max(seen.values()) - t0 if len(seen) == len(want) else None
    return out


def wrk(url: str, seconds: int) -> dict[str, float | None]:
    """Requests/s and p99 ms of ``wrk -t2 -c16 --latency`` over ``seconds``."""
    if shutil.which("wrk") is None:
        raise CaseFailed("wrk is not installed: apt-get install -y wrk")
    cmd = ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", url]
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {"rps": float(rps.group(1)) if rps else None,
            "p99_ms": float(p99.group(1)) * unit[p99.group(2)] if p99 else None}


def body_size(url: str, gzip: bool) -> int:
    """Bytes of the body as sent (not decompressed)."""
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip else {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return len(resp.read())


async def wait_http(url: str, procs: Procs, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(body_size, url, False)
            return
        if any(p.poll() is not None for p in procs.running.values()):
            break
        await asyncio.sleep(0.3)
    raise CaseFailed(f"{url} did not answer within {timeout:.0f}s\n{procs.tails()}")


async def api_case(bench: Bench, name: str, series: int) -> dict[str, Any]:
    """wrk against /api/symbols, /api/status and one symbol over a Redis holding ``series`` series."""
    if series not in bench.filled:
        print(f"  ({name}: no case with {series} series ran; filling Redis with {series}x3 first)")
        print_block(await bulk_case(bench, f"fill{series}", series, 3))
    ns, config = bench.filled[series]
    port, seconds = free_port(), 3 if bench.quick else 10
    env = bench.env(ns, config) | {"API_HOST": "127.0.0.1", "API_PORT": str(port)}
    base = f"http://127.0.0.1:{port}"
    routes = {"symbols": "/api/symbols", "status": "/api/status", "symbol": "/api/symbols/bench/S0001-USD"}
    with services(bench, env, ("dashboard_api",)) as procs:
        await wait_http(base + "/healthz", procs)
        pid = {"dashboard_api": procs.running["dashboard_api"].pid}
        res: dict[str, Any] = {"case": name, "series": series, "seconds": seconds}
        for label, path in routes.items():
            cpu0 = tree_cpu_us(pid)["dashboard_api"]
            res[label] = await asyncio.to_thread(wrk, base + path, seconds)
            res[label]["api_cpu_s"] = (tree_cpu_us(pid)["dashboard_api"] - cpu0) / 1e6
        res["symbols_bytes"] = await asyncio.to_thread(body_size, base + routes["symbols"], False)
        res["symbols_bytes_gzip"] = await asyncio.to_thread(body_size, base + routes["symbols"], True)
        res["rss_mb"] = rss_mb(pid["dashboard_api"])
    return res


async def run_case(bench: Bench, name: str) -> dict[str, Any]:
    """One case by name: ``NxM``, ``burstN``, ``api`` or ``apiN``; a failure is recorded, not raised."""
    bulk, burst_n, api = re.fullmatch(r"(\d+)x(\d+)", name), re.fullmatch(r"burst(\d+)", name), \
        re.fullmatch(r"api(\d*)", name)
    try:
        if bulk:
            return await bulk_case(bench, name, int(bulk.group(1)), int(bulk.group(2)))
        if burst_n:
            return await burst_case(bench, name, int(burst_n.group(1)))
        if api:
            return await api_case(bench, name, int(api.group(1) or (100 if bench.quick else 1000)))
        raise CaseFailed(f"unknown case {name!r}: use NxM, burstN, api or apiN")
    except CaseFailed as exc:
        return {"case": name, "error": str(exc)}


async def run_all(bench: Bench, cases: list[str], results: list[dict[str, Any]]) -> None:
    for name in cases:
        print(f"\n... {name}", flush=True)
        results.append(await run_case(bench, name))
        print_block(results[-1])


def save(results: list[dict[str, Any]], stamp: str, quick: bool, load: str) -> None:
    """The table, and the same figures as JSON in bench/results/pipeline-<stamp>.json."""
    print_table(results)
    out = ROOT / "bench" / "results" / f"pipeline-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    machine = {"cpus": os.cpu_count(), "load_start": load, "load_end": list(os.getloadavg()),
               "python": platform.python_version()}
    out.write_text(json.dumps({"stamp": stamp, "machine": machine, "quick": quick, "cases": results}, indent=1))
    print(f"\nfigures written to {out.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"small cases: {' '.join(QUICK_CASES)}")
    parser.add_argument("--cases", nargs="+", help=f"cases by name (default: {' '.join(FULL_CASES)})")
    parser.add_argument("--max-wait", type=float, help="cap on each case's wait for the stack, s")
    parser.add_argument("--profile", type=Path, help="run every service under py-spy; collapsed stacks go to DIR")
    args = parser.parse_args(argv)
    cases = args.cases or list(QUICK_CASES if args.quick else FULL_CASES)
    stamp, load = time.strftime("%Y%m%d-%H%M%S"), ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"bench_pipeline {stamp}: {os.cpu_count()} CPUs, load {load}, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}; cases: {' '.join(cases)}")
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background, where SIGINT is ignored
        signal.signal(sig, signal.default_int_handler)
    tmp, servers = Path(tempfile.mkdtemp(prefix="bench-pipeline-")), list[ManagedServer]()
    results: list[dict[str, Any]] = []
    interrupted = False
    try:
        servers.append(start_nats(tmp / "nats", port=free_port()))
        servers.append(start_redis(tmp / "redis", port=free_port()))
        bench = Bench(tmp, servers[0], servers[1], args.quick, args.max_wait, stamp.replace("-", "")[-6:],
                      args.profile)
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        asyncio.run(run_all(bench, cases, results))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: services and servers stopped")
    finally:
        for server in servers:
            server.stop()
        failed = interrupted or len(results) < len(cases) or any("error" in r for r in results)
        if failed and not interrupted:
            print(f"\nlogs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    save(results, stamp, args.quick, load)
    return 130 if interrupted else 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
