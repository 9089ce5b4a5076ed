"""The shipped strategy config as the screener tests edit it, and the series they decide on.

``make_cfg`` starts from ``config/strategy_config.json`` (read once, as ``SHIPPED``), adds a
series of a tier the sizing table does not know, and sets a base per-trade size of 2% of NAV
with no cap and the HMM off unless a test asks otherwise. Shared by the sizing and weights
tests (``test_signal_screener_vol_regimes.py``) and the join tests (``test_signal_screener_join.py``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from shared.domain.config import StrategyConfig, parse_strategy_config
from shared.domain.subjects import SeriesKey

CONFIG_PATH = Path(__file__).resolve().parents[2] / "config" / "strategy_config.json"
SHIPPED: dict[str, Any] = json.loads(CONFIG_PATH.read_text())
CORE = SeriesKey("demo", "BTC/USD", "1m")


def make_cfg(
    *,
    cap: float | None = None,
    hmm: dict[str, Any] | None = None,
    vol_regimes: dict[str, Any] | None = None,
    drop_vol_regimes: bool = False,
) -> StrategyConfig:
    """The shipped config with base per_trade_nav_pct 0.02, no cap unless given, HMM off unless given."""
    raw = copy.deepcopy(SHIPPED)
    raw["universe"].append({"exchange": "demo", "symbol": "WIF/USD", "timeframe": "1m", "tier": "MEME"})
    raw["sizing"] = {"per_trade_nav_pct": 0.02}
    if cap is not None:
        raw["sizing"]["max_per_trade_nav_pct"] = cap
    raw["hmm"] = {**raw["hmm"], "HMM_ENABLED": False, **(hmm or {})}
    if drop_vol_regimes:
        del raw["vol_regimes"]
    elif vol_regimes is not None:
        raw["vol_regimes"] = vol_regimes
    return parse_strategy_config(raw, env={})


NO_CAP = make_cfg()
