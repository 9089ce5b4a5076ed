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
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".regimes-installed"


def ensure_env() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing regime-stack and its dependencies into .venv", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[dev,embedded,files]"], check=True)
    STAMP.write_text(wanted)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("up", "test"):
        sys.exit(__doc__)
    ensure_env()
    command, rest = sys.argv[1], sys.argv[2:]
    os.chdir(ROOT)
    args = [str(BIN / "regimes"), "up", *rest] if command == "up" else [str(BIN / "python"), "-m", "pytest", *rest]
    os.execv(args[0], args)


if __name__ == "__main__":
    main()
