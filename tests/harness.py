"""The test harness: in-process services against the session's real nats-server and Redis.

Each service runs through the same ``shared.infra.service.serve`` its ``__main__``
uses, as a task that a test can stop and start again (a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS

from regimes.servers import ManagedServer, free_port
from shared.domain.config import StrategyConfig, parse_strategy_config
from shared.domain.contracts import Candle, decode, encode, events_in
from shared.domain.subjects import Names, SeriesKey
from shared.infra.bus import connect, ensure_streams
from shared.infra.service import Build, serve
from shared.infra.settings import Settings

SMALL_VOL: dict[str, Any] = {
    "defaults": {
        "short_window_bars": 8,
        "long_window_bars": 32,
        "short_halflife_bars": 2,
        "long_halflife_bars": 16,
        "ratio_low_high": {"low": 0.6, "normal": 1.2, "high": 1.8},
    },
    "sizing_multipliers": {
        "CORE": {"low": 1.15, "normal": 1.0, "high": 0.75, "crisis": 0.5},
        "SATELLITE": {"low": 1.1, "normal": 1.0, "high": 0.7, "crisis": 0.4},
    },
    "hybrid_weight_modifiers": {
        "default": {
            "low": {"carry": 1.0, "expectancy": 1.0, "router": 1.0},
            "normal": {"carry": 1.0, "expectancy": 1.0, "router": 1.0},
            "high": {"carry": 0.7, "expectancy": 0.9, "router": 1.0},
            "crisis": {"carry": 0.4, "expectancy": 0.8, "router": 1.1},
        }
    },
}


def small_config(series: Iterable[tuple[str, str]], **overrides: Any) -> StrategyConfig:
    """A strategy config with short windows (32 bars) so a test needs few candles."""
    return parse_strategy_config(small_raw(series, **overrides), {})


def small_raw(series: Iterable[tuple[str, str]], **overrides: Any) -> dict[str, Any]:
    """:func:`small_config` as the JSON a user writes (for the CLI, which reads a file)."""
    raw: dict[str, Any] = {
        "universe": [{"exchange": "test", "symbol": s, "timeframe": "1m", "tier": t} for s, t in series] or None,
        "sizing": {"per_trade_nav_pct": 0.02},
        "vol_regimes": SMALL_VOL,
        "trend": {"fast_ema_bars": 3, "slow_ema_bars": 8, "score_scale": 0.004},
        "hmm": {"HMM_ENABLED": False},
    }
    for key, value in overrides.items():
        raw[key] = value
    return raw


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with its last value after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


class Stack:
    """Services of one test's namespace, each running in-process through ``serve``."""

    def __init__(self, settings: Settings, config: StrategyConfig, nc: NATS, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.config = config
        self.nc = nc
        self.js = nc.jetstream()
        self.redis = redis
        self.names: Names = settings.names
        self._running: dict[str, tuple[asyncio.Event, asyncio.Task[int]]] = {}

    async def start(
        self,
        service: str,
        config: StrategyConfig | None = None,
        build: Build | None = None,
        instance: str | None = None,
        **settings: Any,
    ) -> None:
        """Start ``service``; ``instance`` names a second copy of it (a replica), stopped by that name."""
        build = build or importlib.import_module(f"services.{service}.__main__").build
        stop = asyncio.Event()
        replica_id = re.sub(r"[^A-Za-z0-9_-]", "-", instance or service)
        s = Settings(**{**self._settings_kw(), "replica_id": replica_id, **settings})
        task = asyncio.create_task(serve(service, build, s, config or self.config, stop, handle_signals=False))
        self._running[instance or service] = (stop, task)
        # Started = its heartbeat is in (or it died trying, which the test should see).
        health_key = f"{service}.{replica_id}"
        await eventually(lambda: self._started(health_key, task), timeout=20)
        if task.done():
            task.result()

    async def _started(self, health_key: str, task: asyncio.Task[int]) -> bool:
        if task.done():
            return True
        health = self.names.bucket("health")
        try:
            kv = await self.js.key_value(health)
            keys = await kv.keys()
        except Exception:
            return False
        return health_key in keys

    async def stop(self, service: str) -> int:
        stop, task = self._running.pop(service)
        stop.set()
        return await asyncio.wait_for(task, 20)

    async def stop_all(self) -> None:
        """Stop everything still running; a service that already died is reported by its own test."""
        for service in list(self._running):
            with contextlib.suppress(Exception):
                await self.stop(service)

    def _settings_kw(self) -> dict[str, Any]:
        s = self.settings
        return {
            "nats_url": s.nats_url,
            "redis_url": s.redis_url,
            "namespace": s.namespace,
            "api_port": s.api_port,
            "health_interval_sec": 0.2,
            "lease_ttl_sec": 1.0,  # a stopped replica's partitions move within about a second
        }

    async def publish(self, candles: Iterable[Candle]) -> None:
        for c in candles:
            await self.js.publish(self.names.ohlcv(c.key), encode(c), headers={"Nats-Msg-Id": c.msg_id})

    async def snapshot(self, key: SeriesKey) -> dict[str, Any] | None:
        raw = await self.redis.get(self.names.redis_key("symbol", key.token))
        return json.loads(raw) if raw else None


StackFactory = Callable[..., Awaitable[Stack]]


def point_cli_at(st: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, raw: dict[str, Any]) -> None:
    """The CLI reads its settings from the environment, as a user's shell would pass them (``raw``: the config)."""
    cfg = tmp_path / "strategy.json"
    cfg.write_text(json.dumps(raw))
    monkeypatch.setenv("NATS_URL", st.settings.nats_url)
    monkeypatch.setenv("REGIMES_NAMESPACE", st.settings.namespace)
    monkeypatch.setenv("STRATEGY_CONFIG", str(cfg))


async def _make_stack(nats_server: ManagedServer, redis_server: ManagedServer) -> AsyncIterator[StackFactory]:
    """Stacks on the session's servers, each in a namespace of its own; all stopped at the end."""
    made: list[Stack] = []
    nc = await connect(nats_server.url, "tests", attempts=5)
    redis = aioredis.from_url(redis_server.url, decode_responses=True)

    async def make(config: StrategyConfig) -> Stack:
        settings = Settings(
            nats_url=nats_server.url,
            redis_url=redis_server.url,
            namespace="t" + uuid.uuid4().hex[:12],
            api_port=free_port(),
        )
        st = Stack(settings, config, nc, redis)
        await ensure_streams(st.js, st.names, 14)
        made.append(st)
        return st

    try:
        yield make
    finally:
        for st in made:
            await st.stop_all()
        await redis.aclose()
        await nc.drain()


class Collected:
    """Every event of the given kinds published in the test's namespace, by series, in arrival order.

    A batch a service replays (its leases lapsed on a loaded machine, say) is published again and reaches a
    core subscriber twice: a repeat must equal the first (same candles, same events), and is kept once.
    """

    def __init__(self, *kinds: type[Any]) -> None:
        self.kinds = kinds
        self.events: dict[SeriesKey, list[Any]] = {}
        self._seen: dict[tuple[SeriesKey, int], Any] = {}
        self.differing: list[Any] = []  # repeats unlike their first (a callback cannot fail the test itself)

    async def on_msg(self, msg: Any) -> None:
        for event in events_in(decode(msg.data, self.kinds)):
            first = self._seen.setdefault((event.key, event.ts), event)
            if first is not event:
                if first != event:
                    self.differing.append(event)
                continue
            self.events.setdefault(event.key, []).append(event)

    def of(self, key: SeriesKey) -> list[Any]:
        return self.events.get(key, [])
