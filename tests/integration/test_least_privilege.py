"""Least privilege: the generated users run the whole stack, and each is refused what its role does not name.

This module's nats-server and Redis start with the configuration
``regimes.security`` generates from ``shared.domain.access`` (for namespace
``lp``): a nats-server ``authorization`` block and a Redis ACL file. Every
service runs as its own user, with only its own password files.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import nats.js.errors
import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from regimes import feed
from regimes.security import Secrets, service_env, write_secrets
from regimes.servers import ManagedServer, free_port, start_nats, start_redis
from services.ohlcv_ingest.__main__ import build_with
from shared.domain.access import SERVICES
from shared.domain.contracts import Candle, ScoreEvent, encode
from shared.domain.subjects import Names, SeriesKey
from shared.infra.acks import AckPipeline
from shared.infra.bus import ensure_streams, publish_candles
from shared.infra.settings import Settings
from tests.fakes import RecordedSeries, recorded_factory
from tests.harness import SMALL_VOL, Stack, eventually, small_config

NAMESPACE = "lp"
NAMES = Names(NAMESPACE)
KEY = SeriesKey("binance", "ETH/USDT", "1m")
HMM = {
    "HMM_ENABLED": True,
    "HMM_TRAINING_CANDLES": 120,
    "HMM_MIN_TRAIN_SAMPLES": 40,
    "HMM_N_ITER": 10,
    "HMM_OHLCV_BACKFILL_MAX_PAGES": 2,
}
RAW_CONFIG: dict[str, Any] = {
    "universe": [{"exchange": KEY.exchange, "symbol": KEY.symbol, "timeframe": "1m", "tier": "CORE"}],
    "vol_regimes": SMALL_VOL,
    "trend": {"fast_ema_bars": 3, "slow_ema_bars": 8, "score_scale": 0.004},
    "hmm": HMM,
}


@dataclass
class Secured:
    nats: ManagedServer
    redis: ManagedServer
    secrets: Secrets

    def settings(self, user: str, **kw: Any) -> Settings:
        """What Settings.from_env makes of the environment ``regimes up`` gives ``user``."""
        env = {"NATS_URL": self.nats.url, "REGIMES_NAMESPACE": NAMESPACE}
        env |= service_env(self.secrets, user, self.redis.url)
        return dataclasses.replace(Settings.from_env(env), **kw)

    async def connect(self, user: str, errors: list[str] | None = None) -> NATS:
        async def on_error(exc: Exception) -> None:
            if errors is not None:
                errors.append(str(exc))

        s = self.settings(user)
        return await nats.connect(
            servers=s.nats_servers, name=f"test-{user}", error_cb=on_error, max_reconnect_attempts=0,
            **s.nats_credentials,
        )

    def redis_as(self, user: str) -> aioredis.Redis:
        s = self.settings(user)
        return aioredis.from_url(s.redis_url, password=s.redis_password, decode_responses=True)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    secrets = write_secrets(tmp_path_factory.mktemp("secrets"), NAMES)
    n = start_nats(tmp_path_factory.mktemp("lp-nats"), conf=secrets.nats_auth)
    r = start_redis(tmp_path_factory.mktemp("lp-redis"), aclfile=secrets.redis_acl)
    yield Secured(n, r, secrets)
    n.stop()
    r.stop()


@pytest.fixture
async def operator(secured: Secured) -> AsyncIterator[NATS]:
    nc = await secured.connect("operator")
    await ensure_streams(nc.jetstream(), NAMES, 14)  # the operator provisions every stream
    yield nc
    await nc.close()


async def refused_publish(secured: Secured, user: str, subject: str) -> bool:
    """The server answers ``user``'s publish on ``subject`` with a permissions violation (and drops it)."""
    errors: list[str] = []
    nc = await secured.connect(user, errors)
    try:
        await nc.publish(subject, b"x")
        await nc.flush()
        await eventually(lambda: _any_about(errors, subject), timeout=5, interval=0.05)
        return "permissions violation" in " ".join(errors).lower()
    finally:
        await nc.close()


async def refused_subscribe(secured: Secured, user: str, subject: str) -> bool:
    errors: list[str] = []
    nc = await secured.connect(user, errors)
    try:
        await nc.subscribe(subject)
        await nc.flush()
        await eventually(lambda: _any_about(errors, subject), timeout=5, interval=0.05)
        return "permissions violation" in " ".join(errors).lower()
    finally:
        await nc.close()


async def _any_about(errors: list[str], subject: str) -> bool:
    # nats-py lowercases the server's -ERR text.
    return any(f'"{subject.lower()}"' in e for e in errors)


