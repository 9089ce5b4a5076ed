"""Symbol encoding, series keys, the names of one stack, and how replicas split a universe."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.errors import ConfigError, ContractError
from shared.domain.subjects import Names, SeriesKey, decode_symbol, encode_symbol, timeframe_ms
from shared.domain.vocab import TIMEFRAMES_MS

TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")  # a NATS subject token and a JetStream KV key segment
KEY = SeriesKey("kraken", "BTC/USD", "1m")

# Printable, non-space characters a symbol can carry: ASCII and the rest of Latin-1.
printable_char = st.characters(min_codepoint=0x21, max_codepoint=0xFF).filter(
    lambda c: c.isprintable() and not c.isspace()
)
symbols = st.text(printable_char, min_size=1, max_size=64)


# --- symbol encoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "token"),
    [
        ("BTC/USD", "BTC-USD"),
        ("ETH/USDT:USDT", "ETH-USDT_3AUSDT"),
        ("1000PEPE/USDT", "1000PEPE-USDT"),
        ("BTC-PERP", "BTC_2DPERP"),
        ("A_B/C", "A_5FB-C"),
        ("X.Y/Z*>", "X_2EY-Z_2A_3E"),
        ("\u00e9URO/USD", "_E9URO-USD"),
    ],
)
def test_tricky_symbols_encode_to_plain_tokens(symbol: str, token: str) -> None:
    assert encode_symbol(symbol) == token
    assert decode_symbol(token) == symbol


@settings(max_examples=200, deadline=None)
@given(symbols)
def test_symbol_encoding_is_reversible(symbol: str) -> None:
    token = encode_symbol(symbol)
    assert decode_symbol(token) == symbol


@settings(max_examples=200, deadline=None)
@given(symbols)
def test_encoded_symbol_is_a_valid_subject_token_and_kv_key(symbol: str) -> None:
    token = encode_symbol(symbol)
    assert TOKEN.match(token), token
    for forbidden in (".", "*", ">", " ", "/"):
        assert forbidden not in token


@settings(max_examples=100, deadline=None)
@given(symbols, symbols)
def test_different_symbols_never_share_a_token(a: str, b: str) -> None:
    if a != b:
        assert encode_symbol(a) != encode_symbol(b)


@pytest.mark.parametrize(
    "symbol",
    ["", "X" * 65, "BTC USD", "BTC\tUSD", "BTC/USD\n", "BTC/€", "🚀/USD", "BTC\u00a0USD"],
    ids=["empty", "too-long", "space", "tab", "newline", "euro", "emoji", "nbsp"],
)
def test_symbols_that_cannot_be_carried_are_refused(symbol: str) -> None:
    with pytest.raises(ContractError):
        encode_symbol(symbol)


@pytest.mark.parametrize("token", ["", "BTC/USD", "BTC.USD", "A_3a", "A_4", "A_ZZ", "A B", "A*"])
def test_decode_refuses_what_encode_never_produces(token: str) -> None:
    with pytest.raises(ContractError, match="not an encoded symbol"):
        decode_symbol(token)


# --- series keys -------------------------------------------------------------------------------------------------


def test_series_key_token_and_id() -> None:
    key = SeriesKey("binance", "ETH/USDT:USDT", "5m")
    assert key.token == "binance.ETH-USDT_3AUSDT.5m"
    assert key.id == "binance:ETH/USDT:USDT:5m"
    assert SeriesKey.from_token(key.token) == key


@settings(max_examples=100, deadline=None)
@given(
    exchange=st.from_regex(r"[a-z0-9]{1,32}", fullmatch=True),
    symbol=symbols,
    timeframe=st.sampled_from(sorted(TIMEFRAMES_MS)),
)
def test_series_key_round_trips_through_its_token(exchange: str, symbol: str, timeframe: str) -> None:
    key = SeriesKey(exchange, symbol, timeframe)
    assert len(key.token.split(".")) == 3
    assert SeriesKey.from_token(key.token) == key
    assert Names("ns").series_of(Names("ns").vol(key)) == key


@pytest.mark.parametrize(
    "token",
    ["kraken.BTC-USD", "kraken.BTC-USD.1m.x", "Kraken.BTC-USD.1m", "kraken.BTC-USD.7m", "kraken.BTC USD.1m"],
)
def test_bad_series_tokens_are_refused(token: str) -> None:
    with pytest.raises(ContractError):
        SeriesKey.from_token(token)


def test_timeframes_are_bar_lengths_in_ms() -> None:
    assert timeframe_ms("1m") == 60_000
    assert timeframe_ms("1h") == 3_600_000
    assert timeframe_ms("1d") == 86_400_000
    with pytest.raises(ContractError, match="unknown timeframe"):
        timeframe_ms("1w")


def test_series_of_reads_any_per_series_subject() -> None:
    names = Names("paper")
    for subject in (names.ohlcv(KEY), names.vol(KEY), names.hmm(KEY), names.score("carry", KEY), names.screener(KEY)):
        assert names.series_of(subject) == KEY


# --- names and namespaces --------------------------------------------------------------------------------------


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def test_subject_matcher_follows_nats_rules() -> None:
    assert matches("a.>", "a.b.c")
    assert not matches("a.>", "a")
    assert matches("a.*.c", "a.b.c")
    assert not matches("a.*", "a.b.c")


def subjects_of(names: Names) -> list[str]:
    keys = [KEY, SeriesKey("binance", "ETH/USDT:USDT", "5m")]
    out = [names.dlq("vol_regime"), names.control("backfill")]
    for key in keys:
        out += [names.ohlcv(key), names.vol(key), names.hmm(key), names.screener(key), names.pipeline(key)]
        out += [names.score(c, key) for c in ("carry", "expectancy", "router")]
    return out


def wildcards_of(names: Names) -> list[str]:
    return [
        names.ohlcv_all, names.vol_all, names.hmm_all, names.scores_all, names.screener_all,
        names.pipeline_all, names.dlq_all,
    ]  # fmt: skip


def overlap(a: Names, b: Names) -> list[tuple[str, str]]:
    """(pattern or subject of a, subject of b) pairs through which a would see b's messages."""
    hits = [(w, s) for w in wildcards_of(a) for s in subjects_of(b) if matches(w, s)]
    hits += [(s, s) for s in set(subjects_of(a)) & set(subjects_of(b))]
    return hits


