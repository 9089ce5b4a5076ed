"""The message codec: every type round-trips, and every kind of bad payload is refused with a clear reason."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.contracts import (
    MAX_BATCH_BARS,
    MAX_PAYLOAD_BYTES,
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    Candle,
    CandleBatch,
    ContractError,
    DeadLetter,
    GridBias,
    HmmRegimeEvent,
    PipelineStatus,
    ScoreEvent,
    ScreenerDecision,
    VolRegimeEvent,
    as_messages,
    batch_of,
    candles_in,
    decode,
    encode,
    events_in,
    from_plain,
    to_plain,
)
from shared.domain.subjects import SeriesKey

T = 1_700_000_040_000  # a multiple of every timeframe up to 1h

CANDLE = Candle("kraken", "BTC/USD", "1m", T, 100.0, 101.5, 99.5, 100.5, 12.25)
VOL = VolRegimeEvent("kraken", "BTC/USD", "1m", T, 100.5, "high", 0.0123, 0.0085, 1.45, "normal", True, 900, True)
VOL_FIRST = VolRegimeEvent("kraken", "BTC/USD", "1m", T, 100.5, "normal", 0.0, 0.0, 1.0, None, False, 0, False)
HMM = HmmRegimeEvent("kraken", "BTC/USD", "1m", T, "BULLISH", (0.1, 0.2, 0.7), 0.5, 0.6, 42, True, T - 1000)
HMM_UNTRAINED = HmmRegimeEvent("kraken", "BTC/USD", "1m", T, "RANGING", (0.0, 1.0, 0.0), 0.0, 0.0, 3, False, None)
# With the issue-10 fields: the raw label beside the confirmed one, training depth and label agreement.
VOL_CONFIRMING = msgspec.structs.replace(VOL, label="normal", changed=False, raw_label="high", pending_label="high")
HMM_CONFIRMING = msgspec.structs.replace(
    HMM, regime="RANGING", raw_regime="BULLISH", raw_confidence=0.625, depth_tier="moderate",
    training_candles=1500, label_agreement=0.9375,
)  # fmt: skip
SCORE = ScoreEvent("carry", "kraken", "BTC/USD", "1m", T, -0.25)
DECISION = ScreenerDecision(
    exchange="kraken",
    symbol="ETH/USDT:USDT",
    timeframe="5m",
    ts=T,
    close=2500.0,
    tier="SATELLITE",
    vol_regime="crisis",
    vol_short=0.03,
    vol_long=0.01,
    vol_ratio=3.0,
    sizing_multiplier=0.4,
    base_per_trade_nav_pct=0.02,
    effective_per_trade_nav_pct=0.008,
    capped=False,
    weights={"trend": 0.48, "carry": 0.12, "expectancy": 0.2, "router": 0.2},
    scores={"trend": 0.5, "carry": 0.1, "expectancy": 0.0, "router": 0.0},
    defaulted=("expectancy", "router"),
    hybrid_score=0.252,
    trend_score=0.5,
    hmm_regime="BEARISH",
    hmm_bias=-0.4,
    hmm_confidence=0.3,
    blend_factor=0.5,
    dynamic_idle_target=0.42,
    grid_bias=GridBias("short_bias", 0.88, 1.12, -0.2),
)
DECISION_NO_HMM = msgspec.structs.replace(
    DECISION, hmm_regime=None, defaulted=(), grid_bias=GridBias("symmetric", 1.0, 1.0, None)
)
PIPELINE = PipelineStatus(
    exchange="kraken",
    symbol="BTC/USD",
    timeframe="1h",
    source="exchange",
    interval_min=60,
    sync_interval_sec=60.0,
    samples=300,
    coverage_pct=15.0,
    last_ts=T,
    freshness_sec=12.5,
    freshness_limit_sec=10800.0,
    freshness_ok=True,
    gaps=2,
    backfill_last_at=T,
    backfill_last_rows=720,
    backfill_last_message="backfilled 720 candles",
    last_error=None,
    reported_at=T + 5,
)
PIPELINE_EMPTY = msgspec.structs.replace(
    PIPELINE, last_ts=None, freshness_sec=None, freshness_ok=False, backfill_last_at=None,
    backfill_last_rows=None, backfill_last_message=None, last_error="timeout",
)  # fmt: skip
DEAD = DeadLetter("vol_regime", "price <= 0", "ohlcv.kraken.BTC-USD.1m", b"\x81\xa4kind\xa6candle\x00\xff", T)

CANDLES = CandleBatch.of([msgspec.structs.replace(CANDLE, ts=T + i * 60_000) for i in range(3)])
VOLS = batch_of([VOL_FIRST, msgspec.structs.replace(VOL, ts=T + 60_000)])
HMMS = batch_of([HMM, msgspec.structs.replace(HMM, ts=T + 60_000)])
HMMS_CONFIRMING = batch_of([HMM_CONFIRMING, msgspec.structs.replace(HMM_CONFIRMING, ts=T + 60_000)])
VOLS_CONFIRMING = batch_of([VOL_CONFIRMING, msgspec.structs.replace(VOL_CONFIRMING, ts=T + 60_000)])
DECISIONS = batch_of([DECISION, msgspec.structs.replace(DECISION, ts=T + 60_000)])
SAMPLES = [
    CANDLE, VOL, VOL_FIRST, HMM, HMM_UNTRAINED, SCORE, DECISION, DECISION_NO_HMM, PIPELINE, PIPELINE_EMPTY, DEAD,
    CANDLES, VOLS, HMMS, DECISIONS, VOL_CONFIRMING, HMM_CONFIRMING, HMMS_CONFIRMING, VOLS_CONFIRMING,
]  # fmt: skip


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES.values())


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: f"{type(m).__name__}")
def test_every_message_round_trips_through_msgpack(msg: Any) -> None:
    data = encode(msg)
    assert isinstance(data, bytes)
    back = decode(data)
    assert type(back) is type(msg)
    assert back == msg


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: f"{type(m).__name__}")
def test_plain_form_round_trips_and_carries_kind_and_version(msg: Any) -> None:
    plain = to_plain(msg)
    assert plain["kind"] == type(msg).KIND
    assert plain["v"] == SCHEMA_VERSION
    assert from_plain(type(msg), plain) == msg


def test_tuples_travel_as_lists_and_come_back_as_tuples() -> None:
    plain = msgpack.unpackb(encode(DECISION), raw=False)
    assert plain["defaulted"] == ["expectancy", "router"]
    assert plain["grid_bias"] == {
        "mode": "short_bias",
        "entry_spacing_mult_a": 0.88,
        "entry_spacing_mult_b": 1.12,
        "size_skew_override": -0.2,
    }
    back = decode(encode(HMM))
    assert back.probabilities == (0.1, 0.2, 0.7)
    assert isinstance(back.probabilities, tuple)


def test_integer_prices_decode_as_floats() -> None:
    plain = {**to_plain(CANDLE), "open": 100, "close": 100, "low": 99, "high": 101}
    candle = decode(msgpack.packb(plain))
    assert candle.open == 100.0
    assert isinstance(candle.open, float)


def test_candle_msg_id_is_its_idempotency_key() -> None:
    assert CANDLE.msg_id == f"kraken.BTC-USD.1m.{T}"


@pytest.mark.parametrize(
    ("msg", "added"),
    [
        (VOL_CONFIRMING, ("raw_label", "pending_label")),
        (HMM_CONFIRMING, ("raw_regime", "raw_confidence", "depth_tier", "training_candles", "label_agreement")),
    ],
    ids=["vol", "hmm"],
)
def test_events_written_before_the_confirmation_and_depth_fields_still_decode(msg: Any, added: tuple[str, ...]) -> None:
    plain = {k: v for k, v in to_plain(msg).items() if k not in added}
    old = decode(msgpack.packb(plain))
    assert all(getattr(old, name) is None for name in added)
    assert old == msgspec.structs.replace(msg, **dict.fromkeys(added))


def test_a_full_batch_of_the_largest_events_fits_the_payload_limit() -> None:
    from shared.domain.contracts import HMM_EVENTS_PER_BATCH

    # The longest exchange id and symbol a series may have, every optional field set, floats at full width.
    key = {"exchange": "x" * 32, "symbol": "S" * 31 + "/" + "Q" * 32}
    vol = msgspec.structs.replace(VOL_CONFIRMING, **key, close=1 / 3, vol_short=1 / 7, vol_long=1 / 9, ratio=1 / 11)
    hmm = msgspec.structs.replace(
        HMM_CONFIRMING, **key, probabilities=(1 / 3, 1 / 6, 1 / 2), confidence=1 / 7, bias_signal=-1 / 9,
        raw_confidence=1 / 11, label_agreement=1 / 13, observation_count=2**40, training_candles=10**6,
    )  # fmt: skip
    for event, n in ((vol, MAX_BATCH_BARS), (hmm, HMM_EVENTS_PER_BATCH)):
        batch = batch_of([msgspec.structs.replace(event, ts=T + i * 60_000) for i in range(n)])
        assert len(encode(batch)) <= MAX_PAYLOAD_BYTES, type(event).__name__
        assert decode(encode(batch)) == batch


def test_missing_version_means_the_current_one() -> None:
    plain = to_plain(CANDLE)
    del plain["v"]
    assert decode(msgpack.packb(plain)) == CANDLE


price = st.floats(min_value=1e-8, max_value=1e9, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    a=price,
    b=price,
    u=st.floats(0.0, 1.0),
    w=st.floats(0.0, 1.0),
    volume=st.floats(min_value=0.0, max_value=1e12),
    bar=st.integers(0, 10**9),
    timeframe=st.sampled_from(["1m", "5m", "1h", "1d"]),
)
def test_any_valid_candle_round_trips(
    a: float, b: float, u: float, w: float, volume: float, bar: int, timeframe: str
) -> None:
    low, high = min(a, b), max(a, b)
    open_ = min(high, max(low, low + u * (high - low)))
    close = min(high, max(low, low + w * (high - low)))
    tf_ms = {"1m": 60_000, "5m": 300_000, "1h": 3_600_000, "1d": 86_400_000}[timeframe]
    candle = Candle("binance", "ETH/USDT", timeframe, bar * tf_ms, open_, high, low, close, volume)
    assert decode(encode(candle)) == candle


# --- bad payloads ------------------------------------------------------------------------------------------


def refused(data: bytes, expected: tuple[type[Any], ...] | None = None) -> str:
    with pytest.raises(ContractError) as info:
        decode(data, expected)
    reason = info.value.reason
    assert reason
    assert str(info.value) == reason
    return reason


def candle_with(**changes: Any) -> bytes:
    plain = to_plain(CANDLE)
    plain.update(changes)
    return msgpack.packb(plain, use_bin_type=True)


def candle_without(field: str) -> bytes:
    plain = to_plain(CANDLE)
    del plain[field]
    return msgpack.packb(plain, use_bin_type=True)


def test_contract_error_is_a_value_error_with_a_reason() -> None:
    err = ContractError("high 1 < low 2")
    assert isinstance(err, ValueError)
    assert err.reason == "high 1 < low 2"


@pytest.mark.parametrize(
    "data",
    [b"\xc1", b"\x92\x01", b"\x01\x02", b"\xd9\x05ab"],
    ids=["reserved-byte", "truncated-array", "extra-data", "truncated-str"],
)
def test_not_msgpack_is_refused(data: bytes) -> None:
    assert refused(data).startswith("not msgpack")


@pytest.mark.parametrize("value", [[1, 2, 3], "candle", 7, None, b"raw"])
def test_payload_that_is_not_a_map_is_refused(value: Any) -> None:
    assert refused(msgpack.packb(value, use_bin_type=True)) == "payload is not a map"


@pytest.mark.parametrize("kind", ["banana", None, 7, "Candle"])
def test_unknown_kind_is_refused(kind: Any) -> None:
    plain = {**to_plain(CANDLE), "kind": kind}
    assert refused(msgpack.packb(plain)) == f"unknown kind {kind!r}"


def test_message_without_kind_is_refused() -> None:
    assert refused(candle_without("kind")) == "unknown kind None"


def test_kind_not_expected_by_the_consumer_is_refused() -> None:
    assert refused(encode(CANDLE), (VolRegimeEvent, HmmRegimeEvent)) == "kind 'candle' not accepted here"
    assert decode(encode(CANDLE), (Candle,)) == CANDLE


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_wrong_schema_version_is_refused(version: Any) -> None:
    reason = refused(candle_with(v=version))
    assert reason.startswith(f"schema version {version!r} not supported")


@pytest.mark.parametrize("field", ["exchange", "symbol", "timeframe", "ts", "open", "high", "low", "close", "volume"])
def test_missing_field_is_refused_naming_it(field: str) -> None:
    assert refused(candle_without(field)) == f"Candle: missing field {field!r}"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"close": "100.5"}, "Candle.close: expected a number, got str"),
        ({"close": None}, "Candle.close: expected a number, got NoneType"),
        ({"close": [100.5]}, "Candle.close: expected a number, got list"),
        ({"ts": 1.7e12}, "Candle.ts: expected an integer, got float"),
        ({"ts": str(T)}, "Candle.ts: expected an integer, got str"),
        ({"symbol": 42}, "Candle.symbol: expected a string"),
        ({"exchange": None}, "Candle.exchange: expected a string"),
    ],
)
def test_wrong_type_is_refused_naming_the_field(change: dict[str, Any], reason: str) -> None:
    assert refused(candle_with(**change)) == reason


@pytest.mark.parametrize(
    ("field", "reason"),
    [("close", "Candle.close: expected a number, got bool"), ("ts", "Candle.ts: expected an integer, got bool")],
)
def test_bool_where_a_number_is_expected_is_refused(field: str, reason: str) -> None:
    assert refused(candle_with(**{field: True})) == reason


def test_number_where_a_bool_is_expected_is_refused() -> None:
    plain = {**to_plain(VOL), "changed": 1}
    assert refused(msgpack.packb(plain)) == "VolRegimeEvent.changed: expected true/false"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", ["open", "high", "low", "close", "volume"])
def test_non_finite_number_is_refused(field: str, value: float) -> None:
    assert refused(candle_with(**{field: value})) == f"Candle.{field}: {value} is not finite"


def test_non_finite_number_nested_in_a_map_is_refused() -> None:
    plain = to_plain(DECISION)
    plain["weights"]["carry"] = math.nan
    assert refused(msgpack.packb(plain)) == "ScreenerDecision.weights.carry: nan is not finite"


def test_non_finite_number_in_a_nested_struct_is_refused() -> None:
    plain = to_plain(DECISION)
    plain["grid_bias"]["entry_spacing_mult_a"] = math.inf
    assert "ScreenerDecision.grid_bias.entry_spacing_mult_a" in refused(msgpack.packb(plain))


def test_non_finite_probability_is_refused() -> None:
    plain = {**to_plain(HMM), "probabilities": [0.1, math.nan, 0.7]}
    assert refused(msgpack.packb(plain)) == "HmmRegimeEvent.probabilities[1]: nan is not finite"


@pytest.mark.parametrize(
    "change",
    [{"low": 0.0}, {"low": -1.0, "open": 1.0, "close": 1.0}, {"open": 0.0, "low": 0.0}],
    ids=["low-zero", "low-negative", "open-zero"],
)
def test_price_not_above_zero_is_refused(change: dict[str, float]) -> None:
    assert refused(candle_with(**change)) == "price <= 0"


def test_high_below_low_is_refused() -> None:
    assert refused(candle_with(high=99.0, low=101.0, open=100.0, close=100.0)) == "high 99.0 < low 101.0"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"open": 102.0}, "open 102.0 outside [low 99.5, high 101.5]"),
        ({"open": 99.0}, "open 99.0 outside [low 99.5, high 101.5]"),
        ({"close": 101.6}, "close 101.6 outside [low 99.5, high 101.5]"),
        ({"close": 99.4}, "close 99.4 outside [low 99.5, high 101.5]"),
    ],
)
def test_open_or_close_outside_the_range_is_refused(change: dict[str, float], reason: str) -> None:
    assert refused(candle_with(**change)) == reason


def test_open_and_close_on_the_range_edges_are_fine() -> None:
    assert decode(candle_with(open=99.5, close=101.5)).close == 101.5


def test_negative_volume_is_refused() -> None:
    assert refused(candle_with(volume=-0.01)) == "volume -0.01 < 0"
    assert decode(candle_with(volume=0.0)).volume == 0.0


@pytest.mark.parametrize("timeframe", ["7m", "1M", "", "1H", "60s"])
def test_unknown_timeframe_is_refused(timeframe: str) -> None:
    assert refused(candle_with(timeframe=timeframe)) == f"unknown timeframe {timeframe!r}"


@pytest.mark.parametrize(("timeframe", "ts"), [("1m", T + 1), ("1m", T + 30_000), ("1h", T + 60_000), ("1m", -60_000)])
def test_misaligned_ts_is_refused(timeframe: str, ts: int) -> None:
    assert refused(candle_with(timeframe=timeframe, ts=ts)) == f"ts {ts} is not aligned to {timeframe}"


def test_oversized_payload_is_refused_before_parsing() -> None:
    big = encode(msgspec.structs.replace(DEAD, payload=b"x" * MAX_PAYLOAD_BYTES))
    assert len(big) > MAX_PAYLOAD_BYTES
    assert refused(big) == f"payload of {len(big)} bytes exceeds {MAX_PAYLOAD_BYTES}"
    assert refused(b"\xc1" * (MAX_PAYLOAD_BYTES + 1)).startswith("payload of")


def test_payload_at_the_limit_is_accepted() -> None:
    small = encode(msgspec.structs.replace(DEAD, payload=b""))
    fill = MAX_PAYLOAD_BYTES - len(small) - 5  # bin32 header
    data = encode(msgspec.structs.replace(DEAD, payload=b"x" * fill))
    assert len(data) <= MAX_PAYLOAD_BYTES
    assert decode(data).payload == b"x" * fill


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"exchange": "Kraken"}, "exchange id must be lowercase letters and digits, got 'Kraken'"),
        ({"exchange": "kraken.eu"}, "exchange id must be lowercase letters and digits, got 'kraken.eu'"),
        ({"symbol": "BTC USD"}, "symbol 'BTC USD' holds a character that cannot be carried: ' '"),
        ({"symbol": ""}, "symbol must be 1..64 characters, got ''"),
    ],
)
def test_series_fields_that_cannot_be_carried_are_refused(change: dict[str, str], reason: str) -> None:
    assert refused(candle_with(**change)) == reason


# --- the other messages' own rules ------------------------------------------------------------------------------


VOL_CHOICES = "['low', 'normal', 'high', 'crisis']"


def plain_of(msg: Any, **changes: Any) -> bytes:
    return msgpack.packb({**to_plain(msg), **changes}, use_bin_type=True)


@pytest.mark.parametrize(
    ("msg", "change", "reason"),
    [
        (VOL, {"label": "extreme"}, f"VolRegimeEvent.label: 'extreme' not one of {VOL_CHOICES}"),
        (VOL, {"prev_label": "calm"}, f"VolRegimeEvent.prev_label: 'calm' not one of {VOL_CHOICES}"),
        (VOL, {"ratio": -1.0}, "negative volatility or ratio"),
        (VOL, {"vol_short": -0.1}, "negative volatility or ratio"),
        (HMM, {"regime": "bullish"}, "HmmRegimeEvent.regime: 'bullish' not one of ['BEARISH', 'RANGING', 'BULLISH']"),
        (HMM, {"probabilities": [0.5, 0.5]}, "HmmRegimeEvent.probabilities: expected 3 items, got 2"),
        (HMM, {"probabilities": 0.5}, "HmmRegimeEvent.probabilities: expected a list"),
        (HMM, {"probabilities": [0.2, 0.2, 0.2]}, "probabilities sum to 0.6000000000000001, not 1"),
        (HMM, {"probabilities": [1.5, -0.5, 0.0]}, "probability outside [0, 1]"),
        (HMM, {"bias_signal": 1.5}, "bias_signal 1.5 outside [-1, 1]"),
        (SCORE, {"component": "momentum"}, "unknown score component 'momentum'"),
        (SCORE, {"score": -1.01}, "score -1.01 outside [-1, 1]"),
        (DECISION, {"weights": [0.4, 0.6]}, "ScreenerDecision.weights: expected a map"),
        (DECISION, {"grid_bias": "symmetric"}, "ScreenerDecision.grid_bias: expected a map"),
        (DECISION, {"vol_regime": None}, f"ScreenerDecision.vol_regime: None not one of {VOL_CHOICES}"),
        (DEAD, {"payload": "text"}, "DeadLetter.payload: expected bytes"),
        (PIPELINE, {"timeframe": "2d"}, "unknown timeframe '2d'"),
    ],
)
def test_message_rules_are_enforced_with_clear_reasons(msg: Any, change: dict[str, Any], reason: str) -> None:
    assert refused(plain_of(msg, **change)) == reason


def test_grid_bias_missing_field_names_the_path() -> None:
    plain = to_plain(DECISION)
    del plain["grid_bias"]["mode"]
    assert refused(msgpack.packb(plain)) == "ScreenerDecision.grid_bias: missing field 'mode'"


def test_extra_fields_are_ignored_for_forward_compatibility() -> None:
    assert decode(plain_of(CANDLE, vwap=100.2)) == CANDLE


# --- batches ---------------------------------------------------------------------------------------------------


def test_a_candle_batch_carries_the_same_candles_and_names_its_span() -> None:
    back = decode(encode(CANDLES))
    assert back.candles() == [msgspec.structs.replace(CANDLE, ts=T + i * 60_000) for i in range(3)]
    assert back.msg_id == f"kraken.BTC-USD.1m.{T}-{T + 120_000}"
    assert candles_in(CANDLE) == [CANDLE]
    assert events_in(VOLS) == [VOL_FIRST, msgspec.structs.replace(VOL, ts=T + 60_000)]


@pytest.mark.parametrize(
    ("bars", "reason"),
    [
        ((), f"a batch holds 1..{MAX_BATCH_BARS} bars, got 0"),
        (((T, 100.0, 101.0, 99.0, 100.0, 1.0), (T, 100.0, 101.0, 99.0, 100.0, 1.0)), f"bars[1]: ts {T} not after {T}"),
        (((T, 100.0, 99.0, 101.0, 100.0, 1.0),), "bars[0]: high 99.0 < low 101.0"),
        (((T, 100.0, 101.0, 99.0, math.nan, 1.0),), "CandleBatch.bars[0][4]: nan is not finite"),
        (((T + 1, 100.0, 101.0, 99.0, 100.0, 1.0),), f"bars[0]: ts {T + 1} is not aligned to 1m"),
    ],
)
def test_a_batch_with_one_bad_bar_is_refused_naming_the_bar(bars: tuple[Any, ...], reason: str) -> None:
    plain = {**to_plain(CANDLES), "bars": [list(b) for b in bars]}
    assert refused(msgpack.packb(plain)) == reason


def test_events_go_alone_or_in_batches_of_the_given_size() -> None:
    decisions = [msgspec.structs.replace(DECISION, ts=T + i * 60_000) for i in range(5)]
    assert as_messages(decisions[:1], 2) == [DECISION]
    batches = as_messages(decisions, 2)
    assert [len(b.events) for b in batches] == [2, 2, 1]
    assert [e for b in batches for e in events_in(b)] == decisions
    assert decode(encode(batches[0])).span == f"{DECISION.key.token}.{T}-{T + 60_000}"


def test_an_event_batch_holds_only_its_own_series_in_increasing_ts() -> None:
    other = msgspec.structs.replace(VOL, symbol="ETH/USD", ts=T + 60_000)
    plain = {**to_plain(VOLS), "events": [to_plain(VOL_FIRST), to_plain(other)]}
    assert refused(msgpack.packb(plain)) == "events[1] is for kraken:ETH/USD:1m, not kraken:BTC/USD:1m"
    backwards = {**to_plain(VOLS), "events": [to_plain(VOL), to_plain(VOL_FIRST)]}
    assert refused(msgpack.packb(backwards)) == f"events[1]: ts {T} not after {T}"


# Every sample's mutations get the reason the old reference decoder gave: test_wire_compat holds each of
# about 2,700 recorded cases (it replaces the comparison of the old fast and reference decoders).


def test_a_contract_is_checked_when_built_in_code_too() -> None:
    with pytest.raises(ContractError, match=r"^high 50.0 < low 99.5$"):
        msgspec.structs.replace(CANDLE, high=50.0)
    with pytest.raises(ContractError, match=r"^Candle.open: nan is not finite$"):
        msgspec.structs.replace(CANDLE, open=math.nan)
    with pytest.raises(ContractError, match=r"^GridBias.entry_spacing_mult_b: inf is not finite$"):
        GridBias("symmetric", 1.0, math.inf, None)
    with pytest.raises(ContractError, match=r"^events\[1\]: ts 1700000040000 not after 1700000040000$"):
        batch_of([VOL, VOL])


def test_contracts_are_frozen() -> None:
    with pytest.raises(AttributeError):
        CANDLE.close = 1.0  # type: ignore[misc]


def test_the_kind_is_the_struct_tag_and_leads_the_map() -> None:
    for kind, cls in MESSAGE_TYPES.items():
        assert cls.KIND == kind == cls.__struct_config__.tag
        assert cls.__struct_config__.tag_field == "kind"
    assert list(msgpack.unpackb(encode(CANDLE), raw=False))[:2] == ["kind", "exchange"]


def test_events_in_a_batch_travel_without_their_kind() -> None:
    plain = msgpack.unpackb(encode(DECISIONS), raw=False)
    assert plain["kind"] == "screener_decision_batch"
    assert all("kind" not in event for event in plain["events"])
    assert decode(encode(DECISIONS)).events[1] == msgspec.structs.replace(DECISION, ts=T + 60_000)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: f"{type(m).__name__}")
def test_encoding_is_exactly_the_msgpack_of_the_plain_map(msg: Any) -> None:
    assert encode(msg) == msgpack.packb(to_plain(msg), use_bin_type=True)


def test_encoding_matches_the_plain_map_for_every_event_of_a_backtest() -> None:
    from regimes.backtest import backtest
    from tests.factories import candles_from_returns
    from tests.harness import small_config

    key = SeriesKey("kraken", "BTC/USD", "1m")
    rng = np.random.default_rng(3)
    candles = candles_from_returns(key, rng.normal(0.0, 0.01, 300).tolist())
    events = list(backtest(candles, small_config([("BTC/USD", "CORE")]), now_ms=T + 10**12))
    assert len(events) == 2 * len(candles)  # a vol event and a decision per candle (HMM off)
    for event in events:
        assert encode(event) == msgpack.packb(to_plain(event), use_bin_type=True)