async def test_the_stack_runs_end_to_end_as_its_own_users(
    secured: Secured, operator: NATS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = small_config([], hmm=HMM, universe=RAW_CONFIG["universe"])
    dash = await secured.connect("dashboard_api")
    dash_redis = secured.redis_as("dashboard_api")
    st = Stack(secured.settings("dashboard_api", api_port=free_port()), config, dash, dash_redis)
    exchange = RecordedSeries(bars=300)
    try:
        for service in SERVICES:
            build = partial(build_with, recorded_factory(exchange)) if service == "ohlcv_ingest" else None
            s = secured.settings(service)
            await st.start(
                service, build=build, nats_user=s.nats_user, nats_password=s.nats_password,
                redis_url=s.redis_url, redis_password=s.redis_password,
            )
        # Ingest backfilled the exchange's bars; vol, HMM (trained from the stream) and the screener decided them.
        snap = await eventually(lambda: _decided(st), timeout=60)  # ingest's telemetry too, via state_publisher

        # The bot reads decisions live and publishes a score the screener takes.
        bot = await secured.connect("bot")
        decisions: list[Any] = []
        await bot.subscribe(NAMES.screener_all, cb=partial(_append, decisions))
        score = ScoreEvent("carry", KEY.exchange, KEY.symbol, KEY.timeframe, snap["screener"]["ts"], 0.5)
        await bot.jetstream().publish(NAMES.score("carry", KEY), encode(score))
        # The operator publishes a candle (what `regimes import` does), which the bot then sees decided.
        last = exchange.first_ts + 299 * 60_000
        more = Candle(KEY.exchange, KEY.symbol, KEY.timeframe, last + 60_000, 100.0, 101.0, 99.0, 100.5, 1.0)
        assert await publish_candles(AckPipeline(operator), NAMES, [more]) == 1
        await eventually(lambda: _got(decisions, 1), timeout=30)
        await bot.close()

        # `regimes backfill` as the operator: ingest answers on control.backfill.
        cfg = tmp_path / "config.json"
        cfg.write_text(json.dumps(RAW_CONFIG))
        env = {"NATS_URL": secured.nats.url, "REGIMES_NAMESPACE": NAMESPACE, "STRATEGY_CONFIG": str(cfg)}
        for k, v in (env | service_env(secured.secrets, "operator")).items():
            monkeypatch.setenv(k, v)
        assert await feed.backfill(KEY.id, target=200, max_pages=2, timeout=30) == 0

        # The dashboard reads what state_publisher wrote, and the health of all six.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.settings.api_port}", timeout=5) as http:
            symbols = (await http.get("/api/symbols")).json()
            assert [s["symbol"] for s in symbols] == [KEY.symbol]
            status = (await http.get("/api/status")).json()
            assert {s["service"] for s in status["services"]} == set(SERVICES)
    finally:
        await st.stop_all()
        await dash_redis.aclose()
        await dash.close()


async def _decided(st: Stack) -> dict[str, Any] | None:
    snap = await st.snapshot(KEY)
    if snap is None:
        return None
    # The HMM verdict is trained: hmm_regime's worker read the candles back from the stream as its user.
    trained = (snap.get("hmm_regime") or {}).get("trained")
    # ingest's first report may predate its backfill: wait for one that counts the candles it published
    ok = trained and snap.get("screener") and (snap.get("hmm_data_pipeline") or {}).get("samples", 0) > 0
    return snap if ok else None


async def _append(items: list[Any], msg: Any) -> None:
    items.append(msg)


async def _got(items: list[Any], n: int) -> bool:
    return len(items) >= n


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("bot", NAMES.ohlcv(KEY)),  # candles
        ("bot", NAMES.control("backfill")),
        ("bot", NAMES.screener(KEY)),  # decisions are read, not written
        ("vol_regime", NAMES.screener(KEY)),
        ("vol_regime", NAMES.hmm(KEY)),
        ("screener", NAMES.ohlcv(KEY)),
        ("dashboard_api", NAMES.ohlcv(KEY)),
        ("operator", NAMES.vol(KEY)),
        ("state_publisher", NAMES.screener(KEY)),
        ("hmm_regime", f"$KV.{NAMES.bucket('vol_state')}.{KEY.token}"),  # another service's state
        ("vol_regime", f"$KV.{NAMES.bucket('positions')}.{NAMES.durable('screener')}"),  # another's position
        ("vol_regime", f"$KV.{NAMES.bucket('health')}.screener.1of1"),  # another's heartbeat
        ("bot", f"$JS.API.CONSUMER.DELETE.{NAMES.stream_regimes}.{NAMES.durable('screener')}"),
        ("bot", f"$JS.API.CONSUMER.MSG.NEXT.{NAMES.stream_regimes}.{NAMES.durable('screener')}"),
        ("bot", f"$JS.API.STREAM.UPDATE.{NAMES.stream_regimes}"),
        ("vol_regime", f"$JS.API.STREAM.DELETE.{NAMES.stream_ohlcv}"),
        ("operator", f"$JS.API.STREAM.PURGE.{NAMES.stream_ohlcv}"),
        ("dashboard_api", f"$JS.API.STREAM.CREATE.{NAMES.stream_ohlcv}"),
        ("vol_regime", "ohlcv.binance.ETH-USDT.1m"),  # the default stack's subjects, not its namespace's
    ],
)
async def test_a_user_is_refused_what_its_role_does_not_name(secured: Secured, user: str, subject: str) -> None:
    assert await refused_publish(secured, user, subject)


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("bot", NAMES.ohlcv_all),
        ("bot", NAMES.control("backfill")),  # an operator's request is not the bot's to see or answer
        ("vol_regime", NAMES.control("backfill")),
        ("dashboard_api", NAMES.screener_all),
    ],
)
async def test_a_user_may_not_listen_where_its_role_does_not_name(secured: Secured, user: str, subject: str) -> None:
    assert await refused_subscribe(secured, user, subject)


