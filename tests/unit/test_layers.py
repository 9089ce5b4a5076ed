"""The dependency rule the folders show: domain <- infra <- services <- tooling (regimes/).

- ``shared/domain`` (vocabulary, contracts, config, the regime math) imports
  nothing of the infrastructure, the services or the tooling, and no client of
  NATS, Redis or HTTP: a backtest runs it with none of them installed.
- ``shared/infra`` (bus, consume loop, settings, telemetry) imports no service
  and no tooling.
- A service imports no other service and no tooling; its ``core.py`` is pure:
  it imports the domain only.
- ``regimes/`` (the command line, supervisor, servers, feeds, backtest) sits on top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").is_file())
# Clients of the outside world: none of them may be needed to run the domain or a pure core.
CLIENTS = ("nats", "redis", "fastapi", "starlette", "uvicorn", "prometheus_client", "uvloop", "ccxt", "httpx")


def _modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (imports inside functions count too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _offending(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in _imports(path) if any(m == f or m.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("path", _modules(ROOT / "shared" / "domain"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_domain_imports_no_infrastructure_service_tooling_or_client(path: Path) -> None:
    assert _offending(path, ("shared.infra", "services", "regimes", *CLIENTS)) == []


@pytest.mark.parametrize("path", _modules(ROOT / "shared" / "infra"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_infrastructure_imports_no_service_or_tooling(path: Path) -> None:
    assert _offending(path, ("services", "regimes")) == []


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service_and_no_tooling(service: str) -> None:
    others = tuple(f"services.{s}" for s in SERVICES if s != service)
    for path in _modules(ROOT / "services" / service):
        assert _offending(path, ("regimes", *others)) == [], path


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_a_pure_core_that_imports_the_domain_only(service: str) -> None:
    core = ROOT / "services" / service / "core.py"
    assert core.is_file(), f"services/{service} has no core.py"
    assert _offending(core, ("shared.infra", "regimes", *CLIENTS)) == []


def test_the_library_knows_nothing_of_the_tooling_above_it() -> None:
    for path in _modules(ROOT / "shared"):
        assert _offending(path, ("regimes",)) == [], path


_NO_CLIENTS = f"""
import importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {CLIENTS!r}:
            raise ImportError(f"{{name}} is not installed here")
        return None

sys.meta_path.insert(0, Refuse())
import pkgutil, importlib
import shared.domain
import shared.domain.contracts  # the codec's one entry (they import each other)
for info in pkgutil.walk_packages(shared.domain.__path__, "shared.domain."):
    importlib.import_module(info.name)
for service in {SERVICES!r}:
    importlib.import_module(f"services.{{service}}.core")
from regimes.backtest import backtest
from shared.domain.config import parse_strategy_config
from shared.domain.contracts import Candle
universe = [{{"exchange": "demo", "symbol": "WALK/USD", "timeframe": "1m"}}]
config = parse_strategy_config({{"universe": universe}}, env={{}})
t0 = 1_700_000_040_000  # aligned to 1m: a Candle is checked when built
bar = lambda i: Candle("demo", "WALK/USD", "1m", t0 + i * 60_000, 100.0, 110.0, 99.0, 100.0 + (i % 7), 5.0)
candles = [bar(i) for i in range(120)]
events = list(backtest(candles, config, now_ms=t0 + 121 * 60_000))
assert any(type(e).__name__ == "ScreenerDecision" for e in events), events[-3:]
print("ok", len(events))
"""


def test_the_domain_and_a_backtest_run_without_nats_redis_or_http_installed() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _NO_CLIENTS], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok ")
