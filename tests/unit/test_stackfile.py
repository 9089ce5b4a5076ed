"""Finding the running stack: decisions as functions of plain values, then the thin file and pid shell.

What was tried to break it: no pointer, a pointer to a deleted state file, garbage in either file, a
state of another version, a dead pid, a pid reused by another process, NATS_URL left over from an
older stack, --nats-url to some other NATS (the stack's namespace and config must not leak onto it),
two stacks sharing the pointer, values a shell would split or expand.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from regimes import stackfile
from regimes.stackfile import Found, NoStack, StackInfo, resolve
from regimes.supervisor import exit_reason, local_url, not_reported, parse_replicas, server_restart_delay
from shared.domain.control import Heartbeat
from shared.domain.errors import ConfigError

STACK = StackInfo(
    pid=4242,
    nats_url="nats://127.0.0.1:40001",
    redis_url="redis://127.0.0.1:40002",
    api_url="http://127.0.0.1:8000",
    namespace="paper",
    data_dir="/tmp/regimes-x",
    strategy_config="/cfg/my.json",
    started_at=1.0,
    pid_start="123",
    servers={"nats-server": 1, "redis-server": 2},
)
POINTER = Path("/run/user/0/regimes/stack.json")
LIVE = Found(POINTER, STACK, alive=True)
STALE = Found(POINTER, STACK, alive=False, problem="the stack recorded in x (pid 4242) is no longer running")
NONE = Found(POINTER, problem=f"no {POINTER}")


# --- where the pointer lives


def test_pointer_prefers_the_runtime_dir() -> None:
    assert stackfile.pointer_path({"XDG_RUNTIME_DIR": "/run/user/7"}, Path("/home/a")) == Path(
        "/run/user/7/regimes/stack.json"
    )
    assert stackfile.pointer_path({}, Path("/home/a")) == Path("/home/a/.cache/regimes/stack.json")
    assert stackfile.pointer_path({"XDG_RUNTIME_DIR": ""}, Path("/home/a")) == Path("/home/a/.cache/regimes/stack.json")


# --- resolve: flags, environment, stack, or a hint


def test_the_running_stack_is_used_when_nothing_is_given() -> None:
    where = resolve(None, {}, LIVE)
    assert (where.nats_url, where.redis_url, where.api_url) == (STACK.nats_url, STACK.redis_url, STACK.api_url)
    assert (where.namespace, where.strategy_config) == ("paper", "/cfg/my.json")
    assert where.stack == STACK
    assert "pid 4242" in where.nats_source


@pytest.mark.parametrize("found", [NONE, STALE])
def test_no_stack_and_nothing_given_refuses_with_one_line(found: Found) -> None:
    with pytest.raises(NoStack) as err:
        resolve(None, {}, found)
    text = str(err.value)
    assert "\n" not in text
    assert "regimes up" in text
    assert "--nats-url" in text
    assert found.problem is not None
    assert found.problem in text


def test_never_a_silent_default() -> None:
    with pytest.raises(NoStack):
        resolve(None, {"REDIS_URL": "redis://x:1"}, NONE)  # REDIS_URL alone does not say where NATS is


@pytest.mark.parametrize("found", [NONE, STALE, LIVE])
def test_the_flag_wins_over_everything(found: Found) -> None:
    where = resolve("nats://elsewhere:4222", {"NATS_URL": "nats://env:4222"}, found)
    assert (where.nats_url, where.nats_source) == ("nats://elsewhere:4222", "--nats-url")
    # another NATS: the stack's namespace, config and Redis do not apply to it
    assert where.stack is None
    assert where.namespace is None
    assert where.strategy_config is None


def test_nats_url_from_the_environment_wins_over_the_stack_and_a_stale_one_is_pointed_out() -> None:
    where = resolve(None, {"NATS_URL": "nats://127.0.0.1:39999"}, LIVE)
    assert (where.nats_url, where.nats_source) == ("nats://127.0.0.1:39999", "NATS_URL")
    hint = where.mismatch()
    assert hint is not None
    assert STACK.nats_url in hint
    assert "regimes env" in hint


def test_nats_url_that_is_the_stacks_own_still_gets_the_stacks_namespace() -> None:
    where = resolve(None, {"NATS_URL": STACK.nats_url}, LIVE)  # after eval "$(regimes env)"
    assert where.stack == STACK
    assert where.namespace == "paper"
    assert where.mismatch() is None


def test_resolved_env_fills_in_but_never_overrides_what_the_user_set() -> None:
    where = resolve(None, {}, LIVE)
    env = where.env({"REGIMES_NAMESPACE": "mine", "PATH": "/bin"})
    assert env["NATS_URL"] == STACK.nats_url
    assert env["REDIS_URL"] == STACK.redis_url
    assert env["REGIMES_NAMESPACE"] == "mine"
    assert env["STRATEGY_CONFIG"] == "/cfg/my.json"
    assert env["PATH"] == "/bin"


# --- env for shells


def test_export_line_survives_a_shell() -> None:
    info = StackInfo(1, "nats://h:1", "redis://h:2/0", None, "", "/d", strategy_config="/my dir/$HOME;x.json")
    line = stackfile.export_line(info.env())
    assert line.startswith("export NATS_URL=nats://h:1 REDIS_URL=redis://h:2/0 ")
    assert "API_URL" not in line  # no dashboard_api in that stack
    words = shlex.split(line)[1:]
    assert dict(w.split("=", 1) for w in words)["STRATEGY_CONFIG"] == "/my dir/$HOME;x.json"
    assert "REGIMES_NAMESPACE=" in words  # an empty one is said, so an older stack's does not linger


def test_state_round_trips_and_refuses_what_it_did_not_write() -> None:
    assert StackInfo.from_json(STACK.to_json()) == STACK
    for text in ("[]", '{"version": 99, "pid": 1}', '{"version": 1, "pid": 1}', '{"version": 1, "bogus": 2}'):
        with pytest.raises(ValueError):  # noqa: PT011 - every reason is a ValueError by design
            StackInfo.from_json(text)


# --- the pointer on stop


@pytest.mark.parametrize(
    ("target", "previous", "previous_alive", "action"),
    [
        ("/a/stack.json", None, False, "remove"),
        ("/b/stack.json", None, False, "keep"),  # another stack started since: its pointer, not ours
        (None, None, False, "keep"),
        ("/a/stack.json", "/b/stack.json", True, "restore"),  # back to the stack that was running before us
        ("/a/stack.json", "/b/stack.json", False, "remove"),
    ],
)
def test_pointer_after_stop(target: str | None, previous: str | None, previous_alive: bool, action: str) -> None:
    assert stackfile.pointer_after_stop(target, "/a/stack.json", previous, previous_alive) == action


# --- the file shell


def _alive(pid: int, _start: str | None) -> bool:
    return pid == 4242


def test_read_stack_follows_the_pointer(tmp_path: Path) -> None:
    pointer = tmp_path / "rt" / "stack.json"
    state = tmp_path / "data" / "stack.json"
    assert stackfile.read_stack(pointer, _alive).problem == f"no {pointer}"
    stackfile.write_atomic(pointer, stackfile.pointer_text(state))
    assert "which is gone" in (stackfile.read_stack(pointer, _alive).problem or "")
    stackfile.write_atomic(state, "{not json")
    assert "unreadable" in (stackfile.read_stack(pointer, _alive).problem or "")
    stackfile.write_atomic(state, STACK.to_json())
    assert stackfile.read_stack(pointer, _alive) == Found(pointer, STACK, alive=True)
    stackfile.write_atomic(state, dataclasses.replace(STACK, pid=1).to_json())
    found = stackfile.read_stack(pointer, _alive)
    assert not found.alive
    assert "no longer running" in (found.problem or "")
    pointer.write_text("garbage")
    assert "unreadable" in (stackfile.read_stack(pointer, _alive).problem or "")
    assert [p.name for p in pointer.parent.iterdir()] == ["stack.json"]  # no temp files left


def test_write_atomic_makes_a_private_directory(tmp_path: Path) -> None:
    stackfile.write_atomic(tmp_path / "new" / "stack.json", "x")
    assert (tmp_path / "new").stat().st_mode & 0o077 == 0


# --- pids


def test_our_own_process_is_alive_and_a_reused_pid_is_not_ours() -> None:
    me = os.getpid()
    start = stackfile.process_start(me)
    assert stackfile.process_alive(me, start)
    assert stackfile.process_alive(me, None)
    if start is not None:  # Linux: a pid now running something that started at another time
        assert not stackfile.process_alive(me, str(int(start) + 1))


def test_an_exited_process_is_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    start = stackfile.process_start(proc.pid)
    proc.wait()
    assert not stackfile.process_alive(proc.pid, start)


def test_a_zombie_is_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        stat = Path(f"/proc/{proc.pid}/stat")
        if not stat.exists():
            pytest.skip("no /proc here")
        deadline = time.monotonic() + 10
        while stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z":  # exited, not reaped: we have not waited
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        assert not stackfile.process_alive(proc.pid, None)
    finally:
        proc.wait()


# --- supervisor decisions


def test_a_dead_server_is_restarted_at_once_then_with_backoff_then_given_up() -> None:
    assert server_restart_delay([100.0], 100.0) == 0.0
    assert server_restart_delay([100.0, 101.0], 101.0) == 1.0
    assert server_restart_delay([100.0, 101.0, 102.0], 102.0) == 2.0
    assert server_restart_delay([100.0, 101.0, 102.0, 104.0], 104.0) == 4.0
    assert server_restart_delay([100.0, 101.0, 102.0, 104.0, 108.0], 108.0) is None
    # deaths long ago do not count: a server that dies once a day is restarted every time
    assert server_restart_delay([0.0, 1000.0, 2000.0, 3000.0, 4000.0], 4000.0) == 0.0


def test_readiness_needs_a_heartbeat_since_the_epoch_from_every_service() -> None:
    def beat(service: str, last_seen: int) -> Heartbeat:
        return Heartbeat(service, "r", "host", 1, started_at=0, last_seen=last_seen, handled=0, skipped=0,
                         dead_lettered=0)

    records = [
        beat("vol_regime", 2_000),
        beat("screener", 999),  # before a NATS restart, kept by the KV
    ]
    assert not_reported(["vol_regime", "screener", "hmm_regime", "dashboard_api"], records, 1_000) == [
        "screener",
        "hmm_regime",
        "dashboard_api",
    ]
    assert not_reported(["vol_regime"], records, 1_000) == []


def test_exit_reasons_and_local_urls() -> None:
    assert exit_reason(-9) == "killed by SIGKILL"
    assert exit_reason(1) == "exit status 1"
    assert local_url("http", "0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert local_url("http", "127.0.0.2", 8001) == "http://127.0.0.2:8001"


# --- the command line on top


def test_cli_find_reads_the_pointer_or_a_data_dir(tmp_path: Path) -> None:
    import argparse

    from regimes.cli import find

    me = dataclasses.replace(STACK, pid=os.getpid(), pid_start=stackfile.process_start(os.getpid()))
    state = tmp_path / "data" / "stack.json"
    stackfile.write_atomic(state, me.to_json())
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "rt")}
    args = argparse.Namespace(nats_url=None, data_dir=None)
    with pytest.raises(NoStack):
        find(args, env, tmp_path / "home")
    stackfile.write_atomic(stackfile.pointer_path(env, tmp_path / "home"), stackfile.pointer_text(state))
    assert find(args, env, tmp_path / "home").stack == me
    assert find(argparse.Namespace(nats_url=None, data_dir=state.parent), {}, tmp_path / "home").stack == me


@pytest.mark.parametrize("command", [["import", "WALK_USD-1m.csv"], ["backfill"], ["status"], ["env"]])
def test_without_a_stack_a_command_refuses_in_one_line(tmp_path: Path, command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "REDIS_", "REGIMES_"))}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "regimes.cli", *command], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert "no running stack" in line
    assert "regimes up" in line


def test_replicas_are_asked_for_by_name_and_bounded() -> None:
    assert parse_replicas(["vol_regime=3", "state_publisher=2"]) == {"vol_regime": 3, "state_publisher": 2}
    for bad in ("vol_regime", "vol_regime=0", "vol_regime=9", "dashboard_api=2", "ohlcv_ingest=2", "volregime=2"):
        with pytest.raises(ConfigError) as info:
            parse_replicas([bad])
        assert info.value.key == "--replicas"
