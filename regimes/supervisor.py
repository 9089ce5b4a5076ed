"""`regimes up`: embedded nats-server + Redis-compatible server, then all six services, supervised.

Services run as ``python -m services.<name>`` (the same entrypoints the Docker
images run), each in its own session so that Ctrl-C reaches only this
supervisor, which stops them in order: sources first, servers last. A service
that dies is restarted with backoff; one that refuses its config (exit 2)
stops the whole stack with its message.

The embedded servers are watched too: one that dies is started again on the
same port with the same data directory (so JetStream's streams, consumers and
KV survive, and the services' own reconnect finds it); one that will not come
back stops the stack with exit 1. Where the stack is (URLs, pids) goes into a
state file in the data dir and a pointer in the user's runtime dir
(:mod:`regimes.stackfile`), for every other ``regimes`` command and for bots.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from regimes import security, stackfile
from regimes.servers import (
    ManagedServer,
    ServerError,
    free_port,
    port_in_use,
    start_nats,
    start_redis,
    stop_process,
)
from shared.domain.control import Heartbeat
from shared.domain.errors import ConfigError
from shared.infra.lifetime import die_with_parent

SERVICES = ("ohlcv_ingest", "vol_regime", "hmm_regime", "screener", "state_publisher", "dashboard_api")
CONFIG_EXIT = 2
MAX_BACKOFF_SEC = 30.0
HEALTHY_AFTER_SEC = 60.0
SERVER_WINDOW_SEC = 60.0  # deaths of one server counted over this long
SERVER_MAX_RESTARTS = 4  # a fifth death (or failed start) within the window stops the stack
WAITING_NOTICE_SEC = 60.0  # say which services have not reported after this long


def say(msg: str) -> None:
    print(f"regimes | {msg}", flush=True)


@dataclass
class Child:
    name: str  # the service, or "service#k" for its k-th replica
    env: Mapping[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    reader: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name.split('#')[0]}"],
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
    replicas: Mapping[str, int] = field(default_factory=dict)  # service -> copies (default 1)


# --- decisions (pure) ---------------------------------------------------------------------

# Services that share their series by leases; ingest (the exchange connections) and the API (one port) run once.
SCALABLE = ("vol_regime", "hmm_regime", "screener", "state_publisher")
MAX_LOCAL_REPLICAS = 8


def parse_replicas(items: Sequence[str]) -> dict[str, int]:
    """``vol_regime=3`` items of ``regimes up --replicas``; ConfigError naming the bad one."""
    out: dict[str, int] = {}
    for item in items:
        name, _, count = item.partition("=")
        if name not in SCALABLE:
            raise ConfigError("--replicas", f"{item!r}: scalable services are {', '.join(SCALABLE)}")
        if not count.isdigit() or not 1 <= int(count) <= MAX_LOCAL_REPLICAS:
            raise ConfigError("--replicas", f"{item!r}: expected {name}=N with N in 1..{MAX_LOCAL_REPLICAS}")
        out[name] = int(count)
    return out



def server_restart_delay(
    deaths: Sequence[float], now: float, window: float = SERVER_WINDOW_SEC, limit: int = SERVER_MAX_RESTARTS
) -> float | None:
    """Seconds to wait before starting a dead server again, or None to give up.

    ``deaths`` are the monotonic times it died or failed to start. The first
    death restarts at once (a SIGKILL, the OOM killer); repeated ones back off,
    and more than ``limit`` within ``window`` means it cannot stay up.
    """
    recent = [d for d in deaths if now - d <= window]
    if len(recent) > limit:
        return None
    return 0.0 if len(recent) <= 1 else min(8.0, 2.0 ** (len(recent) - 2))


def not_reported(wanted: Iterable[str], records: Iterable[Heartbeat], since_ms: int) -> list[str]:
    """The services in ``wanted`` with no heartbeat at or after ``since_ms`` (wall-clock ms)."""
    seen = {r.service for r in records if r.last_seen >= since_ms}
    return [name for name in wanted if name not in seen]


def exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


def local_url(scheme: str, host: str, port: int) -> str:
    """A URL a client on this machine can use for a listener bound to ``host`` (0.0.0.0 is not an address)."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"{scheme}://{host}:{port}"


# --- readiness --------------------------------------------------------------------------------


