"""Operating a running `regimes up`: finding it, feeding it, a bot on it, its servers dying, its clean stop.

One stack (no --data-dir, so a temp dir) serves the tests of this module in
file order, as an operator would meet it: commands find it by themselves, the
README's bot snippet runs on it verbatim, its nats-server is SIGKILLed and
comes back, and a Ctrl-C leaves no state, pointer, temp dir or process behind.
Each test runs `regimes` with XDG_RUNTIME_DIR in the test's own directory, so
the user's real pointer is never touched.

What was tried to break it: NATS_URL and friends unset (no silent 4222), a
second `regimes up` on the same data dir, the README snippet run from
another directory, a SIGKILLed nats-server (data must survive, decisions
must resume, the banner must come again), a server that cannot come back
because its port was taken meanwhile (the stack must stop, exit 1, say why).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from regimes.servers import free_port
from tests.e2e.conftest import alive, processes_mentioning

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError, OSError, KeyError):
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not seen within {timeout:.0f}s (last: {last!r})")


def clean_env(runtime: Path) -> dict[str, str]:
    """The caller's environment without anything that says where a stack is, and a runtime dir of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "REDIS_", "API_", "REGIMES_"))}
    env["XDG_RUNTIME_DIR"] = str(runtime)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def regimes(env: dict[str, str], *args: str, timeout: float = 60, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "regimes.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )




@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]
    runtime: Path
    port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def pointer(self) -> Path:
        return self.runtime / "regimes" / "stack.json"

    def state(self) -> dict[str, Any]:
        target = Path(json.loads(self.pointer.read_text())["state"])
        return json.loads(target.read_text())

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as resp:
            return json.loads(resp.read())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal delivers
        return self.proc.wait(60)


def start_up(tmp: Path, *args: str) -> Up:
    runtime = tmp / "runtime"
    runtime.mkdir(parents=True, exist_ok=True)
    env = clean_env(runtime)
    port = free_port()
    log = tmp / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "regimes.cli", "up", "--port", str(port), *args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Up(proc, log, env, runtime, port)


def fast_demo(tmp: Path) -> Path:
    cfg = json.loads((ROOT / "config" / "strategy_config.json").read_text())
    cfg["demo"]["bars_per_sec"] = 10.0
    path = tmp / "strategy_config.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("operator")
    # Two copies of two services: everything below runs against a scaled stack.
    stack = start_up(tmp, "--config", str(fast_demo(tmp)), "--replicas", "vol_regime=2", "state_publisher=2")
    try:
        wait_for(lambda: "regimes | ready: 6/6 services report healthy" in stack.output(), 120, "the ready banner")
        yield stack
    finally:
        if stack.proc.poll() is None:
            stack.proc.send_signal(signal.SIGINT)
            try:
                stack.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(stack.proc.pid, signal.SIGKILL)


def exports(text: str) -> dict[str, str]:
    words = shlex.split(text.strip())
    assert words[0] == "export", text
    return dict(w.split("=", 1) for w in words[1:])


# --- finding the stack


@pytest.mark.timeout(200)
def test_the_banner_and_env_say_where_the_stack_is(up: Up) -> None:
    state = up.state()
    banner = up.output()
    assert f"export NATS_URL={state['nats_url']} REDIS_URL={state['redis_url']}" in banner
    assert f"API_URL=http://127.0.0.1:{up.port}" in banner
    done = regimes(up.env, "env")
    assert done.returncode == 0, done.stderr
    env = exports(done.stdout)
    assert env["NATS_URL"] == state["nats_url"]
    assert env["REDIS_URL"] == state["redis_url"]
    assert env["API_URL"] == f"http://127.0.0.1:{up.port}"
    # an older `eval` left in the environment does not change what `env` reports
    stale = {**up.env, "NATS_URL": "nats://127.0.0.1:1"}
    assert exports(regimes(stale, "env").stdout)["NATS_URL"] == state["nats_url"]