def test_subjects_wildcards_and_stream_filters_fit_together() -> None:
    names = Names("paper")
    for subject in subjects_of(names):
        assert all(TOKEN.match(tok) for tok in subject.split(".")), subject
    assert names.vol(KEY) == "paper.regime.vol.kraken.BTC-USD.1m"
    assert Names().vol(KEY) == "regime.vol.kraken.BTC-USD.1m"
    assert matches(names.vol_all, names.vol(KEY))
    assert matches(names.scores_all, names.score("carry", KEY))
    assert matches(names.pipeline_all, names.pipeline(KEY))
    assert not matches(names.vol_all, names.hmm(KEY))


NAMESPACES = ["", "paper", "live", "t0123456789ab", "paper_2", "PAPER"]


@pytest.mark.parametrize("a", NAMESPACES)
@pytest.mark.parametrize("b", NAMESPACES)
def test_names_isolate_namespaces(a: str, b: str) -> None:
    if a == b:
        return
    na, nb = Names(a), Names(b)
    assert overlap(na, nb) == []
    streams_a = {na.stream_ohlcv, na.stream_regimes, na.stream_telemetry, na.stream_dlq}
    streams_b = {nb.stream_ohlcv, nb.stream_regimes, nb.stream_telemetry, nb.stream_dlq}
    assert not streams_a & streams_b
    buckets = ("vol_state", "hmm_state", "screener_state", "ingest_state", "health")
    assert not {na.bucket(x) for x in buckets} & {nb.bucket(x) for x in buckets}
    assert na.redis_key("symbol", KEY.token) != nb.redis_key("symbol", KEY.token)
    assert na.redis_key("summary") != nb.redis_key("summary")


# The first token of every un-namespaced subject family.
ROOTS = ["ohlcv", "regime", "scores", "screener", "telemetry", "dlq", "control"]


@pytest.mark.parametrize("namespace", ROOTS)
def test_namespace_named_like_a_subject_root_cannot_see_or_be_seen_by_the_default_stack(namespace: str) -> None:
    # The default stack subscribes "ohlcv.>", "scores.>", ...: a namespace spelled like one of those
    # roots would put its subjects under the default stack's wildcards (and its streams' subjects
    # would overlap, which JetStream refuses). Either the namespace is refused, or nothing overlaps.
    try:
        names = Names(namespace)
    except ConfigError:
        return
    assert overlap(Names(""), names) == []
    assert overlap(names, Names("")) == []


@pytest.mark.parametrize("namespace", ["a.b", "a b", "a-b", "*", ">", "x" * 33, "ns/1"])
def test_bad_namespace_is_refused_naming_the_setting(namespace: str) -> None:
    with pytest.raises(ConfigError) as info:
        Names(namespace)
    assert info.value.key == "REGIMES_NAMESPACE"


def test_durable_names_split_by_replica() -> None:
    names = Names("paper")
    assert names.durable("vol_regime") == "paper_vol_regime"
    assert names.durable("vol_regime", "host-12-ab") == "paper_vol_regime-host-12-ab"
