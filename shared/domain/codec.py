"""The message codec: msgpack bytes <-> the checked message Structs of :mod:`shared.domain.contracts`.

Decoding is one msgspec ``Decoder`` over the tagged union of every message:
msgspec reads the ``kind``, builds the Struct, checks the types and runs each
Struct's ``__post_init__`` (finite floats, series fields, the struct's rules).
A message it refuses is looked at once more, only then, to give the reason
dead-letter queries know (``Candle.ts: expected an integer, got float``):
msgspec's error names the path, the raw message at that path says what was
there. Encoding is msgspec's too; batches write their events without ``kind``,
as they always have. Only import this module through :mod:`shared.domain.contracts`.
"""

from __future__ import annotations

import re
import types
import typing
from functools import cache
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import msgpack
import msgspec

import shared.domain.contracts as c
from shared.domain.errors import ContractError
from shared.domain.finite import NonFinite

T = TypeVar("T")

_DECODER = msgspec.msgpack.Decoder(c.Message)


def plain_scalar(obj: Any) -> Any:
    """numpy scalars (a float64 from the vol math, say) as the Python number msgpack would have written."""
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=plain_scalar)


# --- encoding ---------------------------------------------------------------------------------------------------


def encode(msg: Any) -> bytes:
    """msgpack bytes of a message: the map of :func:`to_plain` (``kind`` first, then the fields in order)."""
    if isinstance(msg, c._EventBatch):
        return _encode_batch(msg)
    return _ENCODER.encode(msg)


def _encode_batch(batch: Any) -> bytes:
    """A batch's map, its events written without their ``kind`` (the batch's kind says what they are)."""
    cls = type(batch)
    parts = [_map_header(len(cls.__struct_fields__) + 1), _kind_entry(cls.KIND)]
    for name in cls.__struct_fields__:
        parts.append(_key(name))
        if name == "events":
            parts.append(_array_header(len(batch.events)))
            parts.extend(_untagged(_ENCODER.encode(event), event.KIND) for event in batch.events)
        else:
            parts.append(_ENCODER.encode(getattr(batch, name)))
    return b"".join(parts)


def _untagged(body: bytes, kind: str) -> bytes:
    """A tagged struct's map without its leading ``kind`` entry (msgspec writes the tag first)."""
    if body[0] & 0xF0 == 0x80:  # fixmap
        count, start = body[0] & 0x0F, 1
    else:  # map16 (0xde); no struct has 65,536 fields
        count, start = int.from_bytes(body[1:3], "big"), 3
    entry = _kind_entry(kind)
    return _map_header(count - 1) + body[start + len(entry) :]


def _map_header(count: int) -> bytes:
    return bytes([0x80 | count]) if count < 16 else b"\xde" + count.to_bytes(2, "big")


def _array_header(count: int) -> bytes:
    return bytes([0x90 | count]) if count < 16 else b"\xdc" + count.to_bytes(2, "big")


@cache
def _key(name: str) -> bytes:
    return _ENCODER.encode(name)


@cache
def _kind_entry(kind: str) -> bytes:
    return _key("kind") + _key(kind)


def to_plain(msg: Any) -> dict[str, Any]:
    """A message as the plain map that goes on the wire (tuples become lists, nested structs plain maps)."""
    out: dict[str, Any] = {"kind": msg.KIND} if isinstance(msg, c._Message) else {}
    for name in msg.__struct_fields__:
        out[name] = _plain_value(getattr(msg, name))
    return out