def test_commands_find_the_stack_without_flags_and_close_quietly(up: Up, tmp_path: Path) -> None:
    csv = tmp_path / "WALK_USD-1m.csv"  # named the freqtrade way: no --symbol or --timeframe needed
    start = (int(time.time()) // 60 - 50) * 60_000
    rows = [f"{start + i * 60_000},10,11,9,10.5,1" for i in range(30)]
    csv.write_text("ts,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    done = regimes(up.env, "import", str(csv), "--exchange", "file")
    assert done.returncode == 0, done.stderr
    assert "published 30 candles (30 new" in done.stdout
    assert "disconnected" not in done.stdout + done.stderr  # a close we asked for is not a warning
    status = regimes(up.env, "status")
    assert status.returncode == 0, status.stderr
    assert f"stack: pid {up.proc.pid}" in status.stdout
    for service in ("ohlcv_ingest", "vol_regime", "hmm_regime", "screener", "state_publisher", "dashboard_api"):
        assert re.search(rf"^\s+{service}\s", status.stdout, flags=re.M), status.stdout
    for scaled in ("vol_regime", "state_publisher"):  # --replicas NAME=2: two replicas, each with an id of its own
        assert len(re.findall(rf"^\s+{scaled}\s", status.stdout, flags=re.M)) >= 2, status.stdout


def test_a_second_up_on_the_same_data_dir_is_refused(up: Up) -> None:
    data = up.state()["data_dir"]
    done = regimes(up.env, "up", "--port", str(free_port()), "--data-dir", data)
    assert done.returncode == 2
    assert f"pid {up.proc.pid}" in done.stdout
    assert "already running" in done.stdout


def readme_bot_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using it from a bot") :]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match is not None, "no python block under 'Using it from a bot'"
    return match.group(1)


def test_the_readme_bot_snippet_runs_verbatim_against_the_stack(up: Up, tmp_path: Path) -> None:
    snippet = readme_bot_snippet()
    assert 'os.environ["NATS_URL"]' in snippet
    assert "4222" not in snippet
    bot = tmp_path / "my_bot.py"
    bot.write_text(snippet)
    env = {**up.env, **exports(regimes(up.env, "env", "--user", "bot").stdout)}  # eval "$(regimes env --user bot)"
    out = tmp_path / "bot.out"
    with out.open("wb") as sink:
        # from another directory, with the project's Python, as the README says
        proc = subprocess.Popen(
            [sys.executable, str(bot)], cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        symbols = {s["symbol"] for s in up.get("/api/symbols")}
        line = wait_for(
            lambda: next((ln for ln in out.read_text().splitlines() if ln.split(" ")[0] in symbols), None),
            60,
            "a decision printed by the bot",
        )
        assert proc.poll() is None, out.read_text()
        assert line.split(" ")[1] in ("low", "normal", "high", "crisis")
    finally:
        proc.kill()
        proc.wait(10)


# --- supervision of the servers


def _latest_decision_ts(up: Up) -> int:
    """The newest decision of the demo market (live; the file imported above is history that never moves)."""
    return max((s.get("screener") or {}).get("ts") or 0 for s in up.get("/api/symbols?exchange=demo"))


def _ohlcv_messages(state: dict[str, Any]) -> int:
    """Candles in the stack's OHLCV stream, asked as the operator (the stack's NATS has users)."""
    import asyncio

    import nats

    from regimes.security import Secrets

    password = Secrets(Path(state["data_dir"]) / "secrets").nats_password("operator").read_text().strip()

    async def count() -> int:
        nc = await nats.connect(state["nats_url"], allow_reconnect=False, user="operator", password=password)
        try:
            return (await nc.jetstream().stream_info("OHLCV")).state.messages
        finally:
            await nc.close()

    return asyncio.run(count())


@pytest.mark.timeout(200)
def test_a_sigkilled_nats_server_comes_back_and_the_stack_decides_again(up: Up) -> None:
    state = up.state()
    old_pid = state["servers"]["nats-server"]
    stored = _ohlcv_messages(state)
    assert stored > 0
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: f"nats-server (pid {old_pid}) died: killed by SIGKILL" in up.output(), 20, "the death logged")
    new = wait_for(
        lambda: (pid := up.state()["servers"]["nats-server"]) != old_pid and pid, 40, "a new nats-server pid"
    )
    assert alive(new)
    assert up.state()["nats_url"] == state["nats_url"]  # same port: the services' reconnect finds it
    assert "nats-server is back on port" in up.output()
    assert _ohlcv_messages(state) >= stored  # same data dir: JetStream kept the candles
    wait_for(lambda: "regimes | ready again: 6/6 services report healthy" in up.output(), 90, "the banner again")
    after = _latest_decision_ts(up)
    try:
        wait_for(lambda: _latest_decision_ts(up) > after, 60, "a decision made after the restart")
    except AssertionError as exc:  # say which service stalled
        raise AssertionError(f"{exc}\n{regimes(up.env, 'status').stdout}\n{up.output()[-4000:]}") from None
    assert up.proc.poll() is None


@pytest.mark.timeout(120)
def test_ctrl_c_leaves_no_state_pointer_temp_dir_or_process(up: Up) -> None:
    state = up.state()
    data = Path(state["data_dir"])
    assert data.is_dir()
    code = up.stop()
    output = up.output()
    assert code == 0, output[-3000:]
    assert "regimes | stopped" in output
    assert not data.exists(), "the temp data dir outlived a clean stop"
    assert not up.pointer.exists()
    assert processes_mentioning(str(data)) == []
    assert not [pid for pid in state["servers"].values() if alive(pid)]
    done = regimes(up.env, "status")
    assert done.returncode == 1
    assert "no running stack found" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(150)
def test_a_server_that_cannot_come_back_stops_the_stack_with_exit_1(tmp_path: Path) -> None:
    stack = start_up(tmp_path, "--only", "vol_regime", "--data-dir", str(tmp_path / "data"))
    try:
        wait_for(lambda: "regimes | ready: 1/1 services report healthy" in stack.output(), 90, "the ready banner")
        state = stack.state()
        port = int(state["nats_url"].rsplit(":", 1)[1])
        # Freeze the supervisor so that the port can be taken before it restarts the server.
        os.kill(stack.proc.pid, signal.SIGSTOP)
        try:
            os.kill(state["servers"]["nats-server"], signal.SIGKILL)
            with socket.socket() as squatter:
                squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

                def take_port() -> bool:
                    squatter.bind(("127.0.0.1", port))  # OSError while the port is still in use
                    return True

                wait_for(take_port, 10, "the port free to take")
                squatter.listen()
                os.kill(stack.proc.pid, signal.SIGCONT)
                code = stack.proc.wait(90)
        finally:
            if stack.proc.poll() is None:  # never leave it frozen, whatever failed above
                os.kill(stack.proc.pid, signal.SIGCONT)
        output = stack.output()
        assert code == 1, output[-3000:]
        assert "nats-server cannot be kept running" in output
        assert "stopping everything" in output
        assert "regimes | stopped" in output
        assert processes_mentioning(str(tmp_path / "data")) == []
        assert not (tmp_path / "data" / "stack.json").exists()
        assert not stack.pointer.exists()
    finally:
        if stack.proc.poll() is None:
            os.killpg(stack.proc.pid, signal.SIGKILL)
            stack.proc.wait(10)
