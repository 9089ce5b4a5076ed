"""The message codec: msgpack bytes <-> the checked message types of :mod:`shared.domain.contracts`.

Decoding has two paths with one result. The fast one lets msgspec parse the
bytes straight into the frozen dataclasses (a few µs per candle); anything it
refuses, and any message that holds a non-finite number, goes to the reference
decoder below, which walks the type hints and says exactly what is wrong
(``Candle.ts: expected an integer, got float``). So a valid message costs
little and a bad one still gets its precise dead-letter reason. Every
struct's own ``check`` (high >= low, aligned ts, ...) runs on both paths.
Only import this module through :mod:`shared.domain.contracts`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

import msgpack
import msgspec

import shared.domain.contracts as c
from shared.domain.errors import ContractError


class _Head(msgspec.Struct):
    kind: Any = None


_HEAD = msgspec.msgpack.Decoder(_Head)


@cache
def _fast_decoder(cls: type[Any]) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(cls)


# A non-finite float in msgpack: float64 (0xcb) or float32 (0xca) with every exponent bit set. A match may
# also be a coincidence inside other bytes; that only sends the message down the (exact) reference path.
_NON_FINITE = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]|\xca[\x7f\xff][\x80-\xff]")


def _finite(value: Any) -> bool:
    """Whether every float in a decoded message is finite (only asked when its bytes looked suspicious)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (tuple, list)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if dataclasses.is_dataclass(value):
        return all(_finite(getattr(value, name)) for name in _field_names(type(value)))
    return True


def to_plain(msg: Any) -> dict[str, Any]:
    """A message as the plain map that goes on the wire (tuples become lists)."""
    out: dict[str, Any] = {"kind": type(msg).KIND} if hasattr(type(msg), "KIND") else {}
    for name in _field_names(type(msg)):
        out[name] = _plain_value(getattr(msg, name))
    return out


@cache
def _field_names(cls: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _plain_value(value: Any) -> Any:
    if isinstance(value, (str, int, float, bytes)) or value is None:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _plain_value(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, (tuple, list)):
        return [_plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    return value


def _plain_scalar(obj: Any) -> Any:
    """numpy scalars (a float64 from the vol math, say) as the Python number msgpack would have written."""
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_plain_scalar)


def encode(msg: Any) -> bytes:
    """msgpack bytes of a message: the map of :func:`to_plain`, byte for byte, written by msgspec.

    msgspec writes a dataclass as the map of its fields in order; the ``kind``
    entry goes in front of them, so the bytes are those of ``{"kind": ..., **fields}``.
    """
    body = _ENCODER.encode(msg)
    kind = getattr(type(msg), "KIND", None)
    if kind is None:
        return body
    first = body[0]
    if first & 0xF0 == 0x80:  # fixmap
        count, rest = first & 0x0F, body[1:]
    else:  # map16 (0xde); no message has 65,536 fields
        count, rest = int.from_bytes(body[1:3], "big"), body[3:]
    return _map_header(count + 1) + _kind_entry(kind) + rest


def _map_header(count: int) -> bytes:
    return bytes([0x80 | count]) if count < 16 else b"\xde" + count.to_bytes(2, "big")


@cache
def _kind_entry(kind: str) -> bytes:
    return msgpack.packb("kind") + msgpack.packb(kind)


def decode(data: bytes, expected: tuple[type[Any], ...] | None = None) -> Any:
    """Bytes -> a checked message. ContractError says exactly what is wrong."""
    if len(data) > c.MAX_PAYLOAD_BYTES:
        raise ContractError(f"payload of {len(data)} bytes exceeds {c.MAX_PAYLOAD_BYTES}")
    try:
        kind = _HEAD.decode(data).kind
        cls = c.MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is not None and (expected is None or cls in expected):
            msg = _fast_decoder(cls).decode(data)
            if msg.v == c.SCHEMA_VERSION and (_NON_FINITE.search(data) is None or _finite(msg)):
                msg.check()
                return msg
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass  # the reference decoder below names the problem
    return _decode_reference(data, expected)


def _decode_reference(data: bytes, expected: tuple[type[Any], ...] | None) -> Any:
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ContractError(f"not msgpack: {type(exc).__name__} {exc}".strip()) from None
    if not isinstance(raw, dict):
        raise ContractError("payload is not a map")
    kind = raw.get("kind")
    cls = c.MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ContractError(f"unknown kind {kind!r}")
    if expected is not None and cls not in expected:
        raise ContractError(f"kind {kind!r} not accepted here")
    return from_plain(cls, raw)


def from_plain(cls: type[Any], raw: dict[str, Any]) -> Any:
    """A plain map -> a checked ``cls``; the inverse of :func:`to_plain`."""
    version = raw.get("v", c.SCHEMA_VERSION)
    if version != c.SCHEMA_VERSION:
        raise ContractError(f"schema version {version!r} not supported (this build reads {c.SCHEMA_VERSION})")
    msg = _build(cls, raw, cls.__name__)
    msg.check()
    return msg


@cache
def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type[Any], raw: Any, path: str) -> Any:
    if not isinstance(raw, dict):
        raise ContractError(f"{path}: expected a map")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _coerce(hints[f.name], raw[f.name], f"{path}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ContractError(f"{path}: missing field {f.name!r}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ContractError(f"{path}: must not be null")
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, path)
    if origin is Literal:
        if value not in get_args(tp):
            raise ContractError(f"{path}: {value!r} not one of {list(get_args(tp))}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ContractError(f"{path}: expected a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ContractError(f"{path}: {value} is not finite")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ContractError(f"{path}: expected an integer, got {type(value).__name__}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ContractError(f"{path}: expected true/false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ContractError(f"{path}: expected a string")
        return value
    if tp is bytes:
        if not isinstance(value, bytes):
            raise ContractError(f"{path}: expected bytes")
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ContractError(f"{path}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ContractError(f"{path}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        key_tp, val_tp = get_args(tp)
        if not isinstance(value, dict):
            raise ContractError(f"{path}: expected a map")
        return {_coerce(key_tp, k, path): _coerce(val_tp, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    raise TypeError(f"contract type {tp!r} at {path} has no codec")  # a programming error, not bad input


