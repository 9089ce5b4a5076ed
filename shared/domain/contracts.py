"""Message contracts: every field that crosses the bus is defined and documented here, once.

Payloads are msgpack maps carrying ``kind`` (which struct) and ``v`` (schema
version). They are decoded once, at the edge, into the frozen dataclasses
below; handlers never see raw dicts. Decoding checks types, refuses NaN and
infinity in every float, and runs the struct's own ``check`` for the rules
types cannot express (high >= low, aligned timestamps, ...). Anything refused
raises :class:`ContractError`, whose reason goes to the dead-letter subject.

Units: timestamps are integer ms since the epoch, UTC; a candle's ``ts`` is its
open time. Volatilities are bar-level standard deviations of log returns.
"""

from __future__ import annotations

import hashlib
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union

from shared.domain.errors import ContractError
from shared.domain.subjects import SeriesKey, check_exchange, timeframe_ms
from shared.domain.vocab import HMM_LABELS, SCORE_COMPONENTS, VOL_LABELS, DepthTier, HmmLabel, VolLabel

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 64 * 1024



class _PerSeries:
    """What every message about one series shares: its ``key``, and the checks of the series fields."""

    __slots__ = ()
    exchange: str
    symbol: str
    timeframe: str

    @property
    def key(self) -> SeriesKey:
        return SeriesKey(self.exchange, self.symbol, self.timeframe)

    def check(self) -> None:
        check_exchange(self.exchange)
        timeframe_ms(self.timeframe)
        self.key.token  # noqa: B018 - raises when the symbol cannot be carried
        self._check()

    def _check(self) -> None:
        """The message's own rules, beyond the series fields."""


@dataclass(frozen=True, slots=True)
class Candle(_PerSeries):
    """One closed OHLCV bar. Idempotent by (exchange, symbol, timeframe, ts)."""

    KIND: ClassVar[str] = "candle"
    exchange: str  # ccxt exchange id, lowercase ("kraken"; "demo" for the demo market)
    symbol: str  # display form, "BTC/USD"
    timeframe: str  # a key of shared.domain.subjects.TIMEFRAMES_MS
    ts: int  # bar open time, ms UTC, a multiple of the timeframe
    open: float  # price, > 0
    high: float  # price, >= max(open, close)
    low: float  # price, > 0, <= min(open, close)
    close: float  # price, > 0
    volume: float  # base-asset units, >= 0
    v: int = SCHEMA_VERSION

    @property
    def msg_id(self) -> str:
        """JetStream ``Nats-Msg-Id``: the candle's idempotency key."""
        return f"{self.key.token}.{self.ts}"

    def _check(self) -> None:
        if self.ts < 0 or self.ts % timeframe_ms(self.timeframe):
            raise ContractError(f"ts {self.ts} is not aligned to {self.timeframe}")
        if min(self.open, self.high, self.low, self.close) <= 0:
            raise ContractError("price <= 0")
        if self.high < self.low:
            raise ContractError(f"high {self.high} < low {self.low}")
        for name in ("open", "close"):
            value = getattr(self, name)
            if not self.low <= value <= self.high:
                raise ContractError(f"{name} {value} outside [low {self.low}, high {self.high}]")
        if self.volume < 0:
            raise ContractError(f"volume {self.volume} < 0")


@dataclass(frozen=True, slots=True)
class VolRegimeEvent(_PerSeries):
    """vol_regime's verdict for one series after one candle (seed 000 §2)."""

    KIND: ClassVar[str] = "vol_regime"
    exchange: str
    symbol: str
    timeframe: str
    ts: int  # open time of the candle this verdict follows
    close: float  # that candle's close, so consumers of regimes need not re-read candles
    label: VolLabel
    vol_short: float  # EWMA std of log returns over the short window, bar level; 0 until enough data
    vol_long: float  # same over the long window
    ratio: float  # vol_short / vol_long; 1.0 while there is not enough data
    prev_label: VolLabel | None  # label after the previous candle; None for the first
    changed: bool  # label != prev_label (False for the first)
    samples: int  # log returns seen so far for this series
    sufficient: bool  # whether samples covered the long window (else the seed's "normal with zeros")
    # label, prev_label and changed are the confirmed label (hysteresis band + confirm_bars), what the stack acts on.
    raw_label: VolLabel | None = None  # the plain threshold label of ratio this bar; None in events before it
    pending_label: VolLabel | None = None  # cleared the band, waiting to lead confirm_bars bars; None: nothing waits
    v: int = SCHEMA_VERSION

    def _check(self) -> None:
        if min(self.vol_short, self.vol_long, self.ratio) < 0:
            raise ContractError("negative volatility or ratio")


