"""`regimes up`: embedded nats-server + Redis-compatible server, then all six services, supervised.

Services run as ``python -m services.<name>`` (the same entrypoints the Docker
images run), each in its own session so that Ctrl-C reaches only this
supervisor, which stops them in order: sources first, servers last. A service
that dies is restarted with backoff; one that refuses its config (exit 2)
stops the whole stack with its message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from regimes.security import Embedded, write_endpoints
from regimes.servers import (
    ManagedServer,
    ServerError,
    free_port,
    port_in_use,
    start_nats,
    start_redis,
    stop_process,
)
from shared.domain.errors import ConfigError
from shared.infra.lifetime import die_with_parent

SERVICES = ("ohlcv_ingest", "vol_regime", "hmm_regime", "screener", "state_publisher", "dashboard_api")
CONFIG_EXIT = 2
MAX_BACKOFF_SEC = 30.0
HEALTHY_AFTER_SEC = 60.0


def say(msg: str) -> None:
    print(f"regimes | {msg}", flush=True)


@dataclass
class Child:
    name: str
    env: Mapping[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    reader: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(self.env),
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.started = time.monotonic()
        self.reader = threading.Thread(target=_relay, args=(self.name, self.proc.stdout), daemon=True)
        self.reader.start()


def _relay(name: str, stream: IO[bytes] | None) -> None:
    """Copy a child's output to ours, one prefixed line at a time."""
    if stream is None:
        return
    width = max(len(s) for s in SERVICES)
    for raw in iter(stream.readline, b""):
        sys.stdout.write(f"{name:<{width}} | {raw.decode(errors='replace')}")
        sys.stdout.flush()


@dataclass
class UpOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    nats_port: int = 0
    redis_port: int = 0
    nats_url: str | None = None
    redis_url: str | None = None
    data_dir: Path | None = None
    config: Path | None = None
    namespace: str = ""
    services: tuple[str, ...] = SERVICES


class Supervisor:
    def __init__(self, opts: UpOptions) -> None:
        self.opts = opts
        self.servers: list[ManagedServer] = []
        self.children: list[Child] = []
        self.stopping = False
        self.exit_code = 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            say("second signal: killing everything now")
            for child in self.children:
                if child.proc is not None and child.proc.poll() is None:
                    child.proc.kill()
        self.stopping = True

    def run(self) -> int:
        opts = self.opts
        if port_in_use(opts.port, opts.host):
            say(f"{opts.host}:{opts.port} is taken: choose another port with --port")
            return CONFIG_EXIT
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        data_dir = opts.data_dir or Path(tempfile.mkdtemp(prefix="regimes-"))
        try:
            # Every user's credentials, and the servers started with them (regimes/security.py).
            self.auth = Embedded.prepare(data_dir, opts.namespace, not opts.nats_url, not opts.redis_url)
            nats_url, redis_url = self._servers(data_dir)
            write_endpoints(self.auth.secrets, nats_url, redis_url)
        except ConfigError as exc:
            say(str(exc))
            return CONFIG_EXIT
        except ServerError as exc:
            say(str(exc))
            self._stop_servers()
            return 1
        env = dict(os.environ)
        env.update(
            NATS_URL=nats_url,
            REDIS_URL=redis_url,
            API_HOST=opts.host,
            API_PORT=str(opts.port),
            REGIMES_NAMESPACE=opts.namespace,
            LOG_JSON=env.get("LOG_JSON", "0"),
            PYTHONUNBUFFERED="1",
        )
        if opts.config is not None:
            env["STRATEGY_CONFIG"] = str(opts.config)
        metrics: dict[str, int] = {}
        for name in opts.services:
            child_env = dict(env) | self.auth.env(name, redis_url)
            if name != "dashboard_api":  # it serves /metrics on its own port
                metrics[name] = free_port(opts.host)
                child_env["METRICS_PORT"] = str(metrics[name])
                child_env["METRICS_HOST"] = opts.host
            self.children.append(Child(name, child_env))
        for child in self.children:
            child.start()
        say(f"data in {data_dir}; NATS {nats_url}; Redis {redis_url}")
        say(f'clients: eval "$(regimes env --user operator --data-dir {data_dir})"  (or --user bot)')
        say("metrics: " + ", ".join(f"{n} :{p}" for n, p in metrics.items()))
        announced = False
        try:
            while not self.stopping:
                self._supervise()
                if not announced and "dashboard_api" in opts.services and self._healthy():
                    say(f"dashboard: http://{opts.host}:{opts.port}  (Ctrl-C stops everything)")
                    announced = True
                time.sleep(0.25)
        finally:
            self._stop_all()
        return self.exit_code

    def _servers(self, data_dir: Path) -> tuple[str, str]:
        opts = self.opts
        urls = []
        for given, start, port, sub, kw in (
            (opts.nats_url, start_nats, opts.nats_port, "nats", {"conf": self.auth.secrets.nats_auth}),
            (opts.redis_url, start_redis, opts.redis_port, "redis", {"aclfile": self.auth.secrets.redis_acl}),
        ):
            if given:
                urls.append(given)
                continue
            server = start(data_dir / sub, port, **kw)  # type: ignore[operator]
            self.servers.append(server)
            urls.append(server.url)
        return urls[0], urls[1]

    def _healthy(self) -> bool:
        url = f"http://{self.opts.host}:{self.opts.port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def _supervise(self) -> None:
        now = time.monotonic()
        for child in self.children:
            proc = child.proc
            if proc is None:
                if now >= child.next_start:
                    say(f"starting {child.name} again (restart {child.restarts})")
                    child.start()
                continue
            code = proc.poll()
            if code is None:
                continue
            if code == CONFIG_EXIT:
                say(f"{child.name} refused its configuration (see above); stopping")
                self.exit_code = CONFIG_EXIT
                self.stopping = True
                return
            ran = now - child.started
            child.restarts = 0 if ran > HEALTHY_AFTER_SEC else child.restarts + 1
            delay = min(MAX_BACKOFF_SEC, 2.0 ** max(0, child.restarts - 1)) if child.restarts else 1.0
            say(f"{child.name} exited with {code} after {ran:.0f}s; restarting in {delay:.0f}s")
            child.proc = None
            child.next_start = now + delay

    def _stop_all(self) -> None:
        say("stopping services")
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{child.name} did not stop in time; killing it")
                child.proc.kill()
                child.proc.wait(5)
        for child in self.children:
            if child.reader is not None:
                child.reader.join(timeout=2)
        self._stop_servers()
        say("stopped")

    def _stop_servers(self) -> None:
        for server in reversed(self.servers):
            stop_process(server.proc)
