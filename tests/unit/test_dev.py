"""dev.py tells a newcomer what the first install does and how long it takes, and hides pip's noise."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev_script", ROOT / "dev.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Lines as pip 25 prints them on this machine (two absent index directories are configured).
PIP_OUTPUT = """\
Looking in indexes: https://pypi.org/simple, file:///opt/pypi/simple, file:///opt/pypi-more/simple
Looking in links: /opt/wheels
WARNING: Location 'file:///opt/pypi-more/simple/pip/' is ignored: it is neither a file nor a directory.
Obtaining file:///work/regime-stack
  Installing build dependencies: started
  Installing build dependencies: finished with status 'done'
WARNING: Location 'file:///opt/pypi/simple/nats-py/' is ignored: it is neither a file nor a directory.
Collecting nats-py>=2.9 (from regime-stack==0.1.0)
  Using cached nats_py-2.9.0.tar.gz (110 kB)
     ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 93.6/93.6 kB 107.0 MB/s eta 0:00:00
Processing /opt/pypi/files/numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.whl (from regime-stack==0.1.0)
Collecting uvloop>=0.19; sys_platform != "win32" (from regime-stack==0.1.0)
Requirement already satisfied: pip in ./.venv/lib/python3.11/site-packages (25.0)
  /tmp/pip-build-env/overlay/setuptools/command/editable_wheel.py:354: BuildBackendWarning: Editable installation.
  !!
          Please be careful with folders in your working directory with the same
WARNING: There was an error checking the latest version of pip.
Installing collected packages: numpy, nats-py, uvloop, regime-stack
Successfully installed nats-py-2.9.0 numpy-2.4.6 regime-stack-0.1.0 uvloop-0.22.1
"""


def test_pip_events_keep_progress_and_drop_the_noise(dev: ModuleType) -> None:
    events = [e for e in map(dev.pip_event, PIP_OUTPUT.splitlines()) if e is not None]
    assert events == [
        ("package", "nats-py"),
        ("package", "numpy"),
        ("package", "uvloop"),
        ("show", "WARNING: There was an error checking the latest version of pip."),
        ("installing", "4"),
        ("installed", "4"),
    ]


def test_errors_are_always_shown(dev: ModuleType) -> None:
    line = "ERROR: Could not find a version that satisfies the requirement nats-py>=99"
    assert dev.pip_event(line) == ("show", line)


def test_the_first_install_says_what_and_how_long(dev: ModuleType) -> None:
    first = dev.install_message(first=True)
    for word in ("packages", "minutes", ".venv"):
        assert word in first
    assert "pyproject.toml" in dev.install_message(first=False)


def test_pip_runs_without_quiet_and_without_its_progress_bar_noise(dev: ModuleType) -> None:
    (_, upgrade), (said, install) = dev.pip_commands(Path("/v/bin/python"), Path("/src"), first=True)
    assert said == dev.install_message(first=True)
    for cmd in (upgrade, install):
        assert "-q" not in cmd
        assert cmd[:4] == ["/v/bin/python", "-m", "pip", "install"]
    assert install[-1] == "/src[dev,embedded,files]"


def _fake_pip(tmp_path: Path, code: int) -> list[str]:
    script = tmp_path / "fake_pip.py"
    script.write_text(f"import sys\nsys.stdout.write({PIP_OUTPUT!r})\nsys.exit({code})\n")
    return [sys.executable, str(script)]


def test_run_pip_reports_briefly_and_logs_everything(dev: ModuleType, tmp_path: Path) -> None:
    out = io.StringIO()
    log = tmp_path / "pip.log"
    assert dev.run_pip(_fake_pip(tmp_path, 0), log, out, tty=False) == 0
    shown = out.getvalue()
    for noise in ("is ignored", "━", "BuildBackendWarning", "Looking in"):
        assert noise not in shown
    assert "unpacking 4 packages into .venv" in shown
    assert "installed 4 packages" in shown
    assert len(shown.splitlines()) <= 4
    assert log.read_text() == PIP_OUTPUT  # nothing lost for whoever needs it


def test_run_pip_on_a_terminal_updates_one_line(dev: ModuleType, tmp_path: Path) -> None:
    out = io.StringIO()
    dev.run_pip(_fake_pip(tmp_path, 0), tmp_path / "pip.log", out, tty=True)
    assert "\r\033[Kdev.py:   fetching package 3: uvloop" in out.getvalue()


def test_a_failed_pip_shows_its_last_lines_and_the_log(dev: ModuleType, tmp_path: Path) -> None:
    out = io.StringIO()
    log = tmp_path / "pip.log"
    assert dev.run_pip(_fake_pip(tmp_path, 1), log, out, tty=False) == 1
    shown = out.getvalue()
    assert "Successfully installed" in shown  # the tail is shown, minus the index warnings
    assert "is ignored" not in shown
    assert f"pip failed (exit 1); its whole output is in {log}" in shown


def test_command_line_of_each_verb(dev: ModuleType) -> None:
    assert dev.command("up", ["--port", "8001"])[1:] == ["up", "--port", "8001"]
    assert dev.command("test", ["tests/unit"])[1:] == ["-m", "pytest", "tests/unit"]