@dataclass(frozen=True, slots=True)
class HmmRegimeEvent(_PerSeries):
    """hmm_regime's verdict for one series after one candle (seed 003)."""

    KIND: ClassVar[str] = "hmm_regime"
    exchange: str
    symbol: str
    timeframe: str
    ts: int  # open time of the candle this verdict follows
    regime: HmmLabel
    probabilities: tuple[float, float, float]  # (bearish, ranging, bullish), sum 1
    confidence: float  # top probability minus the second, in [0, 1]
    bias_signal: float  # (p_bull - p_bear) * gain, clipped to [-1, 1]; 0 under the confidence threshold
    observation_count: int  # candles the detector has filtered since it was trained
    trained: bool  # False: the model is not trained yet and the verdict is the neutral default
    trained_at: int | None  # ms UTC of the last successful training, None if never
    # regime, confidence and bias_signal are what the stack acts on: the confirmed regime (HMM_CONFIRM_BARS),
    # depth-scaled confidence and bias (HMM_DEPTH_SCALING). Absent (None) in events written before them.
    raw_regime: HmmLabel | None = None  # the filter's top label this bar, before confirmation
    raw_confidence: float | None = None  # top minus second probability before the depth factor, in [0, 1]
    depth_tier: DepthTier | None = None  # shallow / moderate / deep by training_candles; None untrained
    training_candles: int | None = None  # candles in the model's training window, bars
    label_agreement: float | None = None  # previous vs this model's Viterbi labels on its window, 0..1; None first
    v: int = SCHEMA_VERSION

    def _check(self) -> None:
        if any(p < 0 or p > 1 for p in self.probabilities):
            raise ContractError("probability outside [0, 1]")
        if abs(sum(self.probabilities) - 1.0) > 1e-6:
            raise ContractError(f"probabilities sum to {sum(self.probabilities)}, not 1")
        if not -1.0 <= self.bias_signal <= 1.0:
            raise ContractError(f"bias_signal {self.bias_signal} outside [-1, 1]")


@dataclass(frozen=True, slots=True)
class ScoreEvent(_PerSeries):
    """An external score for one series, published by whoever computes it (carry, expectancy, router)."""

    KIND: ClassVar[str] = "score"
    component: str  # one of SCORE_COMPONENTS
    exchange: str
    symbol: str
    timeframe: str
    ts: int  # ms UTC the score refers to
    score: float  # in [-1, 1]; positive favours the trade
    v: int = SCHEMA_VERSION

    def _check(self) -> None:
        if self.component not in SCORE_COMPONENTS:
            raise ContractError(f"unknown score component {self.component!r}")
        if not -1.0 <= self.score <= 1.0:
            raise ContractError(f"score {self.score} outside [-1, 1]")


@dataclass(frozen=True, slots=True)
class GridBias:
    """Grid spacing advice from the HMM (seed 003 §2.3 option B). Neutral: 1.0, 1.0, None."""

    mode: Literal["symmetric", "long_bias", "short_bias"]
    entry_spacing_mult_a: float  # multiplier on sell-side (A) entry spacing
    entry_spacing_mult_b: float  # multiplier on buy-side (B) entry spacing
    size_skew_override: float | None  # inventory skew in [-1, 1] to force, None = leave the rebalancer's