async def test_what_a_user_may_do_is_allowed(secured: Secured, operator: NATS) -> None:
    """The other side of the refusals: the same client code, on subjects its role names, raises nothing."""
    errors: list[str] = []
    bot = await secured.connect("bot", errors)
    try:
        await bot.subscribe(NAMES.screener_all)
        await bot.subscribe(NAMES.vol_all)
        score = ScoreEvent("carry", KEY.exchange, KEY.symbol, KEY.timeframe, 1_700_000_040_000, 0.1)
        await bot.jetstream().publish(NAMES.score("carry", KEY), encode(score))
        await bot.jetstream().stream_info(NAMES.stream_regimes)
        await bot.flush()
    finally:
        await bot.close()
    assert errors == []


async def test_the_bot_cannot_store_a_candle_or_a_decision(secured: Secured, operator: NATS) -> None:
    bot = await secured.connect("bot")
    try:
        candle = Candle(KEY.exchange, KEY.symbol, KEY.timeframe, 1_700_000_040_000, 1.0, 1.0, 1.0, 1.0, 1.0)
        with pytest.raises((nats.errors.Error, nats.js.errors.Error, TimeoutError)):
            await bot.jetstream().publish(NAMES.ohlcv(KEY), encode(candle), timeout=1)
    finally:
        await bot.close()


async def test_no_one_connects_without_a_password(secured: Secured) -> None:
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(servers=[secured.nats.url], max_reconnect_attempts=0, allow_reconnect=False)
    wrong = Settings.from_env({}).nats_credentials | {"user": "bot", "password": "guess"}
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(servers=[secured.nats.url], max_reconnect_attempts=0, allow_reconnect=False, **wrong)


async def test_redis_users_get_their_role_and_nothing_more(secured: Secured) -> None:
    key = NAMES.redis_key("symbol", KEY.token)
    writer = secured.redis_as("state_publisher")
    reader = secured.redis_as("dashboard_api")
    anonymous = aioredis.from_url(secured.redis.url, decode_responses=True)
    try:
        await writer.set(key, "{}")
        assert await reader.get(key) == "{}"
        with pytest.raises(NoPermissionError):
            await reader.set(key, "tampered")
        with pytest.raises(NoPermissionError):
            await reader.delete(key)
        with pytest.raises(NoPermissionError):
            await reader.publish(NAMES.redis_key("changes"), "{}")
        pubsub = reader.pubsub()
        await pubsub.subscribe(NAMES.redis_key("changes"))  # what the dashboard's live feed needs
        await pubsub.aclose()
        for denied in (writer.flushall(), writer.keys("*"), writer.set("elsewhere", "1"), writer.config_get("*")):
            with pytest.raises(NoPermissionError):
                await denied
        assert await anonymous.ping()  # a health check may PING, and do nothing else
        with pytest.raises((NoPermissionError, AuthenticationError, ResponseError)):
            await anonymous.get(key)
        wrong = aioredis.from_url(secured.settings("dashboard_api").redis_url, password="guess")
        with pytest.raises((AuthenticationError, ResponseError)):
            await wrong.ping()
        await wrong.aclose()
    finally:
        await writer.delete(key)
        for client in (writer, reader, anonymous):
            await client.aclose()