class HealthWatch(threading.Thread):
    """Waits, in a thread of its own, until every service has sent a heartbeat since ``since_ms``.

    Only the banner depends on it, so it never raises into the supervisor;
    it connects to NATS without reconnecting and starts over if NATS goes away.
    """

    def __init__(
        self, nats_url: str, namespace: str, wanted: Sequence[str], since_ms: int, credentials: Mapping[str, str]
    ) -> None:
        super().__init__(name="health-watch", daemon=True)
        self.nats_url = nats_url
        self.credentials = dict(credentials)  # user/password when the stack's NATS has users
        self.namespace = namespace
        self.wanted = list(wanted)
        self.since_ms = since_ms
        self.missing = list(wanted)
        self.ready = threading.Event()
        self.cancel = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run(self._watch())

    async def _watch(self) -> None:
        import nats

        from shared.domain.subjects import Names
        from shared.infra.bus import BUS_ERRORS, read_health

        async def quiet(_exc: Exception) -> None:
            return None

        names = Names(self.namespace)
        nc = None
        try:
            while not self.cancel.is_set():
                try:
                    if nc is None or nc.is_closed:
                        nc = await nats.connect(
                            self.nats_url, name="regimes-up", connect_timeout=1, allow_reconnect=False,
                            error_cb=quiet, **self.credentials,
                        )
                    records = await read_health(nc.jetstream(), names)
                    self.missing = not_reported(self.wanted, records, self.since_ms)
                    if not self.missing:
                        self.ready.set()
                        return
                except BUS_ERRORS:
                    nc = None
                await asyncio.sleep(0.5)
        finally:
            if nc is not None and not nc.is_closed:
                with contextlib.suppress(Exception):
                    await nc.close()


# --- the supervisor -----------------------------------------------------------------------------


@dataclass
class Embedded:
    """A server `regimes up` started, and what it takes to start it again the same way."""

    server: ManagedServer
    start: Callable[[Path, int], ManagedServer]
    data_dir: Path
    deaths: list[float] = field(default_factory=list)
    next_try: float | None = None  # set while it is down: when to start it again

    @property
    def name(self) -> str:
        return self.server.name