@dataclass(frozen=True, slots=True)
class ScreenerDecision(_PerSeries):
    """The screener's decision for one series after one candle, with every input it used (seed 000 §3)."""

    KIND: ClassVar[str] = "screener_decision"
    exchange: str
    symbol: str
    timeframe: str
    ts: int  # open time of the candle decided on
    close: float  # that candle's close
    tier: str  # CORE / SATELLITE / TACTICAL / ALT-EXT, from the universe
    vol_regime: VolLabel
    vol_short: float
    vol_long: float
    vol_ratio: float
    sizing_multiplier: float  # sizing_multipliers[tier][vol_regime]; 1.0 when config is missing
    base_per_trade_nav_pct: float  # fraction of NAV, e.g. 0.02
    effective_per_trade_nav_pct: float  # base x multiplier, then capped
    capped: bool  # whether the cap cut effective_per_trade_nav_pct
    weights: dict[str, float]  # trend/carry/expectancy/router after regime modifiers, normalised to 1
    scores: dict[str, float]  # trend/carry/expectancy/router inputs, each in [-1, 1]
    defaulted: tuple[str, ...]  # components with no published score (their score is neutral 0)
    hybrid_score: float  # sum of weights x scores
    trend_score: float  # EMA-spread trend score in [-1, 1] (also scores["trend"])
    hmm_regime: HmmLabel | None  # None when the HMM is disabled
    hmm_bias: float  # bias used in the blend (0 when disabled or untrained)
    hmm_confidence: float
    blend_factor: float  # HMM_BLEND_WITH_TREND in force; 1.0 = shadow mode
    dynamic_idle_target: float  # blended idle target, fraction of NAV
    grid_bias: GridBias
    # The HMM verdict joined, so a reader needs no other event of the candle (absent in older decisions).
    hmm_trained: bool = False  # whether that verdict came from a trained model
    hmm_probabilities: tuple[float, float, float] | None = None  # (bearish, ranging, bullish); None without HMM
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class PipelineStatus(_PerSeries):
    """ingest's data-pipeline report for one series (seed 003 §2.6 ``hmm_data_pipeline``)."""

    KIND: ClassVar[str] = "pipeline_status"
    exchange: str
    symbol: str
    timeframe: str
    source: str  # "demo", "replay", "exchange"
    interval_min: int  # bar length, minutes
    sync_interval_sec: float  # how often the source is polled, s
    samples: int  # candles held in stream OHLCV for this series
    coverage_pct: float  # samples / candles the retention window could hold, 0..100
    last_ts: int | None  # open time of the newest published candle, ms
    freshness_sec: float | None  # now - close time of the newest candle, s
    freshness_limit_sec: float  # max(180, 3 x interval), s
    freshness_ok: bool
    gaps: int  # missing bars detected inside the retained range
    backfill_last_at: int | None  # ms UTC of the last backfill run
    backfill_last_rows: int | None  # candles that run published
    backfill_last_message: str | None
    last_error: str | None  # last exchange error, cleared by the next success
    reported_at: int  # ms UTC
    v: int = SCHEMA_VERSION


MAX_BATCH_BARS = 200  # per batch message; keeps a batch of events under MAX_PAYLOAD_BYTES

Bar = tuple[int, float, float, float, float, float]  # (ts ms, open, high, low, close, volume)


@dataclass(frozen=True, slots=True)
class CandleBatch(_PerSeries):
    """Consecutive closed bars of one series in one message: what bulk work (import, backfill) publishes.

    Idempotent per candle, like single candles: a consumer skips every bar not
    newer than the last it applied, so overlapping batches are harmless.
    """

    KIND: ClassVar[str] = "candle_batch"
    exchange: str
    symbol: str
    timeframe: str
    bars: tuple[Bar, ...]  # 1..MAX_BATCH_BARS bars, ts strictly increasing; each bar follows Candle's rules
    v: int = SCHEMA_VERSION

    @classmethod
    def of(cls, candles: Sequence[Candle]) -> CandleBatch:
        first = candles[0]
        bars = tuple((c.ts, c.open, c.high, c.low, c.close, c.volume) for c in candles)
        return cls(first.exchange, first.symbol, first.timeframe, bars)

    @property
    def msg_id(self) -> str:
        return f"{self.key.token}.{self.bars[0][0]}-{self.bars[-1][0]}"

    def candles(self) -> list[Candle]:
        ex, sym, tf = self.exchange, self.symbol, self.timeframe
        return [Candle(ex, sym, tf, *bar) for bar in self.bars]

    def _check(self) -> None:
        if not 1 <= len(self.bars) <= MAX_BATCH_BARS:
            raise ContractError(f"a batch holds 1..{MAX_BATCH_BARS} bars, got {len(self.bars)}")
        last = None
        for i, candle in enumerate(self.candles()):
            try:
                for value in (candle.open, candle.high, candle.low, candle.close, candle.volume):
                    if not math.isfinite(value):
                        raise ContractError(f"{value} is not finite")
                candle._check()
            except ContractError as exc:
                raise ContractError(f"bars[{i}]: {exc.reason}") from None
            if last is not None and candle.ts <= last:
                raise ContractError(f"bars[{i}]: ts {candle.ts} not after {last}")
            last = candle.ts


