#!/usr/bin/env python3
"""The two commands a newcomer needs, on a machine with nothing but Python 3.11+:

    python3 dev.py up      # the whole stack on embedded NATS + Redis, demo market, dashboard on :8000
    python3 dev.py test    # the whole test suite

Both create ./.venv and install the project into it first (again only when
pyproject.toml changed). Extra arguments go to `regimes up` or to pytest.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import venv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".regimes-installed"
PIP_LOG = VENV / "pip-install.log"
# What the first install costs here, measured: pip lists about 70 packages and takes 1-3 minutes.
FIRST_INSTALL = "regime-stack and about 70 packages it needs into .venv: 1–3 minutes the first time"
UPDATE_INSTALL = "pyproject.toml changed: updating .venv (usually under a minute)"

_PACKAGE = re.compile(r"^(?:Collecting|Processing) (?P<what>\S+)")
_WHEEL_FILE = re.compile(r"(?:^|/)(?P<name>[A-Za-z0-9_.]+?)-\d[^/]*\.(?:whl|tar\.gz|zip)$")
_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)")


def say(msg: str, out: TextIO | None = None) -> None:
    print(f"dev.py: {msg}", file=out or sys.stdout, flush=True)


def pip_event(line: str) -> tuple[str, str] | None:
    """What one line of pip's output means to the person waiting, or None for noise.

    ``("package", name)`` a package being fetched; ``("installing", n)`` and
    ``("installed", n)`` the counts at the end; ``("show", line)`` anything
    that may need reading (errors, warnings other than the index ones).
    Noise: the per-package "Location ... is ignored" warnings that an index
    configured but absent produces (two per package here), progress bars, the
    indented detail lines, "Looking in ...", "Requirement already satisfied".
    """
    text = line.rstrip("\n")
    if not text.strip():
        return None
    match = _PACKAGE.match(text)
    if match:
        what = match["what"]
        found = _WHEEL_FILE.search(what) or _REQUIREMENT.match(what)
        name = found["name"] if found else what
        return ("package", re.split(r"[<>=!~\[;]", name)[0])
    if text.startswith("Installing collected packages:"):
        return ("installing", str(len(text.split(":", 1)[1].split(","))))
    if text.startswith("Successfully installed"):
        return ("installed", str(len(text.split()) - 2))
    if text.startswith("ERROR") or (text.startswith("WARNING") and "is ignored" not in text):
        return ("show", text)
    return None


class PipReport:
    """Turns pip's events into a few lines: one that updates in place on a terminal, every 10th package otherwise."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.packages = 0
        self._inline = False

    def _line(self, text: str) -> None:
        if self._inline:
            self.out.write("\r\033[K")
            self._inline = False
        self.out.write(f"dev.py: {text}\n")
        self.out.flush()

    def event(self, kind: str, value: str) -> None:
        if kind == "package":
            self.packages += 1
            if self.tty:
                self.out.write(f"\r\033[Kdev.py:   fetching package {self.packages}: {value}")
                self.out.flush()
                self._inline = True
            elif self.packages % 10 == 0:
                self._line(f"  fetched {self.packages} packages (now {value})")
        elif kind == "installing":
            self._line(f"  unpacking {_packages(value)} into .venv")
        elif kind == "installed":
            self._line(f"  installed {_packages(value)}")
        else:
            self._line(value)

    def done(self) -> None:
        if self._inline:
            self.out.write("\n")
            self._inline = False
            self.out.flush()


def _packages(n: str) -> str:
    return f"{n} package" if n == "1" else f"{n} packages"


def run_pip(args: Sequence[str], log: Path, out: TextIO, tty: bool) -> int:
    """Run pip with its whole output in ``log`` and a short account of it on ``out``; its exit code.

    On failure the last lines that are not noise are shown, with the log's path.
    """
    report = PipReport(out, tty)
    kept: list[str] = []
    with open(log, "a", encoding="utf-8") as raw:
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            raw.write(line)
            event = pip_event(line)
            if event is not None:
                report.event(*event)
            if "is ignored: it is neither" not in line and "━" not in line:
                kept.append(line.rstrip("\n"))
                del kept[:-40]
        code = proc.wait()
    report.done()
    if code:
        for line in kept:
            out.write(f"  {line}\n")
        say(f"pip failed (exit {code}); its whole output is in {log}", out)
    return code


def install_message(first: bool) -> str:
    return f"installing {FIRST_INSTALL}" if first else UPDATE_INSTALL


def pip_commands(python: Path, root: Path, first: bool) -> list[tuple[str, list[str]]]:
    """The pip runs, each with what to say before it."""
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    return [
        ("updating pip in .venv (seconds)", [*pip, "--upgrade", "pip"]),
        (install_message(first), [*pip, "-e", f"{root}[dev,embedded,files]"]),
    ]


def ensure_env(out: TextIO = sys.stdout, tty: bool | None = None) -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    tty = out.isatty() if tty is None else tty
    first = not STAMP.exists()
    if not (BIN / "python").exists():
        say("creating .venv (a few seconds)", out)
        venv.EnvBuilder(with_pip=True).create(VENV)
    PIP_LOG.write_text("")
    for message, args in pip_commands(BIN / "python", ROOT, first):
        say(message, out)
        if run_pip(args, PIP_LOG, out, tty):
            sys.exit(1)
    STAMP.write_text(wanted)
    say(".venv is ready", out)


def command(name: str, rest: Iterable[str]) -> list[str]:
    if name == "up":
        return [str(BIN / "regimes"), "up", *rest]
    return [str(BIN / "python"), "-m", "pytest", *rest]


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("up", "test"):
        sys.exit(__doc__)
    ensure_env()
    args = command(sys.argv[1], sys.argv[2:])
    os.chdir(ROOT)
    os.execv(args[0], args)


if __name__ == "__main__":
    main()
