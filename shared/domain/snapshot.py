"""What state_publisher keeps in Redis per series, and the status API serves: defined here, once.

A series' :class:`SeriesSnapshot`, its :class:`HistoryPoint` list and its
transitions (:class:`VolTransition`, :class:`HmmTransition`), and the
:class:`Summary` over all series. They are stored as JSON by :func:`dumps`
(the bytes they always were); every block of a snapshot is null until its
service has reported for the series. Field meanings are those of the messages
they come from (:mod:`shared.domain.contracts`). The API's response models
(``services/dashboard_api/models.py``) are held to these by a test.

Units: timestamps ms UTC (a bar's ``ts`` is its open time); volatilities are
bar-level standard deviations of log returns; NAV figures are fractions.
"""

from __future__ import annotations

from typing import Any, TypeVar, Union

import msgspec

from shared.domain.codec import plain_scalar
from shared.domain.contracts import DecisionConsensus, GridBias
from shared.domain.errors import ContractError
from shared.domain.vocab import DepthTier, HmmLabel, VolLabel

T = TypeVar("T")


class Price(msgspec.Struct, frozen=True):
    close: float
    ts: int  # open time of the bar, ms UTC


class VolBlock(msgspec.Struct, frozen=True):
    short: float  # EWMA std of log returns, short window, bar level
    long: float  # EWMA std of log returns, long window, bar level
    ratio: float  # short / long
    samples: int  # log returns seen
    sufficient: bool  # false: fewer returns than the long window (regime defaults to normal)
    ts: int
    since_ts: int  # ms the current regime began
    raw_label: VolLabel | None = None  # the ratio's plain threshold label; the regime is it after hysteresis, confirm
    pending_label: VolLabel | None = None  # the label waiting for confirmation, if any


class Probabilities(msgspec.Struct, frozen=True):
    bearish: float
    ranging: float
    bullish: float


class HmmBlock(msgspec.Struct, frozen=True):
    """Seed 003 §2.6 ``hmm_regime``."""

    regime: HmmLabel
    confidence: float  # top probability minus the second, in [0, 1]
    bias_signal: float  # in [-1, 1]
    probabilities: Probabilities
    trained: bool
    observation_count: int
    blend_factor: float  # HMM_BLEND_WITH_TREND in force
    trained_at: int | None  # ms UTC of the last training, None if never
    ts: int
    since_ts: int  # ms the current regime began
    raw_regime: HmmLabel | None = None  # the filter's top label this bar; regime follows it after HMM_CONFIRM_BARS
    raw_confidence: float | None = None  # before the training-depth factor
    depth_tier: DepthTier | None = None  # None: untrained
    training_candles: int | None = None  # candles in the model's training window
    label_agreement: float | None = None  # fraction of the window where the previous and this model's labels agree


class ScreenerBlock(msgspec.Struct, frozen=True, omit_defaults=True):  # no consensus key when off
    """The screener's last decision, the parts bots read (ScreenerDecision documents each)."""

    ts: int
    tier: str
    sizing_multiplier: float
    base_per_trade_nav_pct: float  # fraction of NAV
    effective_per_trade_nav_pct: float  # fraction of NAV
    capped: bool
    weights: dict[str, float]
    scores: dict[str, float]
    defaulted: tuple[str, ...]
    hybrid_score: float
    trend_score: float
    hmm_bias: float
    hmm_confidence: float
    blend_factor: float
    dynamic_idle_target: float  # fraction of NAV
    grid_bias: GridBias
    consensus: DecisionConsensus | None = None  # with ``consensus.screener``: what hmm_bias and grid_bias came from


class PipelineBlock(msgspec.Struct, frozen=True):
    """Seed 003 §2.6 ``hmm_data_pipeline``: a PipelineStatus without its series; backfill fields null until one ran."""

    timeframe: str
    source: str
    interval_min: int  # bar length, minutes
    sync_interval_sec: float  # s
    samples: int
    coverage_pct: float  # 0..100
    last_ts: int | None
    freshness_sec: float | None  # s
    freshness_limit_sec: float  # s
    freshness_ok: bool
    gaps: int
    backfill_last_at: int | None
    backfill_last_rows: int | None
    backfill_last_message: str | None
    last_error: str | None
    reported_at: int  # ms UTC


class TuningAccumulator(msgspec.Struct, frozen=True):
    """The running sums a Tuning is computed from; the publisher's own, not served (stored as ``_acc``)."""

    first_ts: int | None
    last_ts: int | None
    last_close: float | None
    current: str | None
    run_start: int | None  # ts the current run began, ms
    flips: int
    bars: dict[str, int]
    dwell_ms: dict[str, int]  # completed runs only
    runs: dict[str, int]
    fwd_sum: dict[str, float]  # sum of next-bar log returns per label
    fwd_n: dict[str, int]