class _EventBatch(_PerSeries):
    """What the vol and HMM batches share: events of their own series, in increasing ts."""

    __slots__ = ()
    events: tuple[Any, ...]

    @property
    def span(self) -> str:
        """``token.first-last``: with the kind, the batch's idempotency key."""
        return f"{self.key.token}.{self.events[0].ts}-{self.events[-1].ts}"

    def _check(self) -> None:
        if not 1 <= len(self.events) <= MAX_BATCH_BARS:
            raise ContractError(f"a batch holds 1..{MAX_BATCH_BARS} events, got {len(self.events)}")
        last = None
        for i, event in enumerate(self.events):
            if event.key != self.key:
                raise ContractError(f"events[{i}] is for {event.key.id}, not {self.key.id}")
            try:
                event.check()
            except ContractError as exc:
                raise ContractError(f"events[{i}]: {exc.reason}") from None
            if last is not None and event.ts <= last:
                raise ContractError(f"events[{i}]: ts {event.ts} not after {last}")
            last = event.ts


@dataclass(frozen=True, slots=True)
class VolRegimeBatch(_EventBatch):
    """vol_regime's events for one candle batch, in one message (bulk work; live candles get single events)."""

    KIND: ClassVar[str] = "vol_regime_batch"
    exchange: str
    symbol: str
    timeframe: str
    events: tuple[VolRegimeEvent, ...]
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class HmmRegimeBatch(_EventBatch):
    """hmm_regime's events for (part of) one candle batch, in one message."""

    KIND: ClassVar[str] = "hmm_regime_batch"
    exchange: str
    symbol: str
    timeframe: str
    events: tuple[HmmRegimeEvent, ...]
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class ScreenerDecisionBatch(_EventBatch):
    """The screener's decisions completed by one message it handled, for one series (bulk work).

    At most DECISIONS_PER_BATCH per message; a live candle's decision comes alone, as a ScreenerDecision.
    """

    KIND: ClassVar[str] = "screener_decision_batch"
    exchange: str
    symbol: str
    timeframe: str
    events: tuple[ScreenerDecision, ...]
    v: int = SCHEMA_VERSION


DECISIONS_PER_BATCH = 64  # a decision is about 0.8 kB: 64 keep a batch well under MAX_PAYLOAD_BYTES
HMM_EVENTS_PER_BATCH = 100  # an HMM event is up to ~0.45 kB (a 64-character symbol): 100 stay under it too
_BATCH_OF: dict[type[Any], type[Any]] = {
    VolRegimeEvent: VolRegimeBatch,
    HmmRegimeEvent: HmmRegimeBatch,
    ScreenerDecision: ScreenerDecisionBatch,
}


def batch_of(events: Sequence[Any]) -> Any:
    """The batch message carrying ``events`` (all of one series and one kind)."""
    first = events[0]
    return _BATCH_OF[type(first)](first.exchange, first.symbol, first.timeframe, tuple(events))


def as_messages(events: Sequence[Any], per_message: int) -> list[Any]:
    """``events`` of one series as messages: a lone event stays itself, more go in batches of ``per_message``."""
    if len(events) == 1:
        return [events[0]]
    return [batch_of(events[i : i + per_message]) for i in range(0, len(events), per_message)]


def candles_in(msg: Any) -> list[Candle]:
    """The candles a Candle or a CandleBatch carries."""
    return msg.candles() if isinstance(msg, CandleBatch) else [msg]


