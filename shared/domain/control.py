"""Control-plane contracts: the backfill request and reply (``control.backfill``, JSON), the heartbeat (KV ``health``).

Units: timestamps are integer ms since the epoch, UTC.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from shared.domain.errors import ContractError

# --- the control plane ------------------------------------------------------------------------------------------
# JSON on ``control.backfill`` (request/reply), and msgpack in KV ``health``: no ``kind``, no ``v``, as always.

BACKFILL_MAX_CANDLES = 1_000_000
BACKFILL_MAX_PAGES = 10_000


class BackfillRequest(msgspec.Struct, frozen=True):
    """The seed's ``/backfill_ohlcv [target_candles] [max_pages]``, for one series or all; null means the default."""

    series: str | None = None  # exchange:symbol:timeframe; None: every series ingest serves
    # Candles to reach, counting those held; default HMM_TRAINING_CANDLES.
    target_candles: Annotated[int, msgspec.Meta(ge=1, le=BACKFILL_MAX_CANDLES)] | None = None
    # Exchange pages to fetch at most, per series; default HMM_OHLCV_BACKFILL_MAX_PAGES.
    max_pages: Annotated[int, msgspec.Meta(ge=1, le=BACKFILL_MAX_PAGES)] | None = None


class BackfillResult(msgspec.Struct, frozen=True):
    """One series' backfill run."""

    series: str  # exchange:symbol:timeframe
    ok: bool
    rows: int  # candles new to the stream
    message: str  # what the run did, for people


class BackfillReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """ingest's answer to a BackfillRequest, once every run is done; ``error`` (only then present) if none ran."""

    ok: bool  # every run succeeded
    results: tuple[BackfillResult, ...]
    error: str | None = None  # why the request was refused (unknown series, bad request)


class Heartbeat(msgspec.Struct, frozen=True):
    """A service replica's heartbeat in KV ``health`` (entries expire after a minute), for the status API.

    On the wire it is one flat msgpack map: these fields, then the entries of
    ``extra`` beside them (a service's own facts, e.g. hmm_regime's ``last_training``).
    """

    service: str
    replica: str  # the replica's id among its service's replicas (host-pid-random unless REPLICA_ID is set)
    host: str
    pid: int
    started_at: int  # ms UTC
    last_seen: int  # ms UTC of this beat
    handled: int  # messages handled since start
    skipped: int  # not newer than the last applied
    dead_lettered: int
    extra: dict[str, Any] = {}

    def to_msgpack(self) -> bytes:
        record = {name: getattr(self, name) for name in _HEARTBEAT_ORDER}
        record.update(self.extra)
        return _HEARTBEAT_ENCODER.encode(record)

    @classmethod
    def from_msgpack(cls, data: bytes) -> Heartbeat:
        """The heartbeat ``data`` holds; ContractError when it is not one."""
        try:
            raw = msgspec.msgpack.decode(data)
        except msgspec.DecodeError as exc:
            raise ContractError(f"not msgpack: {exc}") from None
        if not isinstance(raw, dict):
            raise ContractError("heartbeat is not a map")
        extra = {k: raw.pop(k) for k in [k for k in raw if k not in _HEARTBEAT_FIELDS]}
        try:
            return msgspec.convert({**raw, "extra": extra}, cls)
        except msgspec.ValidationError as exc:
            raise ContractError(f"heartbeat: {exc}") from None


_HEARTBEAT_ORDER = tuple(f for f in Heartbeat.__struct_fields__ if f != "extra")
_HEARTBEAT_FIELDS = frozenset(_HEARTBEAT_ORDER)
_HEARTBEAT_ENCODER = msgspec.msgpack.Encoder()
