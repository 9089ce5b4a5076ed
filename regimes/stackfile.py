"""Where a running `regimes up` is, so that every other `regimes` command finds it without flags.

`regimes up` writes a small JSON *state file* into its data directory
(``stack.json``: its pid, the NATS / Redis / API URLs, namespace, config, the
servers' pids) and a *pointer* to that file in the user's runtime directory
(``$XDG_RUNTIME_DIR/regimes/stack.json``, else ``~/.cache/regimes/stack.json``).
It removes both on a clean stop. A state whose pid is dead (or has been reused
by another process) is stale and ignored.

The decisions are pure functions of plain values (:func:`resolve`,
:func:`pointer_after_stop`); reading files and probing pids is the thin shell
around them (:func:`read_stack`, :func:`process_alive`).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_NAME = "stack.json"
STATE_VERSION = 1
START_HINT = "start one with `python3 dev.py up` (or `.venv/bin/regimes up`), or give --nats-url / set NATS_URL"


class NoStack(RuntimeError):
    """No running stack to talk to; the message is one line saying what to do."""


@dataclass(frozen=True, slots=True)
class StackInfo:
    """What `regimes up` records about itself."""

    pid: int
    nats_url: str
    redis_url: str
    api_url: str | None  # None when dashboard_api is not among the services
    namespace: str
    data_dir: str
    strategy_config: str | None = None  # absolute; None: the services' default
    started_at: float = 0.0  # unix seconds
    pid_start: str | None = None  # the pid's start time (/proc), so a reused pid is not taken for ours
    servers: dict[str, int] = field(default_factory=dict)  # embedded server name -> pid
    version: int = STATE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> StackInfo:
        """ValueError for anything that is not a state file this version wrote."""
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            raise ValueError("not a regimes stack file of this version")
        try:
            info = cls(**raw)
        except TypeError as exc:
            raise ValueError(f"unexpected fields: {exc}") from None
        if not isinstance(info.pid, int) or not isinstance(info.nats_url, str) or not info.nats_url:
            raise ValueError("no pid or NATS URL")
        return info

    def env(self) -> dict[str, str]:
        """The environment a shell or a bot needs to talk to this stack."""
        out = {"NATS_URL": self.nats_url, "REDIS_URL": self.redis_url}
        if self.api_url:
            out["API_URL"] = self.api_url
        out["REGIMES_NAMESPACE"] = self.namespace
        if self.strategy_config:
            out["STRATEGY_CONFIG"] = self.strategy_config
        return out


def export_line(env: Mapping[str, str]) -> str:
    """``export K=V ...`` quoted for a POSIX shell (``eval "$(regimes env)"``)."""
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


def pointer_path(env: Mapping[str, str], home: Path) -> Path:
    """The pointer's place: the user's runtime dir when there is one (it is per-login and cleared at reboot)."""
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "regimes" / STATE_NAME
    return home / ".cache" / "regimes" / STATE_NAME


# --- finding a stack ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    """What the files say, before any decision: a live stack, a stale one, or nothing (and why)."""

    pointer: Path
    info: StackInfo | None = None
    alive: bool = False
    problem: str | None = None  # why there is no usable stack, for the hint


@dataclass(frozen=True, slots=True)
class Resolved:
    """Where a command connects, and why there."""

    nats_url: str
    nats_source: str  # "--nats-url", "NATS_URL", or the stack file
    redis_url: str | None
    api_url: str | None
    namespace: str | None  # None: leave REGIMES_NAMESPACE to the environment / default
    strategy_config: str | None
    stack: StackInfo | None  # the running stack these values came from, if any
    running: StackInfo | None = None  # the running stack, whether or not these values came from it

    def mismatch(self) -> str | None:
        """A hint when an explicit NATS URL is not the running stack's (a stale ``eval "$(regimes env)"``, say)."""
        if self.running is None or self.stack is not None:
            return None
        return (
            f"{self.nats_source} is {self.nats_url}, but the running stack (pid {self.running.pid}) is at "
            f"{self.running.nats_url}: eval \"$(.venv/bin/regimes env)\" to use it"
        )

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` (the process environment) with what was resolved filled in; what ``base`` sets wins."""
        out = dict(base)
        out["NATS_URL"] = self.nats_url
        for key, value in (
            ("REDIS_URL", self.redis_url),
            ("REGIMES_NAMESPACE", self.namespace),
            ("STRATEGY_CONFIG", self.strategy_config),
        ):
            if value is not None and key not in base:
                out[key] = value
        return out


def resolve(nats_flag: str | None, env: Mapping[str, str], found: Found) -> Resolved:
    """Where to connect: --nats-url, then NATS_URL, then the running stack; NoStack (with a hint) otherwise.

    The stack's other values (Redis, API, namespace, config) are used only
    when NATS is the stack's own: with an explicit URL elsewhere they would
    describe some other deployment.
    """
    stack = found.info if found.alive else None
    if nats_flag:
        url, source = nats_flag, "--nats-url"
    elif env.get("NATS_URL"):
        url, source = env["NATS_URL"], "NATS_URL"
    elif stack is not None:
        url, source = stack.nats_url, f"the stack of pid {stack.pid} ({found.pointer})"
    else:
        raise NoStack(f"no running stack found ({found.problem}): {START_HINT}")
    if stack is None or url != stack.nats_url:
        return Resolved(url, source, env.get("REDIS_URL"), env.get("API_URL"), None, None, None, stack)
    return Resolved(url, source, stack.redis_url, stack.api_url, stack.namespace, stack.strategy_config, stack, stack)


def read_stack(pointer: Path, alive: Callable[[int, str | None], bool]) -> Found:
    """Follow the pointer to the state file and ask ``alive`` about its pid; never raises for bad files."""
    try:
        target = Path(json.loads(pointer.read_text())["state"])
    except FileNotFoundError:
        return Found(pointer, problem=f"no {pointer}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Found(pointer, problem=f"{pointer} is unreadable: {exc}")
    try:
        info = StackInfo.from_json(target.read_text())
    except FileNotFoundError:
        return Found(pointer, problem=f"{pointer} names {target}, which is gone")
    except (OSError, ValueError) as exc:
        return Found(pointer, problem=f"{target} is unreadable: {exc}")
    if not alive(info.pid, info.pid_start):
        return Found(pointer, info, problem=f"the stack recorded in {target} (pid {info.pid}) is no longer running")
    return Found(pointer, info, alive=True)


def read_state(path: Path, alive: Callable[[int, str | None], bool]) -> Found:
    """A state file read directly (a data dir's), as :func:`read_stack` reads the pointer's."""
    try:
        info = StackInfo.from_json(path.read_text())
    except FileNotFoundError:
        return Found(path, problem=f"no {path}")
    except (OSError, ValueError) as exc:
        return Found(path, problem=f"{path} is unreadable: {exc}")
    if not alive(info.pid, info.pid_start):
        return Found(path, info, problem=f"the stack recorded in {path} (pid {info.pid}) is no longer running")
    return Found(path, info, alive=True)


# --- writing and removing -------------------------------------------------------------


def pointer_text(state: Path) -> str:
    return json.dumps({"state": str(state)}) + "\n"


def pointer_after_stop(pointer_target: str | None, ours: str, previous: str | None, previous_alive: bool) -> str:
    """What a stopping stack does with the pointer: ``"keep"``, ``"remove"`` or ``"restore"``.

    Only a pointer naming our own state is touched (another stack may have
    started since and pointed it at itself); if a stack that was running when
    we started is still alive, the pointer goes back to it.
    """
    if pointer_target != ours:
        return "keep"
    if previous is not None and previous != ours and previous_alive:
        return "restore"
    return "remove"


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def pointer_target(pointer: Path) -> str | None:
    try:
        return str(json.loads(pointer.read_text())["state"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- processes -------------------------------------------------------------------------


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux /proc), None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name in (...) may hold spaces
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5); fields[0] is field 3


def process_alive(pid: int, start: str | None) -> bool:
    """True if ``pid`` runs and, when its start time was recorded, is still the same process (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive, and not ours if the start time differs
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        state = ""
    if state == "Z":  # exited, not yet reaped
        return False
    now = process_start(pid)
    return start is None or now is None or now == start
