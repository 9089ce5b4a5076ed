"""Typed response models of the status API: the shapes bots and the dashboard read.

Field meanings are those of the messages they come from (shared/domain/contracts.py);
any block may be null while its service has not reported for the series yet.

Regime labels are lowercase everywhere in the JSON API (``low``…``crisis``,
``bearish``/``ranging``/``bullish``), values and keys alike, as the probabilities and
grid-bias modes always were. The wire contracts (NATS msgpack) and the Redis snapshots
keep the HMM labels in upper case; the models lower them as they validate what Redis
holds, so every route (fast path and reference path alike) answers the same labels.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field

from shared.domain.vocab import DepthTier


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


VolLabel = Annotated[Literal["low", "normal", "high", "crisis"], BeforeValidator(_lower)]
HmmLabel = Annotated[Literal["bearish", "ranging", "bullish"], BeforeValidator(_lower)]
Label = Annotated[str, AfterValidator(str.lower)]  # a vol or HMM label where either may stand


class Price(BaseModel):
    close: float
    ts: int = Field(description="open time of the bar, ms UTC")


class VolBlock(BaseModel):
    short: float = Field(description="EWMA std of log returns, short window, bar level")
    long: float = Field(description="EWMA std of log returns, long window, bar level")
    ratio: float = Field(description="short / long")
    samples: int
    sufficient: bool = Field(description="false: fewer returns than the long window (regime defaults to normal)")
    ts: int
    since_ts: int = Field(description="ms the current regime began")
    raw_label: VolLabel | None = Field(
        None, description="plain threshold label of ratio; vol_regime is it after hysteresis and confirm_bars"
    )
    pending_label: VolLabel | None = Field(None, description="label waiting for confirmation, if any")


class Probabilities(BaseModel):
    bearish: float
    ranging: float
    bullish: float


class HmmBlock(BaseModel):
    """The series' latest HMM verdict: the regime, how sure the model is, and the bias it gives the screener."""

    regime: HmmLabel
    confidence: float
    bias_signal: float
    probabilities: Probabilities
    trained: bool
    observation_count: int
    blend_factor: float
    trained_at: int | None
    ts: int
    since_ts: int
    raw_regime: HmmLabel | None = Field(
        None, description="the filter's top label this bar; regime follows it after HMM_CONFIRM_BARS bars"
    )
    raw_confidence: float | None = Field(None, description="confidence before the training-depth factor")
    depth_tier: DepthTier | None = Field(
        None, description="training depth: shallow < 1000 candles <= moderate < 2000 <= deep; null untrained"
    )
    training_candles: int | None = Field(None, description="candles in the model's training window")
    label_agreement: float | None = Field(
        None, description="share of the training window where the previous and this model's labels agree"
    )


class GridBiasModel(BaseModel):
    mode: Literal["symmetric", "long_bias", "short_bias"]
    entry_spacing_mult_a: float
    entry_spacing_mult_b: float
    size_skew_override: float | None


class DecisionConsensus(BaseModel):
    """What the decision's hmm_bias and grid_bias came from with config ``consensus.screener``: the symbol's
    timeframes' HMM verdicts as of the bar's close."""

    regime: HmmLabel = Field(description="the regime with the most voting weight; ranging on a tie or with no vote")
    agreement: float = Field(description="share of the voting weight behind regime, a fraction in [0, 1]")
    bias: float = Field(description="weight-averaged bias_signal of the voting timeframes, in [-1, 1]")
    confidence: float = Field(description="agreement x the voting timeframes' weighted mean confidence, in [0, 1]")
    voting: list[str] = Field(description="timeframes that voted (trained, weight > 0), shortest first")
    dissenting: list[str] = Field(description="voting timeframes whose regime is not regime")
    untrained: list[str] = Field(description="timeframes whose model was not trained yet (they do not vote)")
    absent: list[str] = Field(description="timeframes with no bar closed by then (a gap in the base candles)")
    as_of: dict[str, int] = Field(description="timeframe -> open time (ms UTC) of the bar of the verdict counted")


class ScreenerBlock(BaseModel):
    ts: int
    tier: str
    sizing_multiplier: float
    base_per_trade_nav_pct: float
    effective_per_trade_nav_pct: float
    capped: bool
    weights: dict[str, float]
    scores: dict[str, float]
    defaulted: list[str]
    hybrid_score: float
    trend_score: float
    hmm_bias: float
    hmm_confidence: float
    blend_factor: float
    dynamic_idle_target: float
    grid_bias: GridBiasModel
    consensus: DecisionConsensus | None = Field(
        None, description="with consensus.screener: the consensus hmm_bias and grid_bias came from; else null"
    )


