"""Response bytes of the hot routes, exactly as FastAPI's ``response_model`` serialization makes them. Pure.

FastAPI serializes a ``response_model`` route with pydantic-core (``TypeAdapter.dump_json``,
``by_alias=True``). Validating the JSON text Redis holds with the same models (``validate_json``:
parsed and validated in one pass in Rust, no Python dicts) and dumping it gives the same bytes as
``json.loads`` + validation + dump, and a JSON list is its items' bytes joined by commas. So each
series' bytes are made once per stored snapshot and spliced into the lists.

Whatever does not pass the models here (None) is served by the routes' reference path instead: the
original dict code, validated by FastAPI, so malformed data fails exactly as it always did.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from services.dashboard_api.models import (
    ConfigView,
    HistoryColumns,
    SeriesStatus,
    ServiceHealth,
    Summary,
    SymbolConsensus,
    SymbolDetail,
    SymbolDetailCompact,
    SymbolSnapshot,
    Tuning,
    TuningRow,
)
from services.dashboard_api.query import SymbolFilter
from shared.domain.config import StrategyConfig
from shared.domain.vocab import (
    DEPTH_DEEP_CANDLES,
    DEPTH_MODERATE_CANDLES,
    DEPTH_TIERS,
    HMM_LABELS,
    HYBRID_COMPONENTS,
    TIERS,
    VOL_LABELS,
)

GZIP_MIN_BYTES = 1024  # smaller bodies go out as they are (the GZip middleware's minimum too)
GZIP_LEVEL = 6
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, unknown OS

SNAPSHOT = TypeAdapter(SymbolSnapshot)
SERIES_STATUS = TypeAdapter(SeriesStatus)
SERVICES = TypeAdapter(list[ServiceHealth])
SUMMARY = TypeAdapter(Summary)
DETAIL = TypeAdapter(SymbolDetail)
COMPACT = TypeAdapter(SymbolDetailCompact)
CONSENSUS = TypeAdapter(SymbolConsensus)
CONFIG = TypeAdapter(ConfigView)
_ROW = TypeAdapter(TuningRow)  # an item of /api/tuning
_STR = TypeAdapter(str)


class _TuningSource(BaseModel):
    """The three parts of a snapshot /api/tuning reads; the rest is skipped unparsed."""

    series: str
    hmm_tuning: Tuning | None = None
    vol_tuning: Tuning | None = None


_TUNING_SOURCE = TypeAdapter(_TuningSource)


def dump(adapter: TypeAdapter[Any], value: Any) -> bytes:
    """As FastAPI serializes a response model (``by_alias=True``, nothing excluded)."""
    return adapter.dump_json(value, by_alias=True)


def json_list(items: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


class Body:
    """Response bytes, and their gzip form made once, on first demand."""

    __slots__ = ("_gzip", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._gzip: bytes | None = None

    def gzip(self) -> bytes:
        if self._gzip is None:
            deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
            stream = deflate.compress(self.data) + deflate.flush()
            self._gzip = _GZIP_HEADER + stream + _trailer(zlib.crc32(self.data), len(self.data))
        return self._gzip


def gzip_spliced(head: bytes, tail: Body) -> bytes:
    """gzip of ``head + tail.data`` reusing the tail's compressed stream: only ``head`` is compressed.

    A full flush ends the head's blocks on a byte boundary with an empty dictionary, so the tail's
    deflate stream (which refers only to itself) can follow as it is, the way pigz joins blocks.
    """
    deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)
    stream = memoryview(tail.gzip())[len(_GZIP_HEADER) : -8]
    crc = zlib.crc32(tail.data, zlib.crc32(head))
    return b"".join((_GZIP_HEADER, first, stream, _trailer(crc, len(head) + len(tail.data))))


def _trailer(crc: int, size: int) -> bytes:
    return struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


# --------------------------------------------------------------------------- one series


@dataclass(frozen=True, slots=True)
class Rendered:
    """A snapshot's bytes in /api/symbols and what its filters compare."""

    data: bytes
    vol_regime: str | None
    hmm_regime: str | None
    tier: str
    exchange: str


