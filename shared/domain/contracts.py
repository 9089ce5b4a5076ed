"""Message contracts: every field that crosses the bus is defined and documented here, once.

Payloads are msgpack maps carrying ``kind`` (which struct: the msgspec tag) and
``v`` (schema version). They are decoded once, at the edge, into the frozen
msgspec Structs below; handlers never see raw dicts. A contract is checked
whenever one is made, decoded or built in code (``__post_init__``, which msgspec
runs on decode too): types, no NaN or infinity in any float, the series fields,
and the struct's own rules (high >= low, aligned timestamps, ...). Anything
refused raises :class:`ContractError`, whose reason goes to the dead-letter subject.

The control plane's contracts (the backfill request and reply, the heartbeat)
are in :mod:`shared.domain.control`.

Units: timestamps are integer ms since the epoch, UTC; a candle's ``ts`` is its
open time. Volatilities are bar-level standard deviations of log returns.
"""

from __future__ import annotations

import hashlib
import math
import typing
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Union

import msgspec
import msgspec.inspect

from shared.domain.errors import ContractError
from shared.domain.finite import FinitePlan, NonFinite, check_finite
from shared.domain.subjects import SeriesKey, check_exchange, encode_symbol, timeframe_ms
from shared.domain.vocab import HMM_LABELS, SCORE_COMPONENTS, VOL_LABELS, DepthTier, HmmLabel, VolLabel

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 64 * 1024



class _Contract(msgspec.Struct, frozen=True):
    """A frozen struct that is checked whenever one is made: decoded (msgspec runs ``__post_init__``) or built."""

    _finite: ClassVar[FinitePlan | None] = None  # where its floats are: made on a class's first check

    def __post_init__(self) -> None:
        check_finite(self)
        self._check()

    def check(self) -> None:
        """Check again (a struct is checked when made; this is for callers that want to say so)."""
        self.__post_init__()

    def _check(self) -> None:
        """The rules types cannot express."""


class _Message(_Contract, tag_field="kind", frozen=True):
    """A message on the bus: its msgspec tag is its ``kind``, written first in every map."""

    KIND: ClassVar[str]  # the tag, set below for every message type


class _PerSeries(_Message, frozen=True):
    """What every message about one series shares: its ``key``, and the checks of the series fields."""

    if TYPE_CHECKING:  # fields of every subclass (declared there, where their order on the wire is)
        exchange: str
        symbol: str
        timeframe: str

    @property
    def key(self) -> SeriesKey:
        return SeriesKey(self.exchange, self.symbol, self.timeframe)

    def _check(self) -> None:
        _check_series(self.exchange, self.symbol, self.timeframe)
        self._rules()

    def _rules(self) -> None:
        """The message's own rules, beyond the series fields."""


@lru_cache(maxsize=1 << 16)  # every message names its series: the verdict on a good one is worth remembering
def _check_series(exchange: str, symbol: str, timeframe: str) -> None:
    check_exchange(exchange)
    timeframe_ms(timeframe)
    encode_symbol(symbol)  # raises when the symbol cannot be carried


def _bar_problem(
    ts: int, open_: float, high: float, low: float, close: float, volume: float, timeframe: str
) -> str | None:
    """Why a bar breaks the candle rules, or None: the one statement of them, for Candle and CandleBatch."""
    usual = 0 < low <= open_ <= high and low <= close <= high and volume >= 0 and ts >= 0  # one test, mostly
    if usual and not ts % timeframe_ms(timeframe):
        return None
    if ts < 0 or ts % timeframe_ms(timeframe):
        return f"ts {ts} is not aligned to {timeframe}"
    if open_ <= 0 or high <= 0 or low <= 0 or close <= 0:
        return "price <= 0"
    if high < low:
        return f"high {high} < low {low}"
    if not low <= open_ <= high:
        return f"open {open_} outside [low {low}, high {high}]"
    if not low <= close <= high:
        return f"close {close} outside [low {low}, high {high}]"
    if volume < 0:
        return f"volume {volume} < 0"
    return None


class Candle(_PerSeries, tag="candle", frozen=True):
    """One closed OHLCV bar. Idempotent by (exchange, symbol, timeframe, ts)."""

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

    def _rules(self) -> None:
        problem = _bar_problem(self.ts, self.open, self.high, self.low, self.close, self.volume, self.timeframe)
        if problem is not None:
            raise ContractError(problem)


