"""Subject names, stream names, KV buckets and symbol encoding: the bus's address book.

Every name the stack puts on NATS or in Redis is built here, under an optional
namespace so that two stacks (paper and live, or two tests) can share one NATS
and one Redis without seeing each other's messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from shared.domain.errors import ConfigError, ContractError
from shared.domain.vocab import TIMEFRAMES_MS

_EXCHANGE_RE = re.compile(r"^[a-z0-9]{1,32}$")
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_]{0,32}$")
_PLAIN = re.compile(r"[A-Za-z0-9]")
_SUBJECT_ROOTS = frozenset({"ohlcv", "regime", "scores", "screener", "telemetry", "dlq", "control"})
_TOKEN_RE = re.compile(r"^(?:[A-Za-z0-9-]|_[0-9A-F]{2})+$")


def timeframe_ms(timeframe: str) -> int:
    """Bar length of ``timeframe`` in ms; ContractError for a timeframe we do not carry."""
    try:
        return TIMEFRAMES_MS[timeframe]
    except KeyError:
        raise ContractError(f"unknown timeframe {timeframe!r}") from None


def bar_close(ts: int, timeframe: str) -> int:
    """When the bar of ``timeframe`` opening at ``ts`` (ms UTC) closes, ms UTC."""
    return ts + timeframe_ms(timeframe)


@lru_cache(maxsize=1 << 16)  # every message names its series: pure, and worth remembering
def encode_symbol(symbol: str) -> str:
    """``BTC/USD`` -> ``BTC-USD``: a token valid in a NATS subject and a KV key.

    ``/`` becomes ``-``; any other character that is not a letter or digit
    becomes ``_`` plus two hex digits (``ETH/USDT:USDT`` -> ``ETH-USDT_3AUSDT``),
    so the encoding is reversible.
    """
    if not symbol or len(symbol) > 64:
        raise ContractError(f"symbol must be 1..64 characters, got {symbol!r}")
    out: list[str] = []
    for ch in symbol:
        if ch == "/":
            out.append("-")
        elif _PLAIN.match(ch):
            out.append(ch)
        elif ord(ch) < 256 and not ch.isspace():
            out.append(f"_{ord(ch):02X}")
        else:
            raise ContractError(f"symbol {symbol!r} holds a character that cannot be carried: {ch!r}")
    return "".join(out)


@lru_cache(maxsize=1 << 16)
def decode_symbol(token: str) -> str:
    """Inverse of :func:`encode_symbol`."""
    if not _TOKEN_RE.match(token):
        raise ContractError(f"not an encoded symbol: {token!r}")
    out: list[str] = []
    i = 0
    while i < len(token):
        ch = token[i]
        if ch == "-":
            out.append("/")
            i += 1
        elif ch == "_":
            out.append(chr(int(token[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def check_exchange(exchange: str) -> str:
    if not _EXCHANGE_RE.match(exchange):
        raise ContractError(f"exchange id must be lowercase letters and digits, got {exchange!r}")
    return exchange


@dataclass(frozen=True, slots=True, order=True)
class SeriesKey:
    """One candle series: an exchange's symbol at one timeframe."""

    exchange: str
    symbol: str  # display form, e.g. "BTC/USD"
    timeframe: str

    @property
    def token(self) -> str:
        """``kraken.BTC-USD.1m``: the subject suffix, also the KV key of this series."""
        return f"{self.exchange}.{encode_symbol(self.symbol)}.{self.timeframe}"

    @property
    def symbol_token(self) -> str:
        """``kraken.BTC-USD``: the symbol's series of every timeframe share it (the consensus keys, partitions)."""
        return f"{self.exchange}.{encode_symbol(self.symbol)}"

    @property
    def id(self) -> str:
        """``kraken:BTC/USD:1m``: how the API and logs name the series."""
        return f"{self.exchange}:{self.symbol}:{self.timeframe}"

    @classmethod
    def from_token(cls, token: str) -> SeriesKey:
        parts = token.split(".")
        if len(parts) != 3:
            raise ContractError(f"series token needs exchange.symbol.timeframe, got {token!r}")
        exchange, sym, tf = parts
        check_exchange(exchange)
        timeframe_ms(tf)
        return cls(exchange, decode_symbol(sym), tf)


