"""dashboard_api under abuse, as a real process (``python -m services.dashboard_api``) on the session's
NATS and Redis: idle live-stream clients past the cap, large bodies with and without the token.

What these tried to break, and what used to happen:

- 100 idle /api/stream clients took one Redis connection each, the whole of redis-py's pool
  (100), and /api/symbols, /api/summary and /readyz answered 503 "Too many connections".
- Five concurrent 100 MB POST /api/backfill bodies without a token were read in full before
  the 401 (FastAPI parses the body first): RSS went from 86 MB to about 1.1 GB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from regimes.servers import ManagedServer, free_port, popen, stop_process
from shared.infra.redis_keys import RedisKeys
from tests.conftest import ROOT
from tests.harness import eventually
from tests.integration import test_api_speed_paths as speed
from tests.integration.test_api_speed_paths import World

world = speed.world  # Redis filled with the byte comparisons' 44 series, in this test's namespace

TOKEN = "hardening-token-0123456789"
CAP = 120  # above the ~100 idle clients that used to exhaust the pool
MB = 1 << 20


@dataclass
class Api:
    url: str
    host: str
    port: int
    pid: int
    log: Path

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


@pytest.fixture
def api(world: World, nats_server: ManagedServer, redis_server: ManagedServer, tmp_path: Path) -> Iterator[Api]:
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": nats_server.url,
        "REDIS_URL": redis_server.url,
        "REGIMES_NAMESPACE": world.settings.namespace,
        "STRATEGY_CONFIG": str(ROOT / "config" / "strategy_config.json"),
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "API_TOKEN": TOKEN,
        "API_SSE_MAX_CLIENTS": str(CAP),
        "LOG_JSON": "0",
        "HEALTH_INTERVAL_SEC": "1",
    }
    log = tmp_path / "api.log"
    proc = popen([sys.executable, "-m", "services.dashboard_api"], env=env, log=log)
    api = Api(f"http://127.0.0.1:{port}", "127.0.0.1", port, proc.pid, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api.url}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield api
    finally:
        stop_process(proc)


async def redis_clients(url: str) -> int:
    client = aioredis.from_url(url)
    try:
        return len(await client.client_list())
    finally:
        await client.aclose()


def requests_by_status(text: str, route: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "regimes_api_requests_total" and s.labels["route"] == route:
                out[s.labels["status"]] = out.get(s.labels["status"], 0) + s.value
    return out


def gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


# --------------------------------------------------------------------------- live stream


async def test_idle_stream_clients_past_the_cap_get_503_and_starve_nothing(
    api: Api, world: World, redis_server: ManagedServer
) -> None:
    limits = httpx.Limits(max_connections=CAP + 20, max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(base_url=api.url, timeout=10) as http,
        httpx.AsyncClient(base_url=api.url, timeout=10, limits=limits) as sse,
        contextlib.AsyncExitStack() as streams,
    ):
        await http.get("/api/summary")  # the API's own subscription to the change notices is up
        before = await redis_clients(redis_server.url)
        answers: list[httpx.Response] = []
        for _ in range(CAP + 5):
            answers.append(await streams.enter_async_context(sse.stream("GET", "/api/stream")))
        codes = [r.status_code for r in answers]
        assert codes.count(200) == CAP, codes
        assert codes[CAP:] == [503] * 5
        for refused in answers[CAP:]:
            assert int(refused.headers["retry-after"]) > 0
            assert "API_SSE_MAX_CLIENTS" in json.loads(await refused.aread())["detail"]
        # Meanwhile everything else answers, and the clients took no Redis connection each.
        for path in ("/api/symbols", "/api/summary", "/readyz", "/api/symbols/alpha/S01-USD", "/api/status"):
            reply = await http.get(path)
            assert reply.status_code == 200, (path, reply.text[:200])
        assert len((await http.get("/api/symbols")).json()) == len(speed.universe())
        assert await redis_clients(redis_server.url) <= before + 2
        assert gauge((await http.get("/metrics")).text, "regimes_api_sse_clients") == CAP

        # One notice reaches every client (two checked), each reading its own stream.
        first, last = answers[0], answers[CAP - 1]
        readers = [first.aiter_text(), last.aiter_text()]
        for r in readers:
            assert "event: hello" in await anext(r)
        notice = json.dumps({"series": ["alpha:S01/USD:1m"], "kinds": ["vol"], "at": 1})
        await world.redis.publish(RedisKeys(world.settings.names).changes, notice)
        for r in readers:
            text = ""
            while "event: change" not in text:
                text += await asyncio.wait_for(anext(r), 5)
            assert notice in text

    # The clients went away: the server notices within its poll and takes new ones.
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:

        async def emptied() -> bool:
            return gauge((await http.get("/metrics")).text, "regimes_api_sse_clients") == 0

        await eventually(emptied, timeout=10)
        async with http.stream("GET", "/api/stream") as again:
            assert again.status_code == 200
        metrics = (await http.get("/metrics")).text
        assert 'regimes_api_sse_refused_total{reason="full"} 5.0' in metrics


# --------------------------------------------------------------------------- request bodies


async def send_headers_and_some(api: Api, length: int, headers: dict[str, str], some: int = 64 * 1024) -> str:
    """Declare a ``length`` body, send only ``some`` of it, and read the status line the server sends."""
    reader, writer = await asyncio.open_connection(api.host, api.port)
    try:
        head = "POST /api/backfill HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {length}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode() + b"\r\n" + b" " * some)
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def blast(api: Api, size: int, headers: dict[str, str]) -> int:
    """Send a whole ``size`` body as fast as the server takes it; how many bytes it took before hanging up."""
    reader, writer = await asyncio.open_connection(api.host, api.port)
    sent = 0
    chunk = b" " * MB
    head = f"POST /api/backfill HTTP/1.1\r\nHost: api\r\nContent-Length: {size}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    try:
        writer.write(head.encode() + b"\r\n")
        while sent < size:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    except OSError:
        pass  # the server answered and closed: what was sent is what it could have kept
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        del reader
    return sent


async def test_a_large_body_without_the_token_is_refused_unread(api: Api) -> None:
    start = time.monotonic()
    lines = await asyncio.gather(*(send_headers_and_some(api, 100 * MB, {}) for _ in range(5)))
    assert lines == ["HTTP/1.1 401 Unauthorized"] * 5
    assert time.monotonic() - start < 3.0  # answered from the headers: 99.9 MB of each never sent
    for bad in (TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"):
        assert await send_headers_and_some(api, 100 * MB, {"Authorization": bad}) == "HTTP/1.1 401 Unauthorized"

    before = api.rss_mb()
    sent = await asyncio.gather(*(blast(api, 100 * MB, {}) for _ in range(5)))
    after = api.rss_mb()
    print(f"\n5 x 100 MB without a token: RSS {before:.0f} -> {after:.0f} MB; bytes taken {[s // MB for s in sent]} MB")
    assert after - before < 20, (before, after)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        assert (await http.get("/api/summary")).status_code == 200  # still serving


async def test_a_body_over_the_limit_with_the_token_is_413(api: Api) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert await send_headers_and_some(api, 100 * MB, bearer) == "HTTP/1.1 413 Request Entity Too Large"
    assert await send_headers_and_some(api, 65_537, bearer) == "HTTP/1.1 413 Request Entity Too Large"
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:

        async def chunked() -> AsyncIterator[bytes]:
            yield b'{"series": null, "pad": "'
            for _ in range(20):
                yield b"x" * 8192

        reply = await http.post("/api/backfill", content=chunked(), headers=bearer)  # no Content-Length
        assert reply.status_code == 413, reply.text
        assert "API_MAX_BODY_BYTES" in reply.json()["detail"]
        # Within the limit and with the token, the request goes on to ingest (none runs here: 503).
        ok: dict[str, Any] = {"series": None, "target_candles": 10}
        reply = await http.post("/api/backfill", json=ok, headers=bearer, params={"timeout": 1})
        assert reply.status_code == 503, reply.text
        assert "ohlcv_ingest" in reply.json()["detail"]
        lower = await http.post("/api/backfill", json=ok, headers={"Authorization": f"bearer {TOKEN}"})
        assert lower.status_code == 503  # the scheme is case-insensitive
        for refused in (await http.post("/api/backfill", json=ok), await http.post("/api/backfill", json=ok,
                                                                                    headers={"Authorization": TOKEN})):
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert "content-security-policy" in refused.headers
        counts = requests_by_status((await http.get("/metrics")).text, "/api/backfill")
        assert counts["413"] >= 3, counts
        assert counts["401"] >= 2