def _plain_value(value: Any) -> Any:
    if isinstance(value, (str, int, float, bytes)) or value is None:
        return value
    if isinstance(value, msgspec.Struct):
        return {name: _plain_value(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, (tuple, list)):
        return [_plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    return value


def encode_json(obj: Any) -> bytes:
    """JSON bytes of a control-plane contract (BackfillRequest, BackfillReply)."""
    return msgspec.json.encode(obj)


def decode_json(data: bytes, cls: type[T]) -> T:
    """JSON bytes -> a ``cls``; ContractError says what is wrong."""
    try:
        return msgspec.json.decode(data, type=cls)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ContractError(f"{cls.__name__}: {exc}") from None


# --- decoding ---------------------------------------------------------------------------------------------------


def decode(data: bytes, expected: tuple[type[Any], ...] | None = None) -> Any:
    """Bytes -> a checked message, if its kind is one of ``expected`` (None: any). ContractError says why not."""
    if len(data) > c.MAX_PAYLOAD_BYTES:
        raise ContractError(f"payload of {len(data)} bytes exceeds {c.MAX_PAYLOAD_BYTES}")
    try:
        msg = _DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _refusal(data, expected, exc) from None
    if msg.v != c.SCHEMA_VERSION or (expected is not None and type(msg) not in expected):
        raise _refusal(data, expected, None)
    return msg


def from_plain(cls: type[Any], raw: dict[str, Any]) -> Any:
    """A plain map -> a checked ``cls``; the inverse of :func:`to_plain` (its ``kind`` is ``cls``'s)."""
    return decode(_ENCODER.encode({**raw, "kind": cls.KIND}), (cls,))


def _refusal(data: bytes, expected: tuple[type[Any], ...] | None, exc: Exception | None) -> ContractError:
    """Why ``data`` is refused, in the words dead letters have always used.

    Asked in the order a reader would: is it msgpack, a map, a kind we know and
    take here, our schema version; then what msgspec found, at its path.
    """
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        return ContractError(f"not msgpack: {type(err).__name__} {err}".strip())
    if not isinstance(raw, dict):
        return ContractError("payload is not a map")
    kind = raw.get("kind")
    cls = c.MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return ContractError(f"unknown kind {kind!r}")
    if expected is not None and cls not in expected:
        return ContractError(f"kind {kind!r} not accepted here")
    version = raw.get("v", c.SCHEMA_VERSION)
    if version != c.SCHEMA_VERSION:
        return ContractError(f"schema version {version!r} not supported (this build reads {c.SCHEMA_VERSION})")
    if isinstance(exc, msgspec.ValidationError):
        return _explain(cls, raw, exc)
    return ContractError(f"not msgpack: {exc}")  # msgspec refused what msgpack-python read: say msgspec's words


# msgspec's paths: "$", ".field", "[3]", and "[...]" for a value of a dict.
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|(\[\.\.\.\])")


def _explain(cls: type[Any], raw: dict[str, Any], exc: msgspec.ValidationError) -> ContractError:
    text, _, at = str(exc).partition(" - at `")
    at_key = at.startswith("key` in `")  # a map's key, not a value, is wrong
    path = at.removeprefix("key` in `").rstrip("`") if at else "$"
    steps: list[tuple[str | None, ...]] = [(m.group(1), m.group(2), m.group(3)) for m in _STEP.finditer(path)]
    cause = exc.__cause__
    tp, value, where = _resolve(cls, raw, steps)
    if isinstance(cause, NonFinite):
        return ContractError(f"{where}{cause.where}: {cause.value} is not finite")
    if isinstance(cause, ContractError):
        return ContractError(_rule_reason(cls, raw, steps, cause.reason))
    if text.startswith("Object missing required field `"):
        return ContractError(f"{where}: missing field {text.split('`')[1]!r}")
    if at_key:
        return ContractError(f"{where}: expected a string")
    return ContractError(f"{where}: {_mismatch(tp, value) or text}")


def _resolve(cls: type[Any], raw: Any, steps: list[tuple[str | None, ...]]) -> tuple[Any, Any, str]:
    """The declared type, the raw value and the reason's name of what msgspec's path points at."""
    tp: Any = cls
    value, where = raw, cls.__name__
    for field, index, any_value in steps:
        tp = _without_none(tp)
        if field is not None:
            tp = _hints(tp)[field]
            value = value.get(field) if isinstance(value, dict) else None
            where += f".{field}"
        elif index is not None:
            i = int(index)
            args = get_args(tp)
            tp = args[0] if len(args) == 2 and args[1] is Ellipsis else args[i]
            value = value[i]
            where += f"[{i}]"
        elif any_value is not None:  # msgspec names no key: the first whose value does not convert is the one
            value_tp = get_args(tp)[1]
            key = next(k for k, v in value.items() if not _converts(v, value_tp))
            tp, value = value_tp, value[key]
            where += f".{key}"
    return tp, value, where


def _rule_reason(cls: type[Any], raw: dict[str, Any], steps: list[tuple[str | None, ...]], reason: str) -> str:
    """A struct's own rule failed, at the top or in an event of a batch (``events[i]: reason``).

    A batch used to check its events one by one (series, rules, order), so for
    an event refused by its own rule an earlier problem of the batch comes first.
    """
    if not steps:
        return reason
    (field, _, _), (_, index, _) = steps[0], steps[1]
    i = int(index or 0)
    if issubclass(cls, c._EventBatch) and field == "events" and len(steps) == 2:
        series = (raw["exchange"], raw["symbol"], raw["timeframe"])
        try:
            c._check_series(*series)
        except ContractError as exc:
            return exc.reason
        events = raw["events"]
        if not 1 <= len(events) <= c.MAX_BATCH_BARS:
            return f"a batch holds 1..{c.MAX_BATCH_BARS} events, got {len(events)}"
        last = None
        for j, event in enumerate(events[: i + 1]):
            named = (event.get("exchange"), event.get("symbol"), event.get("timeframe"))
            if named != series:
                return f"events[{j}] is for {':'.join(map(str, named))}, not {':'.join(series)}"
            if j < i and last is not None and event["ts"] <= last:
                return f"events[{j}]: ts {event['ts']} not after {last}"
            last = event.get("ts")
    rendered = "".join(f".{f}" if f is not None else f"[{n}]" for f, n, _ in steps)
    return f"{rendered.removeprefix('.')}: {reason}"


def _mismatch(tp: Any, value: Any) -> str | None:
    """What is wrong with ``value`` where ``tp`` is declared, as the reasons have always said it."""
    if get_origin(tp) in (Union, types.UnionType):
        if value is None:
            return "must not be null"
        tp = _without_none(tp)
    origin = get_origin(tp)
    if origin is Literal:
        return f"{value!r} not one of {list(get_args(tp))}"
    if tp is float:
        return f"expected a number, got {type(value).__name__}"
    if tp is int:
        return f"expected an integer, got {type(value).__name__}"
    if tp is bool:
        return "expected true/false"
    if tp is str:
        return "expected a string"
    if tp is bytes:
        return "expected bytes"
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            return "expected a list"
        if not (len(args) == 2 and args[1] is Ellipsis) and len(value) != len(args):
            return f"expected {len(args)} items, got {len(value)}"
        return None
    if origin is dict or (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
        return "expected a map"
    return None


def _without_none(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return tp


def _converts(value: Any, tp: Any) -> bool:
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError:
        return False
    return True


@cache
def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)
