"""`regimes up` as a newcomer runs it: embedded servers, six services, demo market, clean Ctrl-C.

This runs the same ``python -m services.<name>`` entrypoints the compose file
does, as real processes, so it is also the check that compose's commands work.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import pytest

from regimes.servers import free_port
from tests.e2e.conftest import alive, processes_mentioning

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as resp:
        return json.loads(resp.read())


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            last = None
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} not seen within {timeout:.0f}s (last: {last!r})")




@pytest.fixture
def fast_demo(tmp_path: Path) -> Path:
    """The shipped config with the demo played at 10 bars/s instead of 4, to keep the test short."""
    cfg = json.loads((ROOT / "config" / "strategy_config.json").read_text())
    cfg["demo"]["bars_per_sec"] = 10.0
    path = tmp_path / "strategy_config.json"
    path.write_text(json.dumps(cfg))
    return path


def regimes_up(port: int, data: Path, config: Path, runtime: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """`regimes up` on ``port`` with ``config``, its servers' data in ``data``, its output into ``log``.

    Run without the caller's NATS_/REDIS_/API_ settings; the stack's pointer goes under ``runtime``
    (as XDG_RUNTIME_DIR), not into the user's.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "REDIS_", "API_"))}
    env["XDG_RUNTIME_DIR"] = str(runtime)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "regimes.cli",
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--config",
            str(config),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.timeout(240)
def test_up_shows_every_regime_and_ctrl_c_leaves_nothing_behind(tmp_path: Path, fast_demo: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    log = (tmp_path / "up.log").open("wb")
    up = regimes_up(port, data, fast_demo, tmp_path / "runtime", log)
    try:
        symbols = wait_for(lambda: len(get(port, "/api/symbols")) == 8 and get(port, "/api/symbols"), 90, "8 symbols")
        assert {s["exchange"] for s in symbols} == {"demo"}

        def regimes_seen() -> set[str]:
            seen = set()
            for s in get(port, "/api/symbols"):
                if s["vol_regime"]:
                    seen.add(s["vol_regime"])
                detail = get(port, f"/api/symbols/demo/{s['symbol']}?history=0")
                seen |= {t["to"] for t in detail["transitions"] if t["kind"] == "vol"}
            return seen

        wait_for(lambda: regimes_seen() >= {"low", "normal", "high", "crisis"}, 120, "all four vol regimes")
        status = wait_for(
            lambda: (st := get(port, "/api/status")) and len({s["service"] for s in st["services"]}) == 6 and st,
            60,
            "six services reporting health",
        )
        pids = [s["pid"] for s in status["services"]]
        assert len(set(pids)) == 6
        assert wait_for(lambda: get(port, "/readyz")["ready"], 30, "readiness")
        state = json.loads((data / "stack.json").read_text())
        assert state["pid"] == up.pid
        assert state["api_url"] == f"http://127.0.0.1:{port}"
    finally:
        up.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal delivers
        code = up.wait(60)
        log.close()
    output = (tmp_path / "up.log").read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert "stopped" in output
    assert not [p for p in pids if alive(p)], "a service outlived `regimes up`"
    assert processes_mentioning(str(data)) == [], "a nats-server or redis-server outlived `regimes up`"
    assert not (data / "stack.json").exists(), "the state file outlived a clean stop"
    assert (data / "nats" / "jetstream").is_dir(), "a --data-dir of the user's own is kept"
    assert not (tmp_path / "runtime" / "regimes" / "stack.json").exists()


def test_up_reports_a_taken_port_with_the_flag_that_changes_it(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "regimes.cli", "up", "--port", str(port), "--data-dir", str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"{port} is taken" in done.stdout
    assert "--port" in done.stdout


def test_up_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    cfg = json.loads((ROOT / "config" / "strategy_config.json").read_text())
    cfg["vol_regimes"]["defaults"]["ratio_low_high"]["high"] = 0.1
    bad.write_text(json.dumps(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "regimes.cli", "up", "--port", str(free_port()), "--config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "vol_regimes.defaults.ratio_low_high" in done.stderr
