"""state_publisher's per-symbol consensus: the newest verdict of each timeframe by candle time, reduced."""

from __future__ import annotations

import random

from services.state_publisher.consensus import consensuses, symbol_consensus
from services.state_publisher.core import apply_hmm, new_snapshot
from shared.domain.consensus import Consensus, TimeframeVerdict, consensus
from shared.domain.contracts import HmmRegimeEvent
from shared.domain.snapshot import SeriesSnapshot
from shared.domain.subjects import Names, SeriesKey
from shared.domain.vocab import TIMEFRAMES_MS, HmmLabel
from shared.infra.redis_keys import RedisKeys
from tests.factories import hmm_event

KEYS = {tf: SeriesKey("kraken", "BTC/USD", tf) for tf in ("1m", "15m", "1h")}
OTHER = SeriesKey("kraken", "ETH/USD", "1m")
REGIMES: tuple[HmmLabel, ...] = ("BEARISH", "RANGING", "BULLISH")
PROBS: dict[HmmLabel, tuple[float, float, float]] = {
    "BEARISH": (0.7, 0.2, 0.1),
    "RANGING": (0.2, 0.6, 0.2),
    "BULLISH": (0.1, 0.2, 0.7),
}


def _events(rng: random.Random) -> list[HmmRegimeEvent]:
    """A few verdicts per timeframe at distinct bars, some untrained, with redeliveries of the same verdict."""
    out = []
    for tf, key in KEYS.items():
        step = TIMEFRAMES_MS[tf]
        for i in range(rng.randint(1, 6)):
            regime = rng.choice(REGIMES)
            ev = hmm_event(i, regime, PROBS[regime], key=key, ts=i * step, trained=rng.random() < 0.8)
            out.extend([ev] * rng.randint(1, 2))
    out.extend(hmm_event(i, "BEARISH", PROBS["BEARISH"], key=OTHER, ts=i * 60_000) for i in range(3))
    return out


def _apply_all(events: list[HmmRegimeEvent]) -> dict[SeriesKey, SeriesSnapshot]:
    snaps: dict[SeriesKey, SeriesSnapshot] = {}
    for ev in events:
        snap = snaps.get(ev.key) or new_snapshot(ev.key, "CORE")
        up = apply_hmm(snap, ev, 0.5, 0)
        snaps[ev.key] = up.snapshot if up is not None else snap
    return snaps


def _expected(events: list[HmmRegimeEvent], weights: dict[str, float]) -> tuple[Consensus, dict[str, int]]:
    """The reduction of the newest verdict per timeframe, picked independently of the publisher."""
    newest: dict[str, HmmRegimeEvent] = {}
    for ev in events:
        if ev.symbol == "BTC/USD" and (ev.timeframe not in newest or ev.ts > newest[ev.timeframe].ts):
            newest[ev.timeframe] = ev
    verdicts = {tf: TimeframeVerdict(e.regime, e.bias_signal, e.trained) for tf, e in newest.items()}
    return consensus(verdicts, weights), {tf: e.ts for tf, e in newest.items()}


def test_the_consensus_depends_only_on_the_events_not_their_order() -> None:
    rng = random.Random(20261202)
    weights = {"1h": 2.0, "15m": 1.5}
    for _ in range(200):
        events = _events(rng)
        want, as_of = _expected(events, weights)
        first = None
        for _ in range(5):
            rng.shuffle(events)
            got = consensuses(_apply_all(events), {("kraken", "BTC/USD")}, weights)[("kraken", "BTC/USD")]
            assert (got.regime, got.agreement, got.bias, got.voting, got.dissenting, got.untrained) == (
                want.regime, want.agreement, want.bias, want.voting, want.dissenting, want.untrained,
            )  # fmt: skip
            assert got.as_of == as_of
            assert list(got.as_of) == sorted(as_of, key=TIMEFRAMES_MS.__getitem__)
            assert first is None or got == first
            first = got


def test_an_older_bar_never_replaces_a_newer_verdict() -> None:
    newer = hmm_event(2, "BULLISH", PROBS["BULLISH"], key=KEYS["15m"], ts=2 * 900_000)
    older = hmm_event(1, "BEARISH", PROBS["BEARISH"], key=KEYS["15m"], ts=900_000)
    got = symbol_consensus("kraken", "BTC/USD", _apply_all([newer, older]).values(), {})
    assert got is not None
    assert (got.regime, got.as_of) == ("BULLISH", {"15m": 2 * 900_000})


def test_a_dissenting_timeframe_is_named_and_symbols_stay_apart() -> None:
    events = [
        hmm_event(1, "BULLISH", PROBS["BULLISH"], key=KEYS["1m"], ts=60_000),
        hmm_event(1, "BULLISH", PROBS["BULLISH"], key=KEYS["15m"], ts=900_000),
        hmm_event(1, "BEARISH", PROBS["BEARISH"], key=KEYS["1h"], ts=3_600_000),
        hmm_event(1, "RANGING", PROBS["RANGING"], key=OTHER, ts=60_000, trained=False),
    ]
    got = consensuses(_apply_all(events), {("kraken", "BTC/USD"), ("kraken", "ETH/USD")}, {})
    btc, eth = got[("kraken", "BTC/USD")], got[("kraken", "ETH/USD")]
    assert (btc.regime, btc.dissenting, btc.voting) == ("BULLISH", ("1h",), ("1m", "15m", "1h"))
    assert abs(btc.agreement - 2 / 3) < 1e-12
    assert (eth.regime, eth.agreement, eth.voting, eth.untrained) == ("RANGING", 0.0, (), ("1m",))


def test_a_symbol_without_any_verdict_has_no_consensus() -> None:
    snaps = {KEYS["1m"]: new_snapshot(KEYS["1m"], "CORE")}
    assert consensuses(snaps, {("kraken", "BTC/USD")}, {}) == {}


def test_the_consensus_key_names_the_symbol_without_a_timeframe() -> None:
    keys = RedisKeys(Names("ns"))
    assert keys.consensus("kraken", "ETH/USDT:USDT") == "regimes:ns:consensus:kraken.ETH-USDT_3AUSDT"