class Supervisor:
    def __init__(self, opts: UpOptions, env: Mapping[str, str] | None = None, home: Path | None = None) -> None:
        self.opts = opts
        self.env = dict(os.environ if env is None else env)
        self.pointer = stackfile.pointer_path(self.env, home or Path.home())
        self.servers: list[Embedded] = []
        self.children: list[Child] = []
        self.stopping = False
        self.exit_code = 0
        self.info: stackfile.StackInfo | None = None
        self.state_path: Path | None = None
        self.previous: str | None = None  # the pointer's stack when we started, if it was running
        self.watch: HealthWatch | None = None
        self.waiting_since = 0.0
        self.auth: security.Embedded | None = None

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
        if opts.data_dir is not None:
            found = stackfile.read_state(opts.data_dir / stackfile.STATE_NAME, stackfile.process_alive)
            if found.alive and found.info is not None:
                say(
                    f"a stack (pid {found.info.pid}) is already running with its data in {opts.data_dir}: "
                    "stop it first, or choose another --data-dir"
                )
                return CONFIG_EXIT
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        temp = opts.data_dir is None
        data_dir = opts.data_dir or Path(tempfile.mkdtemp(prefix="regimes-"))
        try:
            return self._run(data_dir)
        finally:
            self._forget()
            if temp and self.exit_code != 1:
                shutil.rmtree(data_dir, ignore_errors=True)
            elif temp:
                say(f"kept {data_dir} for its logs (remove it when done)")

    def _run(self, data_dir: Path) -> int:
        opts = self.opts
        try:
            # Every user's credentials, and the servers started with them (regimes/security.py).
            auth = security.Embedded.prepare(data_dir, opts.namespace, not opts.nats_url, not opts.redis_url)
            self.auth = auth
            nats_url, redis_url = self._servers(data_dir, auth)
            security.write_endpoints(auth.secrets, nats_url, redis_url)
        except ConfigError as exc:
            say(str(exc))
            return CONFIG_EXIT
        except ServerError as exc:
            say(str(exc))
            self._stop_servers()
            self.exit_code = 1
            return 1
        env = self._child_env(nats_url, redis_url)
        metrics = self._make_children(env, auth, redis_url)
        self.info = self._stack_info(data_dir, env, nats_url, redis_url)
        self._record(data_dir)
        for child in self.children:
            child.start()
        say(f"data in {data_dir}; NATS {nats_url}; Redis {redis_url}")
        say("metrics: " + ", ".join(f"{n} :{p}" for n, p in metrics.items()))
        self._watch_health()
        try:
            self._supervise_until_stopped()
        finally:
            if self.watch is not None:
                self.watch.cancel.set()
            self._stop_all()
        return self.exit_code

    def _child_env(self, nats_url: str, redis_url: str) -> dict[str, str]:
        """What every service is started with, before its own user and metrics port."""
        opts = self.opts
        env = dict(self.env)
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
            env["STRATEGY_CONFIG"] = str(opts.config.resolve())
        return env

    def _make_children(self, env: dict[str, str], auth: security.Embedded, redis_url: str) -> dict[str, int]:
        """One child per replica of every service; returns each one's metrics port (dashboard_api has its own)."""
        metrics: dict[str, int] = {}
        for service in self.opts.services:
            copies = self.opts.replicas.get(service, 1)
            for k in range(copies):
                name = service if copies == 1 else f"{service}#{k + 1}"
                child_env = dict(env) | auth.env(service, redis_url)
                if service != "dashboard_api":  # it serves /metrics on its own port
                    metrics[name] = free_port(self.opts.host)
                    child_env["METRICS_PORT"] = str(metrics[name])
                    child_env["METRICS_HOST"] = self.opts.host
                self.children.append(Child(name, child_env))
        return metrics

    def _stack_info(self, data_dir: Path, env: dict[str, str], nats_url: str, redis_url: str) -> stackfile.StackInfo:
        opts = self.opts
        api_url = local_url("http", opts.host, opts.port) if "dashboard_api" in opts.services else None
        config = env.get("STRATEGY_CONFIG")
        return stackfile.StackInfo(
            pid=os.getpid(),
            pid_start=stackfile.process_start(os.getpid()),
            nats_url=nats_url,
            redis_url=redis_url,
            api_url=api_url,
            namespace=opts.namespace,
            data_dir=str(data_dir),
            strategy_config=str(Path(config).resolve()) if config else None,
            started_at=time.time(),
        )

    def _supervise_until_stopped(self) -> None:
        """Restart what dies, and say when the stack is ready (again, after NATS restarts), until a signal."""
        announced: HealthWatch | None = None  # the watch whose readiness the banner told; a new one after NATS restarts
        while not self.stopping:
            self._supervise_servers()
            if self.stopping:
                break
            self._supervise()
            watch = self.watch
            if watch is not None and watch is not announced:
                if watch.ready.is_set() and ("dashboard_api" not in self.opts.services or self._healthy()):
                    self._banner(again=announced is not None)
                    announced = watch
                elif time.monotonic() - self.waiting_since > WAITING_NOTICE_SEC:
                    say("still waiting for a heartbeat from " + ", ".join(watch.missing))
                    self.waiting_since = time.monotonic()
            time.sleep(0.25)

    def _banner(self, again: bool = False) -> None:
        info = self.info
        assert info is not None
        n = len(self.opts.services)
        say(f"ready{' again' if again else ''}: {n}/{n} services report healthy")
        if info.api_url:
            say(f"  dashboard: {info.api_url}  (Ctrl-C stops everything)")
        env = {k: v for k, v in info.env().items() if k in ("NATS_URL", "REDIS_URL", "API_URL")}
        say(f"  {stackfile.export_line(env)}")
        say('  in another shell: eval "$(.venv/bin/regimes env)" (a bot: --user bot); run bots with .venv/bin/python')

    def _operator(self) -> dict[str, str]:
        """The operator's NATS credentials, when this stack's nats-server runs with users."""
        if self.auth is None or not self.auth.nats:
            return {}
        return {"user": "operator", "password": self.auth.secrets.nats_password("operator").read_text().strip()}

    def _watch_health(self) -> None:
        info = self.info
        assert info is not None
        if self.watch is not None:
            self.watch.cancel.set()
        # A heartbeat from before now (one the KV kept across a NATS restart) does not count.
        since = int(time.time() * 1000)
        self.watch = HealthWatch(info.nats_url, info.namespace, self.opts.services, since, self._operator())
        self.watch.start()
        self.waiting_since = time.monotonic()

    def _servers(self, data_dir: Path, auth: security.Embedded) -> tuple[str, str]:
        opts = self.opts
        urls = []
        starters: tuple[tuple[str | None, Callable[[Path, int], ManagedServer], int, str], ...] = (
            (opts.nats_url, functools.partial(start_nats, conf=auth.secrets.nats_auth), opts.nats_port, "nats"),
            (opts.redis_url, functools.partial(start_redis, aclfile=auth.secrets.redis_acl), opts.redis_port, "redis"),
        )
        for given, starter, port, sub in starters:
            if given:
                urls.append(given)
                continue
            # Started again the same way (credentials included) should it die.
            server = starter(data_dir / sub, port)
            self.servers.append(Embedded(server, starter, data_dir / sub))
            urls.append(server.url)
        return urls[0], urls[1]

    # --- the state file and the pointer

    def _record(self, data_dir: Path, point: bool = True) -> None:
        """Write our state file and (at start) point the user's pointer at it, remembering a live stack it named.

        After a server restart only the state file changes: the pointer may name a stack started since.
        """
        assert self.info is not None
        info = dataclasses.replace(self.info, servers={e.name: e.server.proc.pid for e in self.servers})
        self.info = info
        self.state_path = data_dir / stackfile.STATE_NAME
        stackfile.write_atomic(self.state_path, info.to_json())
        if not point:
            return
        if self.previous is None:
            target = stackfile.pointer_target(self.pointer)
            if target is not None and target != str(self.state_path):
                found = stackfile.read_state(Path(target), stackfile.process_alive)
                if found.alive and found.info is not None:
                    self.previous = target
                    say(
                        f"another stack is running (pid {found.info.pid}, data in {found.info.data_dir}); "
                        f"`regimes` commands now use this one (--data-dir {found.info.data_dir} picks that one)"
                    )
        stackfile.write_atomic(self.pointer, stackfile.pointer_text(self.state_path))

    def _forget(self) -> None:
        """Remove our state file, and the pointer if it still names it (or hand it back to the stack before us)."""
        if self.state_path is None:
            return
        ours = str(self.state_path)
        previous_alive = self.previous is not None and stackfile.read_state(
            Path(self.previous), stackfile.process_alive
        ).alive
        action = stackfile.pointer_after_stop(
            stackfile.pointer_target(self.pointer), ours, self.previous, previous_alive
        )
        if action == "restore" and self.previous is not None:
            stackfile.write_atomic(self.pointer, stackfile.pointer_text(Path(self.previous)))
        elif action == "remove":
            with contextlib.suppress(FileNotFoundError):
                self.pointer.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        self.state_path = None

    # --- supervision

    def _healthy(self) -> bool:
        url = f"{local_url('http', self.opts.host, self.opts.port)}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def _supervise_servers(self) -> None:
        """Start a dead embedded server again, same port and data dir; give up (exit 1) when it will not stay up."""
        for emb in self.servers:
            now = time.monotonic()
            server = emb.server
            if emb.next_try is None:
                code = server.proc.poll()
                if code is None:
                    continue
                emb.deaths.append(now)
                tail = server.tail(5)
                say(f"{emb.name} (pid {server.proc.pid}) died: {exit_reason(code)}")
                if tail:
                    say(f"  its last log lines ({server.log}):")
                    for line in tail.splitlines():
                        say(f"    {line}")
                self._plan_restart(emb, now, f"it died {len(emb.deaths)} times")
                continue
            if now < emb.next_try or self.stopping:
                continue
            try:
                emb.server = emb.start(emb.data_dir, server.port)
            except ServerError as exc:
                emb.deaths.append(time.monotonic())
                say(f"{emb.name} did not come back on port {server.port}: {exc}")
                self._plan_restart(emb, time.monotonic(), str(exc).splitlines()[0])
                continue
            emb.next_try = None
            say(f"{emb.name} is back on port {server.port} (pid {emb.server.proc.pid}), data in {emb.data_dir}")
            if self.state_path is not None:
                self._record(self.state_path.parent, point=False)
            if emb.server.url == (self.info.nats_url if self.info else None):
                self._watch_health()

    def _plan_restart(self, emb: Embedded, now: float, why: str) -> None:
        delay = server_restart_delay(emb.deaths, now)
        if delay is None:
            say(
                f"{emb.name} cannot be kept running ({why}, {len(emb.deaths)} times in "
                f"{SERVER_WINDOW_SEC:.0f}s); stopping everything"
            )
            self.exit_code = 1
            self.stopping = True
            return
        emb.next_try = now + delay
        when = "now" if delay == 0 else f"in {delay:.0f}s"
        say(f"starting {emb.name} again {when}, on port {emb.server.port} with its data in {emb.data_dir}")

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
        for emb in reversed(self.servers):
            stop_process(emb.server.proc)