class PipelineBlock(BaseModel):
    """The candles behind the HMM: where they come from, how fresh and complete; backfill fields stay null until
    ingest backfills."""

    timeframe: str
    source: str
    interval_min: int
    sync_interval_sec: float
    samples: int
    coverage_pct: float
    last_ts: int | None
    freshness_sec: float | None
    freshness_limit_sec: float
    freshness_ok: bool
    gaps: int
    backfill_last_at: int | None
    backfill_last_rows: int | None
    backfill_last_message: str | None
    last_error: str | None
    reported_at: int


class Tuning(BaseModel):
    """How one labelling of the series behaves: flips, dwell time and next-bar return per regime."""

    flips: int
    flips_per_day: float | None
    span_days: float
    current: Label | None
    current_since_ts: int | None
    bars: dict[Label, int]
    mean_dwell_min: dict[Label, float | None]
    mean_forward_return: dict[Label, float | None] = Field(description="mean next-bar log return per regime")


class TuningRow(BaseModel):
    """One series in /api/tuning."""

    series: str
    hmm: Tuning | None
    vol: Tuning | None


class SymbolSnapshot(BaseModel):
    series: str = Field(description="exchange:symbol:timeframe")
    exchange: str
    symbol: str
    timeframe: str
    tier: str
    price: Price | None
    vol_regime: VolLabel | None
    vol: VolBlock | None
    hmm_regime: HmmBlock | None
    screener: ScreenerBlock | None
    hmm_data_pipeline: PipelineBlock | None
    hmm_tuning: Tuning | None
    vol_tuning: Tuning | None
    updated_at: int | None


class Summary(BaseModel):
    symbols: int
    vol_regime_summary: dict[VolLabel, int]
    vol_regime_avg_vol_short: dict[VolLabel, float | None]
    hmm_regime_summary: dict[HmmLabel, int]
    hmm_untrained: int
    updated_at: int | None


class ServiceHealth(BaseModel):
    service: str
    replica: str
    host: str
    pid: int
    started_at: int
    last_seen: int
    handled: int
    skipped: int
    dead_lettered: int
    extra: dict[str, Any] = Field(default_factory=dict)


class AdmittedEntry(BaseModel):
    exchange: str
    symbol: str = Field(description="display form, e.g. BTC/USD")
    timeframe: str
    first_seq: int = Field(description="OHLCV stream sequence of the series' first candle: its place in the order")


class AdmittedSeries(BaseModel):
    """The series the stack admits (bounded admission): the first ``max_series`` to appear in the candle stream."""

    admitted: int = Field(description="series admitted; at most max_series")
    max_series: int = Field(description="the cap, MAX_SERIES")
    registered: int = Field(description="series seen at all, refused ones included")
    offset: int
    limit: int
    next_offset: int | None = Field(description="offset of the next page; null on the last")
    series: list[AdmittedEntry] = Field(description="this page of the admitted series, first to appear first")


class SeriesStatus(BaseModel):
    series: str
    vol_regime: VolLabel | None
    hmm_regime: HmmBlock | None
    hmm_data_pipeline: PipelineBlock | None


class Status(BaseModel):
    namespace: str
    now: int
    summary: Summary
    services: list[ServiceHealth]
    series: list[SeriesStatus]


class Transition(BaseModel):
    kind: Literal["vol", "hmm"]
    ts: int
    from_: Label = Field(alias="from")
    to: Label
    ratio: float | None = None
    confidence: float | None = None
    close: float | None = None

    model_config = {"populate_by_name": True}


class HistoryPoint(BaseModel):
    ts: int
    close: float
    vol: VolLabel
    ratio: float
    hmm: HmmLabel | None
    p: list[float] | None = Field(description="(bearish, ranging, bullish) at this bar, when known")
    nav: float
    idle: float
    score: float


class SymbolConsensus(BaseModel):
    """One symbol's latest HMM verdicts across its timeframes reduced to one (config ``consensus``, off by default)."""

    exchange: str
    symbol: str
    regime: HmmLabel = Field(description="the regime with the most voting weight; ranging on a tie or with no vote")
    agreement: float = Field(description="share of the voting weight behind regime, a fraction in [0, 1]")
    bias: float = Field(description="weight-averaged bias_signal of the voting timeframes, in [-1, 1]")
    voting: list[str] = Field(description="timeframes that voted (trained, weight > 0), shortest first")
    dissenting: list[str] = Field(description="voting timeframes whose regime is not regime")
    untrained: list[str] = Field(description="timeframes whose model is not trained yet (they do not vote)")
    as_of: dict[str, int] = Field(description="timeframe -> open time (ms UTC) of the bar of the verdict counted")


