"""dashboard_api: the status API, live stream and dashboard page, served by uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
import uvicorn

from services.dashboard_api.app import create_app, read_model
from shared.domain.errors import ConfigError
from shared.infra.service import Runtime, run

SERVICE = "dashboard_api"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the shared runner owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _check_port(host: str, port: int) -> None:
    """uvicorn exits the process on a taken port; say which setting to change instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError("API_PORT", f"{host}:{port} is taken ({exc.strerror}); choose another port") from None


async def build(rt: Runtime) -> list[Any]:
    _check_port(rt.settings.api_host, rt.settings.api_port)
    redis = aioredis.from_url(rt.settings.redis_url, password=rt.settings.redis_password, decode_responses=True)
    rt.stack.push_async_callback(redis.aclose)
    app = create_app(rt.settings, rt.config, redis, rt.nc, rt.metrics, shutdown=rt.stop)
    rt.stack.push_async_callback(read_model(app).aclose)  # its subscription goes before the client it uses
    server = _Server(
        uvicorn.Config(
            app, host=rt.settings.api_host, port=rt.settings.api_port, log_config=None,
            timeout_graceful_shutdown=2, lifespan="off",
        )
    )

    async def serve() -> None:
        async def stop_when_told() -> None:
            await rt.stop.wait()
            server.should_exit = True

        watcher = asyncio.create_task(stop_when_told())
        try:
            await server.serve()
        finally:
            watcher.cancel()
        if not server.started:
            raise RuntimeError(f"dashboard_api could not listen on {rt.settings.api_host}:{rt.settings.api_port}")

    return [serve()]


def main() -> None:
    run(SERVICE, build)


if __name__ == "__main__":
    main()