class VolRegimeEvent(_PerSeries, tag="vol_regime", frozen=True):
    """vol_regime's verdict for one series after one candle (seed 000 §2)."""

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

    def _rules(self) -> None:
        if min(self.vol_short, self.vol_long, self.ratio) < 0:
            raise ContractError("negative volatility or ratio")


class HmmRegimeEvent(_PerSeries, tag="hmm_regime", frozen=True):
    """hmm_regime's verdict for one series after one candle (seed 003)."""

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

    def _rules(self) -> None:
        if any(p < 0 or p > 1 for p in self.probabilities):
            raise ContractError("probability outside [0, 1]")
        if abs(sum(self.probabilities) - 1.0) > 1e-6:
            raise ContractError(f"probabilities sum to {sum(self.probabilities)}, not 1")
        if not -1.0 <= self.bias_signal <= 1.0:
            raise ContractError(f"bias_signal {self.bias_signal} outside [-1, 1]")


class ScoreEvent(_PerSeries, tag="score", frozen=True):
    """An external score for one series, published by whoever computes it (carry, expectancy, router)."""

    component: str  # one of SCORE_COMPONENTS
    exchange: str
    symbol: str
    timeframe: str
    ts: int  # ms UTC the score refers to
    score: float  # in [-1, 1]; positive favours the trade
    v: int = SCHEMA_VERSION

    def _rules(self) -> None:
        if self.component not in SCORE_COMPONENTS:
            raise ContractError(f"unknown score component {self.component!r}")
        if not -1.0 <= self.score <= 1.0:
            raise ContractError(f"score {self.score} outside [-1, 1]")


class GridBias(_Contract, frozen=True):
    """Grid spacing advice from the HMM (seed 003 §2.3 option B). Neutral: 1.0, 1.0, None."""

    mode: Literal["symmetric", "long_bias", "short_bias"]
    entry_spacing_mult_a: float  # multiplier on sell-side (A) entry spacing
    entry_spacing_mult_b: float  # multiplier on buy-side (B) entry spacing
    size_skew_override: float | None  # inventory skew in [-1, 1] to force, None = leave the rebalancer's


class DecisionConsensus(_Contract, frozen=True):
    """The symbol's consensus a decision was made on (``consensus.screener``): its timeframes' HMM verdicts as of
    the bar's close (shared.domain.consensus), with the confidence the grid bias was held to."""

    regime: HmmLabel  # the regime with the most voting weight; RANGING on a tie or with no vote
    agreement: float  # share of the voting weight behind ``regime``, a fraction in [0, 1]
    bias: float  # weight-averaged bias_signal of the voting timeframes, in [-1, 1]; the blend's and grid's bias
    confidence: float  # agreement x the voting timeframes' weight-averaged confidence, in [0, 1]
    voting: tuple[str, ...]  # timeframes that voted (trained, weight > 0), shortest first
    dissenting: tuple[str, ...]  # voting timeframes whose regime is not ``regime``
    untrained: tuple[str, ...]  # timeframes whose model was not trained yet
    absent: tuple[str, ...]  # timeframes with no bar in the bucket closed by then (a gap in the base candles)
    as_of: dict[str, int]  # timeframe -> open time (ms) of the bar whose verdict was counted


class ScreenerDecision(_PerSeries, tag="screener_decision", frozen=True):
    """The screener's decision for one series after one candle, with every input it used (seed 000 §3)."""

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
    # With ``consensus.screener``: the consensus hmm_bias and grid_bias came from; None: the series' own verdict.
    consensus: DecisionConsensus | None = None
    v: int = SCHEMA_VERSION


class PipelineStatus(_PerSeries, tag="pipeline_status", frozen=True):
    """ingest's data-pipeline report for one series (seed 003 §2.6 ``hmm_data_pipeline``)."""

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