def snapshot(raw: str) -> Rendered | None:
    try:
        snap = SNAPSHOT.validate_json(raw)
    except ValidationError:
        return None
    hmm = snap.hmm_regime.regime if snap.hmm_regime is not None else None
    return Rendered(dump(SNAPSHOT, snap), snap.vol_regime, hmm, snap.tier, snap.exchange)


def series_status(raw: str) -> bytes | None:
    """The snapshot's item in /api/status ``series``."""
    try:
        return dump(SERIES_STATUS, SERIES_STATUS.validate_json(raw))
    except ValidationError:
        return None


def tuning_row(raw: str) -> bytes | None:
    """The snapshot's item in /api/tuning."""
    try:
        src = _TUNING_SOURCE.validate_json(raw)
    except ValidationError:
        return None
    return dump(_ROW, TuningRow(series=src.series, hmm=src.hmm_tuning, vol=src.vol_tuning))


def matches(snap: Rendered, f: SymbolFilter) -> bool:
    """/api/symbols' filters over a rendered snapshot (its labels lowercase already)."""
    return (
        (f.vol_regime is None or snap.vol_regime == f.vol_regime)
        and (f.hmm_regime is None or snap.hmm_regime == f.hmm_regime)
        and (f.tier is None or snap.tier.casefold() == f.tier)
        and (f.exchange is None or snap.exchange == f.exchange)
    )


# --------------------------------------------------------------------------- whole bodies


def thresholds(config: StrategyConfig) -> dict[str, float]:
    vol = config.vol
    return {"low": vol.ratio_low, "normal": vol.ratio_normal, "high": vol.ratio_high}


def detail(
    raw: str,
    points: Sequence[str],
    transitions: Sequence[str],
    thresholds_json: str,
    compact: bool = False,
    consensus: str | None = None,
) -> Body | None:
    """/api/symbols/{exchange}/{symbol}: the stored texts assembled into one document, validated once."""
    text = "".join(
        (
            '{"snapshot":',
            raw,
            ',"history":[',
            ",".join(points),
            '],"transitions":[',
            ",".join(transitions),
            '],"thresholds":',
            thresholds_json,
            ',"consensus":',
            consensus or "null",
            "}",
        )
    )
    try:
        rows = DETAIL.validate_json(text)
    except ValidationError:
        return None
    if not compact:
        return Body(dump(DETAIL, rows))
    # Built from what was validated already: nothing is checked twice.
    values: dict[str, Any] = {f: [getattr(p, f) for p in rows.history] for f in HISTORY_FIELDS}
    columns = HistoryColumns.model_construct(**values)
    compacted = SymbolDetailCompact.model_construct(
        snapshot=rows.snapshot,
        history=columns,
        transitions=rows.transitions,
        thresholds=rows.thresholds,
        consensus=rows.consensus,
    )
    return Body(dump(COMPACT, compacted))


HISTORY_FIELDS = tuple(HistoryColumns.model_fields)


def consensus(raw: str) -> bytes | None:
    """/api/consensus/{exchange}/{symbol}: the stored consensus, labels lowered; None if the model rejects it."""
    try:
        return dump(CONSENSUS, CONSENSUS.validate_json(raw))
    except ValidationError:
        return None


def summary(raw: str | None) -> bytes | None:
    """/api/summary, and /api/status ``summary``."""
    if not raw:
        return dump(SUMMARY, SUMMARY.validate_python(empty_summary()))
    try:
        return dump(SUMMARY, SUMMARY.validate_json(raw))
    except ValidationError:
        return None


def status_head(namespace: str, now: int, summary_json: bytes, services_json: bytes) -> bytes:
    """/api/status up to its ``series`` list, which follows (with the closing brace) as cached bytes."""
    return b"".join(
        (
            b'{"namespace":',
            dump(_STR, namespace),
            b',"now":',
            str(now).encode(),
            b',"summary":',
            summary_json,
            b',"services":',
            services_json,
            b',"series":',
        )
    )