class Tuning(msgspec.Struct, frozen=True):
    """Seed 003 §4 key metrics for one labelling of the series."""

    flips: int
    flips_per_day: float | None
    span_days: float
    current: str | None
    current_since_ts: int | None
    bars: dict[str, int]  # per label
    mean_dwell_min: dict[str, float | None]  # per label, minutes
    mean_forward_return: dict[str, float | None]  # mean next-bar log return per label
    acc: TuningAccumulator = msgspec.field(name="_acc")


class SeriesSnapshot(msgspec.Struct, frozen=True):
    """One series, as the API lists it; a series heard of but not reported on yet has every block null."""

    series: str  # exchange:symbol:timeframe
    exchange: str
    symbol: str
    timeframe: str
    tier: str
    price: Price | None = None
    vol_regime: VolLabel | None = None
    vol: VolBlock | None = None
    hmm_regime: HmmBlock | None = None
    screener: ScreenerBlock | None = None
    hmm_data_pipeline: PipelineBlock | None = None
    hmm_tuning: Tuning | None = None
    vol_tuning: Tuning | None = None
    updated_at: int | None = None  # ms UTC of the publisher's last change


class HistoryPoint(msgspec.Struct, frozen=True):
    """One decided bar of the symbol view's history (short keys: a day of 1m bars per series is kept)."""

    ts: int
    close: float
    vol: VolLabel
    ratio: float  # vol ratio
    hmm: HmmLabel | None  # None until a trained model's verdict
    p: tuple[float, float, float] | None  # (bearish, ranging, bullish) at this bar, when known
    nav: float  # effective per-trade NAV, fraction
    idle: float  # dynamic idle target, fraction
    score: float  # hybrid score


class VolTransition(msgspec.Struct, frozen=True, tag_field="kind", tag="vol"):
    ts: int
    from_: VolLabel = msgspec.field(name="from")
    to: VolLabel
    ratio: float
    close: float


class HmmTransition(msgspec.Struct, frozen=True, tag_field="kind", tag="hmm"):
    ts: int
    from_: HmmLabel = msgspec.field(name="from")
    to: HmmLabel
    confidence: float


Transition = Union[VolTransition, HmmTransition]  # noqa: UP007 - a runtime union msgspec decodes by ``kind``


class SymbolConsensus(msgspec.Struct, frozen=True):
    """One symbol's latest HMM verdicts across its timeframes, reduced (shared.domain.consensus); kept per symbol.

    Derived from the snapshots of the symbol's series (their ``hmm_regime``, the
    newest by candle time), so it depends only on the events, not their order.
    """

    exchange: str
    symbol: str
    regime: HmmLabel  # the regime with the most voting weight; RANGING on a tie or with no vote
    agreement: float  # share of the voting weight behind ``regime``, a fraction in [0, 1]
    bias: float  # weight-averaged bias_signal of the voting timeframes, in [-1, 1]
    voting: tuple[str, ...]  # timeframes that voted (trained, weight > 0), shortest first
    dissenting: tuple[str, ...]  # voting timeframes whose regime is not ``regime``
    untrained: tuple[str, ...]  # timeframes whose model is not trained yet
    as_of: dict[str, int]  # timeframe -> ts (bar open, ms UTC) of the verdict it counted with


class Summary(msgspec.Struct, frozen=True):
    """``vol_regime_summary`` (seed 000 §4.1) and its HMM twin: series per regime."""

    symbols: int
    vol_regime_summary: dict[VolLabel, int]
    vol_regime_avg_vol_short: dict[VolLabel, float | None]
    hmm_regime_summary: dict[HmmLabel, int]
    hmm_untrained: int  # series whose HMM has not trained yet
    updated_at: int | None


_JSON = msgspec.json.Encoder(enc_hook=plain_scalar)


def dumps(record: msgspec.Struct) -> str:
    """The JSON text of a record as stored in Redis: its fields in declaration order, compact.

    msgspec writes it (3 µs a snapshot where ``json.dumps`` of the plain form took 50: a fifth of
    state_publisher's busy time on a burst); what it holds is what ``json.dumps`` wrote before,
    value for value and key for key (``tests/unit/test_snapshot_compat.py``), without the spaces.
    """
    return _JSON.encode(record).decode()


def loads(text: str | bytes, cls: type[T] | Any) -> T:
    """A stored record back; ContractError when the text is not one."""
    try:
        return msgspec.json.decode(text, type=cls)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ContractError(f"stored {getattr(cls, '__name__', 'record')}: {exc}") from None
