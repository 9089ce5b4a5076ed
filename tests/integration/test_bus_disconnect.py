"""The disconnect log: a close we asked for is routine (info), a server that goes away is a warning.

Each test runs a nats-server of its own, so killing it disturbs no other test.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import nats.errors
import pytest

from regimes.servers import ManagedServer, start_nats
from shared.infra import service as service_module
from shared.infra.bus import connect, disconnect_level
from shared.infra.service import Runtime
from shared.infra.settings import Settings
from tests.harness import StackFactory, eventually, small_config


def _records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "shared.infra.bus"]


def test_level_is_a_function_of_who_closed_it() -> None:
    assert disconnect_level(closed_by_us=True, stopping=False) == logging.INFO
    assert disconnect_level(closed_by_us=False, stopping=True) == logging.INFO
    assert disconnect_level(closed_by_us=False, stopping=False) == logging.WARNING


@pytest.mark.parametrize("how", ["drain", "close"])
async def test_a_clean_close_is_not_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str) -> None:
    server = start_nats(tmp_path)
    try:
        caplog.set_level(logging.DEBUG, logger="shared.infra.bus")
        nc = await connect(server.url, "test", attempts=3)  # no stop event: how `regimes import` connects
        await nc.flush()
        await (nc.drain() if how == "drain" else nc.close())
        records = _records(caplog)
        assert (logging.INFO, "nats connection closed") in records
        assert not [r for r in records if r[0] >= logging.WARNING], records
    finally:
        server.stop()


async def test_a_server_that_goes_away_is_a_warning_and_the_close_after_it_is_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_nats(tmp_path)
    caplog.set_level(logging.DEBUG, logger="shared.infra.bus")
    stop = asyncio.Event()
    nc = await connect(server.url, "test", stop)
    try:
        server.proc.kill()
        server.proc.wait(5)

        async def warned() -> bool:
            return (logging.WARNING, "nats disconnected") in _records(caplog)

        await eventually(warned, timeout=10)
    finally:
        caplog.clear()
        await nc.close()  # while reconnecting: still ours, so not a second warning
    assert not [r for r in _records(caplog) if r[0] >= logging.WARNING]


async def test_connect_gives_up_after_its_attempts_when_nothing_listens() -> None:
    from regimes.servers import free_port

    started = time.monotonic()
    with pytest.raises((nats.errors.NoServersError, OSError, TimeoutError)):
        await connect(f"nats://127.0.0.1:{free_port()}", "test", attempts=2)
    assert time.monotonic() - started < 15  # it used to retry inside nats-py forever


async def test_once_connected_it_reconnects_to_a_server_that_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_nats(tmp_path)
    caplog.set_level(logging.DEBUG, logger="shared.infra.bus")
    nc = await connect(server.url, "test", attempts=3)
    try:
        server.proc.kill()
        server.proc.wait(5)
        await asyncio.sleep(3.0)  # the outage itself: longer than the one retry a first connect gets
        server = start_nats(tmp_path, server.port)

        async def reconnected() -> bool:
            return nc.is_connected and (logging.INFO, "nats reconnected") in _records(caplog)

        await eventually(reconnected, timeout=15)
        await nc.flush()
    finally:
        await nc.close()
        server.stop()


# --------------------------------------------------------------------------- a start that NATS interrupts


async def test_a_start_that_nats_interrupts_starts_again_and_runs(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica restarted just as NATS restarts sees its wiring time out: it starts over, it does not exit."""
    from services.vol_regime.__main__ import build

    calls = 0

    async def interrupted_once(rt: Runtime) -> list[Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await rt.kv("vol_state")  # part of the wiring done, on the stack that is then unwound
            raise nats.errors.TimeoutError
        return await build(rt)

    caplog.set_level(logging.WARNING, logger="shared.infra.service")
    st = await make_stack(small_config([("AAA/USD", "CORE")]))
    await st.start("vol_regime", build=interrupted_once)
    assert calls == 2
    assert any("start-up interrupted by NATS" in r.getMessage() for r in caplog.records)
    assert await st.stop("vol_regime") == 0


async def test_a_start_nats_keeps_failing_gives_up_with_the_error(
    nats_server: ManagedServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "_START_RETRY_S", 1.5)

    async def never(_rt: Runtime) -> list[Any]:
        raise nats.errors.TimeoutError

    settings = Settings(nats_url=nats_server.url, namespace=namespace)
    started = time.monotonic()
    with pytest.raises(nats.errors.TimeoutError):
        await service_module.serve("vol_regime", never, settings, small_config([("AAA/USD", "CORE")]),
                                   asyncio.Event(), handle_signals=False)
    assert 1.5 <= time.monotonic() - started < 10