def empty_summary() -> dict[str, Any]:
    return {
        "symbols": 0,
        "vol_regime_summary": dict.fromkeys(VOL_LABELS, 0),
        "vol_regime_avg_vol_short": dict.fromkeys(VOL_LABELS),
        "hmm_regime_summary": dict.fromkeys(HMM_LABELS, 0),
        "hmm_untrained": 0,
        "updated_at": None,
    }


def config_view(config: StrategyConfig) -> dict[str, Any]:
    """The strategy config in force, as /api/config shows it."""
    return {
        "universe": [{"series": s.key.id, "tier": s.tier} for s in config.universe],
        "per_trade_nav_pct": config.per_trade_nav_pct,
        "max_per_trade_nav_pct": config.max_per_trade_nav_pct,
        "base_weights": dict(config.base_weights),
        "sizing_multipliers": {t: dict(r) for t, r in config.sizing_multipliers.items()},
        "hybrid_weight_modifiers": {
            scope: {label: dict(m) for label, m in per.items()} for scope, per in config.hybrid_modifiers.items()
        },
        "vol_thresholds": thresholds(config),
        "vol_confirmation": {"confirm_bars": config.vol.confirm_bars, "hysteresis": config.vol.hysteresis},
        "idle_target": {
            "base_target": config.idle.base_target,
            "sensitivity": config.idle.sensitivity,
            "floor": config.idle.floor,
            "ceiling": config.idle.ceiling,
        },
        "hmm": config.hmm.as_keys(),
        "vocabulary": vocabulary(),
    }


def vocabulary() -> dict[str, list[str] | dict[str, int]]:
    """The labels the page and bots read instead of keeping copies of their own."""
    return {
        "vol_labels": list(VOL_LABELS),
        "hmm_labels": [label.lower() for label in HMM_LABELS],  # the JSON API's one spelling: lower case
        "tiers": list(TIERS),
        "score_components": list(HYBRID_COMPONENTS),
        "depth_tiers": list(DEPTH_TIERS),
        "depth_candles": {"moderate": DEPTH_MODERATE_CANDLES, "deep": DEPTH_DEEP_CANDLES},
    }


# --------------------------------------------------------------------------- the reference path


def parsed(raws: Iterable[str]) -> list[dict[str, Any]]:
    return [json.loads(r) for r in raws]


def filtered(snaps: Iterable[Mapping[str, Any]], f: SymbolFilter) -> list[Mapping[str, Any]]:
    """/api/symbols over parsed snapshots, as stored (HMM labels upper case there)."""
    out = []
    for snap in snaps:
        if f.vol_regime is not None and _folded(snap.get("vol_regime")) != f.vol_regime:
            continue
        if f.hmm_regime is not None and _folded((snap.get("hmm_regime") or {}).get("regime")) != f.hmm_regime:
            continue
        if f.tier is not None and _folded(snap.get("tier")) != f.tier:
            continue
        if f.exchange is not None and snap.get("exchange") != f.exchange:
            continue
        out.append(snap)
    return out


def _folded(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def detail_dict(
    raw: str,
    points: Sequence[str],
    transitions: Sequence[str],
    thresholds: dict[str, float],
    compact: bool = False,
    consensus: str | None = None,
) -> Any:
    history: Any = [json.loads(p) for p in points]
    if compact:
        history = {f: [p.get(f) if isinstance(p, dict) else None for p in history] for f in HISTORY_FIELDS}
    return {
        "snapshot": json.loads(raw),
        "history": history,
        "transitions": [json.loads(t) for t in transitions],
        "thresholds": thresholds,
        "consensus": json.loads(consensus) if consensus else None,
    }


def series_statuses(snaps: Iterable[Mapping[str, Any]]) -> list[SeriesStatus]:
    return [
        SeriesStatus(
            series=s["series"],
            vol_regime=s.get("vol_regime"),
            hmm_regime=s.get("hmm_regime"),
            hmm_data_pipeline=s.get("hmm_data_pipeline"),
        )
        for s in snaps
    ]


def tuning_rows(snaps: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"series": s["series"], "hmm": s.get("hmm_tuning"), "vol": s.get("vol_tuning")} for s in snaps]
