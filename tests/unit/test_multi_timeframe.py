"""Several timeframes of one symbol: the universe's ``aggregate`` key, the ``consensus`` block, the consensus."""

from __future__ import annotations

from typing import Any

import pytest

from shared.domain.config import parse_strategy_config
from shared.domain.consensus import TimeframeVerdict, consensus
from shared.domain.errors import ConfigError
from shared.domain.subjects import SeriesKey


def config(entry: dict[str, Any], **blocks: Any) -> Any:
    return parse_strategy_config({"universe": [{"exchange": "kraken", "symbol": "BTC/USD", **entry}], **blocks}, env={})


# --- config -----------------------------------------------------------------------------


def test_an_entry_names_the_timeframes_to_build_from_it_and_they_size_like_it() -> None:
    cfg = config({"timeframe": "1m", "tier": "SATELLITE", "aggregate": ["1h", "15m"]})
    [spec] = cfg.universe
    assert spec.aggregate == ("15m", "1h")  # shortest first, whatever the order written
    assert spec.aggregated == (SeriesKey("kraken", "BTC/USD", "15m"), SeriesKey("kraken", "BTC/USD", "1h"))
    assert cfg.tier_of(SeriesKey("kraken", "BTC/USD", "1h")) == "SATELLITE"


def test_without_aggregate_nothing_is_built() -> None:
    [spec] = config({"timeframe": "1m"}).universe
    assert spec.aggregate == ()
    assert spec.aggregated == ()


@pytest.mark.parametrize(
    ("aggregate", "says"),
    [
        ("15m", "must be a list"),
        (["15 minutes"], "expected timeframes"),
        (["1m"], "whole multiple"),  # not longer than the base
        (["30s"], "expected timeframes"),
        (["15m", "15m"], "twice"),
    ],
)
def test_a_bad_aggregate_is_refused_naming_the_key(aggregate: Any, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        config({"timeframe": "1m", "aggregate": aggregate})
    assert err.value.key == "universe[0].aggregate"
    assert says in err.value.reason


def test_a_timeframe_that_is_not_a_whole_number_of_base_bars_is_refused() -> None:
    with pytest.raises(ConfigError, match="whole multiple"):
        config({"timeframe": "3m", "aggregate": ["5m"]})


def test_an_aggregate_that_is_also_an_entry_of_its_own_is_a_duplicate_series() -> None:
    raw = {"universe": [
        {"exchange": "kraken", "symbol": "BTC/USD", "timeframe": "1h"},
        {"exchange": "kraken", "symbol": "BTC/USD", "timeframe": "1m", "aggregate": ["1h"]},
    ]}
    with pytest.raises(ConfigError, match="duplicate series kraken:BTC/USD:1h"):
        parse_strategy_config(raw, env={})


def test_the_consensus_is_off_by_default_and_read_when_given() -> None:
    off = config({"timeframe": "1m"}).consensus
    assert (off.enabled, dict(off.weights), off.screener) == (False, {}, False)
    block = {"enabled": True, "weights": {"1h": 3, "15m": 2}, "screener": True}
    on = config({"timeframe": "1m"}, consensus=block).consensus
    assert (on.enabled, dict(on.weights), on.screener) == (True, {"1h": 3.0, "15m": 2.0}, True)


@pytest.mark.parametrize(
    ("block", "key"),
    [
        ({"enabeld": True}, "consensus.enabeld"),
        ({"weights": {"2m": 1}}, "consensus.weights.2m"),
        ({"weights": {"1h": -1}}, "consensus.weights.1h"),
        ({"weights": [1, 2]}, "consensus.weights"),
        ({"enabled": "sometimes"}, "consensus.enabled"),
    ],
)
def test_a_bad_consensus_block_is_refused_naming_the_key(block: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config({"timeframe": "1m"}, consensus=block)
    assert err.value.key == key


# --- the consensus ----------------------------------------------------------------------------

BULL, BEAR, RANGE = (TimeframeVerdict("BULLISH", 0.6, True), TimeframeVerdict("BEARISH", -0.8, True),
                     TimeframeVerdict("RANGING", 0.0, True))
UNTRAINED = TimeframeVerdict("RANGING", 0.0, False)


def test_timeframes_that_all_agree_give_full_agreement_and_their_mean_bias() -> None:
    c = consensus({"1m": BULL, "15m": BULL, "1h": TimeframeVerdict("BULLISH", 0.9, True)}, {})
    assert c.regime == "BULLISH"
    assert c.agreement == 1.0
    assert c.bias == pytest.approx((0.6 + 0.6 + 0.9) / 3)
    assert c.dissenting == ()
    assert c.voting == ("1m", "15m", "1h")


def test_the_weights_decide_and_the_timeframe_that_disagrees_is_named() -> None:
    weights = {"1m": 1.0, "15m": 3.0, "1h": 2.0}
    c = consensus({"1m": BULL, "15m": BULL, "1h": BEAR}, weights)
    assert c.regime == "BULLISH"  # 1 + 3 behind it, 2 against
    assert c.agreement == pytest.approx(4 / 6)
    assert c.bias == pytest.approx((1 * 0.6 + 3 * 0.6 - 2 * 0.8) / 6)
    assert c.dissenting == ("1h",)
    heavier = consensus({"1m": BULL, "15m": BULL, "1h": BEAR}, {"1h": 5.0})
    assert heavier.regime == "BEARISH"
    assert heavier.dissenting == ("1m", "15m")


def test_a_tie_is_no_majority_and_reads_ranging() -> None:
    c = consensus({"1m": BULL, "1h": BEAR}, {})
    assert c.regime == "RANGING"
    assert c.agreement == 0.0
    assert c.dissenting == ("1m", "1h")
    assert c.bias == pytest.approx((0.6 - 0.8) / 2)


def test_untrained_timeframes_do_not_vote_and_are_listed() -> None:
    c = consensus({"1m": UNTRAINED, "15m": BEAR, "1h": UNTRAINED}, {"15m": 2.0})
    assert (c.regime, c.agreement, c.bias) == ("BEARISH", 1.0, -0.8)
    assert c.untrained == ("1m", "1h")
    assert c.voting == ("15m",)


def test_no_trained_timeframe_is_a_neutral_consensus() -> None:
    c = consensus({"1m": UNTRAINED}, {})
    assert (c.regime, c.agreement, c.bias, c.voting) == ("RANGING", 0.0, 0.0, ())


def test_a_weight_of_zero_leaves_a_timeframe_out() -> None:
    c = consensus({"1m": BEAR, "1h": BULL}, {"1m": 0.0})
    assert (c.regime, c.agreement, c.voting) == ("BULLISH", 1.0, ("1h",))