def events_in(msg: Any) -> list[Any]:
    """The events a single event or an event batch carries."""
    return list(msg.events) if isinstance(msg, _EventBatch) else [msg]


DEAD_LETTER_PAYLOAD_BYTES = 4096  # of the original kept in a letter; the rest is named by size and hash
DEAD_LETTER_TEXT_CHARS = 1024  # reason and subject


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message a service refused, kept with its reason; bounded in size whatever the original's."""

    KIND: ClassVar[str] = "dead_letter"
    service: str
    reason: str  # at most DEAD_LETTER_TEXT_CHARS
    subject: str  # where the original arrived (at most DEAD_LETTER_TEXT_CHARS)
    payload: bytes  # the original's first DEAD_LETTER_PAYLOAD_BYTES bytes, untouched
    received_at: int  # ms UTC
    payload_size: int = -1  # bytes of the whole original; -1 in letters written before it was recorded
    payload_sha256: str = ""  # hex digest of the whole original
    v: int = SCHEMA_VERSION

    @classmethod
    def of(cls, service: str, reason: str, subject: str, payload: bytes, received_at: int) -> DeadLetter:
        """A letter for ``payload``, truncated to the bounds above."""
        return cls(
            service,
            _clip(reason),
            _clip(subject),
            bytes(payload[:DEAD_LETTER_PAYLOAD_BYTES]),
            received_at,
            len(payload),
            hashlib.sha256(payload).hexdigest(),
        )

    @property
    def truncated(self) -> bool:
        return self.payload_size > len(self.payload)

    def check(self) -> None:
        return None


def _clip(text: str) -> str:
    return text if len(text) <= DEAD_LETTER_TEXT_CHARS else text[: DEAD_LETTER_TEXT_CHARS - 1] + "…"


# Candles dated before this are refused as nonsense (1980-01-01, ms UTC): a zero or a seconds-for-ms mix-up.
TS_FLOOR_MS = 315_532_800_000


def time_problem(msg: Any, now_ms: int, tolerance_ms: int) -> str | None:
    """Why a candle's ``ts`` cannot be real, or None: before TS_FLOOR_MS, or after now + one timeframe + tolerance.

    One candle dated in the far future would otherwise become every consumer's
    "last applied" and freeze its series for good. A batch is judged by its
    first and last bar (its ts increase).
    """
    if isinstance(msg, CandleBatch):
        first, last = msg.bars[0][0], msg.bars[-1][0]
    elif isinstance(msg, Candle):
        first = last = msg.ts
    else:
        return None
    if first < TS_FLOOR_MS:
        return f"ts {first} is before {TS_FLOOR_MS} (1980-01-01)"
    limit = now_ms + timeframe_ms(msg.timeframe) + tolerance_ms
    if last > limit:
        return f"ts {last} is in the future (beyond now + one {msg.timeframe} bar + {tolerance_ms} ms = {limit})"
    return None


Message = Union[  # noqa: UP007 - a runtime union used for registry typing
    Candle, CandleBatch, VolRegimeEvent, VolRegimeBatch, HmmRegimeEvent, HmmRegimeBatch, ScoreEvent,
    ScreenerDecision, ScreenerDecisionBatch, PipelineStatus, DeadLetter,
]
MESSAGE_TYPES: dict[str, type[Any]] = {cls.KIND: cls for cls in typing.get_args(Message)}


# The codec needs the types above; it is re-exported here so that every reader imports from one place.
from shared.domain.codec import decode, encode, from_plain, to_plain  # noqa: E402

__all__ = [
    "HMM_LABELS",
    "MAX_PAYLOAD_BYTES",
    "MESSAGE_TYPES",
    "SCHEMA_VERSION",
    "SCORE_COMPONENTS",
    "VOL_LABELS",
    "Candle",
    "ContractError",
    "DeadLetter",
    "GridBias",
    "HmmRegimeEvent",
    "Message",
    "PipelineStatus",
    "ScoreEvent",
    "ScreenerDecision",
    "VolRegimeEvent",
    "decode",
    "encode",
    "from_plain",
    "to_plain",
]