_CONSENSUS_DOC = "the symbol's consensus across its timeframes; null when consensus is off or no verdict came yet"


class SymbolDetail(BaseModel):
    snapshot: SymbolSnapshot
    history: list[HistoryPoint]
    transitions: list[Transition]
    thresholds: dict[str, float] = Field(description="vol ratio boundaries low / normal / high")
    consensus: SymbolConsensus | None = Field(None, description=_CONSENSUS_DOC)


class HistoryColumns(BaseModel):
    """``history`` in ``?format=compact``: one array per field of a history point; index i is point i, oldest first."""

    ts: list[int]
    close: list[float]
    vol: list[VolLabel]
    ratio: list[float]
    hmm: list[HmmLabel | None]
    p: list[list[float] | None]
    nav: list[float]
    idle: list[float]
    score: list[float]


class SymbolDetailCompact(BaseModel):
    """The detail with its history as columns (``?format=compact``): the same values, about a quarter fewer bytes."""

    snapshot: SymbolSnapshot
    history: HistoryColumns
    transitions: list[Transition]
    thresholds: dict[str, float] = Field(description="vol ratio boundaries low / normal / high")
    consensus: SymbolConsensus | None = Field(None, description=_CONSENSUS_DOC)


class Readiness(BaseModel):
    """``ready`` (and the status, 200 or 503) is NATS and Redis reachable: stale data is reported, never gating."""

    ready: bool
    nats: bool
    redis: bool
    data_ok: bool = Field(True, description="no series of the configured universe is stale")
    stale_series: list[str] = Field(
        default_factory=list, description="universe series with no candle yet or older than their freshness limit"
    )
    other_stale_series: list[str] = Field(
        default_factory=list, description="series outside the universe (imported, replayed) older than their limit"
    )
    detail: dict[str, str] = Field(default_factory=dict)


class Problem(BaseModel):
    detail: str


class BackfillRequest(BaseModel):
    """Fetch deeper candle history (up to ``target_candles``, at most ``max_pages`` requests), for one series or all."""

    series: str | None = Field(None, description="exchange:symbol:timeframe; null for every series")
    target_candles: int | None = Field(None, ge=1, le=1_000_000, description="default HMM_TRAINING_CANDLES")
    max_pages: int | None = Field(None, ge=1, le=10_000, description="default HMM_OHLCV_BACKFILL_MAX_PAGES")


class BackfillResult(BaseModel):
    series: str
    ok: bool
    rows: int = Field(description="candles new to the stream")
    message: str


class BackfillResponse(BaseModel):
    ok: bool
    results: list[BackfillResult]
    error: str | None = None


class Vocabulary(BaseModel):
    """The labels the stack uses, in their order, so a client need not hard-code them."""

    vol_labels: list[str] = Field(description="volatility regimes, calmest first")
    hmm_labels: list[str] = Field(description="HMM regimes, in the order of every probability triple")
    tiers: list[str] = Field(description="sizing tiers, core first")
    score_components: list[str] = Field(description="components of the hybrid score, in the weights' order")
    depth_tiers: list[str] = Field(description="HMM training-depth tiers, shallowest first")
    depth_candles: dict[str, int] = Field(
        description="training candles from which each tier but the first begins (moderate, deep)"
    )


class VolConfirmation(BaseModel):
    """``vol_regimes.defaults``' two filters between the ratio's plain label (``raw_label``) and the regime."""

    confirm_bars: int = Field(description="bars in a row a new label must lead before it is the regime; 1: at once")
    hysteresis: float = Field(
        description="fraction of a threshold the ratio must cross it by to leave the regime in force; 0: none"
    )


class ConfigView(BaseModel):
    """The strategy config in force, as the screener applies it."""

    universe: list[dict[str, str]]
    per_trade_nav_pct: float
    max_per_trade_nav_pct: float | None
    base_weights: dict[str, float]
    sizing_multipliers: dict[str, dict[str, float]]
    hybrid_weight_modifiers: dict[str, dict[str, dict[str, float]]]
    vol_thresholds: dict[str, float]
    vol_confirmation: VolConfirmation = Field(description="the same for every tier: the config has no per-tier form")
    idle_target: dict[str, float]
    hmm: dict[str, Any]
    vocabulary: Vocabulary