@lru_cache(maxsize=1 << 16)  # asked of every message a consumer fetches, twice: pure, and worth remembering
def _series_of(subject: str) -> SeriesKey:
    return SeriesKey.from_token(".".join(subject.split(".")[-3:]))


@lru_cache(maxsize=1 << 16)
def fnv1a(token: str) -> int:
    """32-bit FNV-1a of a string: a stable hash (Python's ``hash`` is salted per process)."""
    h = 2166136261
    for b in token.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


@dataclass(frozen=True, slots=True)
class Names:
    """Every NATS subject, stream, KV bucket and Redis key of one stack."""

    namespace: str = ""

    def __post_init__(self) -> None:
        if not _NAMESPACE_RE.match(self.namespace):
            raise ConfigError("REGIMES_NAMESPACE", "letters, digits and _ only, at most 32")
        if self.namespace in _SUBJECT_ROOTS:
            # "ohlcv.ohlcv.…" would match the default stack's "ohlcv.>": the two would see each other.
            raise ConfigError("REGIMES_NAMESPACE", f"{self.namespace!r} is a subject root; choose another name")

    def _s(self, subject: str) -> str:
        return f"{self.namespace}.{subject}" if self.namespace else subject

    def _n(self, name: str) -> str:
        return f"{self.namespace}_{name}" if self.namespace else name

    # --- subjects -------------------------------------------------------
    def ohlcv(self, key: SeriesKey) -> str:
        return self._s(f"ohlcv.{key.token}")

    def vol(self, key: SeriesKey) -> str:
        return self._s(f"regime.vol.{key.token}")

    def hmm(self, key: SeriesKey) -> str:
        return self._s(f"regime.hmm.{key.token}")

    def score(self, component: str, key: SeriesKey) -> str:
        return self._s(f"scores.{component}.{key.token}")

    def screener(self, key: SeriesKey) -> str:
        return self._s(f"screener.{key.token}")

    def pipeline(self, key: SeriesKey) -> str:
        """Ingest's per-series data-pipeline telemetry (freshness, coverage, backfill)."""
        return self._s(f"telemetry.pipeline.{key.token}")

    def dlq(self, service: str) -> str:
        return self._s(f"dlq.{service}")

    def control(self, verb: str) -> str:
        """Request/reply subjects for operator commands, e.g. ``control.backfill``."""
        return self._s(f"control.{verb}")

    @property
    def ohlcv_all(self) -> str:
        return self._s("ohlcv.>")

    @property
    def vol_all(self) -> str:
        return self._s("regime.vol.>")

    @property
    def hmm_all(self) -> str:
        return self._s("regime.hmm.>")

    @property
    def scores_all(self) -> str:
        return self._s("scores.>")

    @property
    def screener_all(self) -> str:
        return self._s("screener.>")

    @property
    def pipeline_all(self) -> str:
        return self._s("telemetry.pipeline.>")

    @property
    def dlq_all(self) -> str:
        return self._s("dlq.>")

    def series_of(self, subject: str) -> SeriesKey:
        """The series named by the last three tokens of any per-series subject."""
        return _series_of(subject)

    # --- streams and buckets ------------------------------------------
    @property
    def stream_ohlcv(self) -> str:
        return self._n("OHLCV")

    @property
    def stream_regimes(self) -> str:
        return self._n("REGIMES")

    @property
    def stream_telemetry(self) -> str:
        return self._n("TELEMETRY")

    @property
    def stream_dlq(self) -> str:
        return self._n("DLQ")

    def bucket(self, name: str) -> str:
        """KV bucket ``name`` (e.g. ``vol_state``) of this stack."""
        return self._n(name)

    def durable(self, service: str, replica: str = "") -> str:
        """The consumer name of one replica (``replica``: its id) of ``service``."""
        base = self._n(service)
        return f"{base}-{replica}" if replica else base

    # --- redis ----------------------------------------------------------
    def redis_key(self, *parts: str) -> str:
        prefix = f"regimes:{self.namespace}" if self.namespace else "regimes"
        return ":".join((prefix, *parts))