class CandleBatch(_PerSeries, tag="candle_batch", frozen=True):
    """Consecutive closed bars of one series in one message: what bulk work (import, backfill) publishes.

    Idempotent per candle, like single candles: a consumer skips every bar not
    newer than the last it applied, so overlapping batches are harmless.
    """

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

    def __post_init__(self) -> None:
        for i, bar in enumerate(self.bars):  # floats first, as for every struct; a bar is a tuple, not a struct
            if len(bar) == 6 and not math.isfinite(bar[1] + bar[2] + bar[3] + bar[4] + bar[5]):
                for k in range(1, 6):
                    if not math.isfinite(bar[k]):
                        raise NonFinite(type(self).__name__, f".bars[{i}][{k}]", bar[k])
        super().__post_init__()

    def _rules(self) -> None:
        if not 1 <= len(self.bars) <= MAX_BATCH_BARS:
            raise ContractError(f"a batch holds 1..{MAX_BATCH_BARS} bars, got {len(self.bars)}")
        last = None
        timeframe = self.timeframe
        for i, (ts, open_, high, low, close, volume) in enumerate(self.bars):
            problem = _bar_problem(ts, open_, high, low, close, volume, timeframe)
            if problem is not None:
                raise ContractError(f"bars[{i}]: {problem}")
            if last is not None and ts <= last:
                raise ContractError(f"bars[{i}]: ts {ts} not after {last}")
            last = ts


class _EventBatch(_PerSeries, frozen=True):
    """What the vol, HMM and decision batches share: events of their own series, in increasing ts.

    Each event was checked when it was made (decoded, or built by its service);
    the batch checks what only it can see: their series and their order.
    """

    if TYPE_CHECKING:
        events: tuple[Any, ...]

    @property
    def span(self) -> str:
        """``token.first-last``: with the kind, the batch's idempotency key."""
        return f"{self.key.token}.{self.events[0].ts}-{self.events[-1].ts}"

    def _rules(self) -> None:
        if not 1 <= len(self.events) <= MAX_BATCH_BARS:
            raise ContractError(f"a batch holds 1..{MAX_BATCH_BARS} events, got {len(self.events)}")
        last = None
        series = (self.exchange, self.symbol, self.timeframe)
        for i, event in enumerate(self.events):
            if (event.exchange, event.symbol, event.timeframe) != series:
                raise ContractError(f"events[{i}] is for {event.key.id}, not {self.key.id}")
            if last is not None and event.ts <= last:
                raise ContractError(f"events[{i}]: ts {event.ts} not after {last}")
            last = event.ts


class VolRegimeBatch(_EventBatch, tag="vol_regime_batch", frozen=True):
    """vol_regime's events for one candle batch, in one message (bulk work; live candles get single events)."""

    exchange: str
    symbol: str
    timeframe: str
    events: tuple[VolRegimeEvent, ...]
    v: int = SCHEMA_VERSION


class HmmRegimeBatch(_EventBatch, tag="hmm_regime_batch", frozen=True):
    """hmm_regime's events for (part of) one candle batch, in one message."""

    exchange: str
    symbol: str
    timeframe: str
    events: tuple[HmmRegimeEvent, ...]
    v: int = SCHEMA_VERSION


class ScreenerDecisionBatch(_EventBatch, tag="screener_decision_batch", frozen=True):
    """The screener's decisions completed by one message it handled, for one series (bulk work).

    At most DECISIONS_PER_BATCH per message; a live candle's decision comes alone, as a ScreenerDecision.
    """

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


def candle_count(msg: Any) -> int:
    """How many candles a Candle or a CandleBatch carries (without building them)."""
    return len(msg.bars) if isinstance(msg, CandleBatch) else 1


def events_in(msg: Any) -> list[Any]:
    """The events a single event or an event batch carries."""
    return list(msg.events) if isinstance(msg, _EventBatch) else [msg]


DEAD_LETTER_PAYLOAD_BYTES = 4096  # of the original kept in a letter; the rest is named by size and hash
DEAD_LETTER_TEXT_CHARS = 1024  # reason and subject


class DeadLetter(_Message, tag="dead_letter", frozen=True):
    """A message a service refused, kept with its reason; bounded in size whatever the original's."""

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
for _cls in typing.get_args(Message):
    _cls.KIND = _cls.__struct_config__.tag
MESSAGE_TYPES: dict[str, type[Any]] = {cls.KIND: cls for cls in typing.get_args(Message)}


# The codec needs the types above; it is re-exported here so that every reader imports from one place.
from shared.domain.codec import decode, decode_json, encode, encode_json, from_plain, to_plain  # noqa: E402

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
    "NonFinite",
    "PipelineStatus",
    "ScoreEvent",
    "ScreenerDecision",
    "VolRegimeEvent",
    "decode",
    "decode_json",
    "encode",
    "encode_json",
    "from_plain",
    "to_plain",
]
