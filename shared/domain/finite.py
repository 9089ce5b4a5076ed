"""No NaN or infinity crosses the bus: where a contract struct keeps its floats, and the check of them.

Every contract (:mod:`shared.domain.contracts`) runs :func:`check_finite` whenever one is made.
"""

from __future__ import annotations

import math
import typing
from operator import attrgetter
from typing import Any

import msgspec
import msgspec.inspect

from shared.domain.errors import ContractError


class NonFinite(ContractError):
    """A NaN or an infinity where a number must be; ``where`` is its path inside the struct (``.weights.carry``)."""

    def __init__(self, struct: str, where: str, value: float) -> None:
        super().__init__(f"{struct}{where}: {value} is not finite")
        self.where = where
        self.value = value


class FinitePlan(typing.NamedTuple):
    """Where a struct keeps floats: plain fields (summed in one go), and optional ones, sequences and maps of them."""

    plain: tuple[str, ...]
    get_plain: Any  # attrgetter over ``plain``, always returning a tuple
    others: tuple[tuple[str, str], ...]  # (how, field): how is "optional", "sequence" or "map"


def finite_plan(cls: type[Any]) -> FinitePlan:
    """``cls``'s plan, made on its first check and kept on the class (a dict lookup less per check)."""
    plain: list[str] = []
    others: list[tuple[str, str]] = []
    info = msgspec.inspect.type_info(cls)
    if not isinstance(info, msgspec.inspect.StructType):
        raise TypeError(f"{cls!r} is not a contract struct")  # a programming error, not bad input
    for f in info.fields:
        tp: msgspec.inspect.Type | None = f.type
        nullable = False
        if isinstance(tp, msgspec.inspect.UnionType):
            inner = [t for t in tp.types if not isinstance(t, msgspec.inspect.NoneType)]
            tp, nullable = (inner[0] if len(inner) == 1 else None), True
        if isinstance(tp, msgspec.inspect.FloatType):
            if nullable:
                others.append(("optional", f.name))
            else:
                plain.append(f.name)
        elif isinstance(tp, (msgspec.inspect.TupleType, msgspec.inspect.VarTupleType)):
            items = tp.item_types if isinstance(tp, msgspec.inspect.TupleType) else (tp.item_type,)
            if all(isinstance(t, msgspec.inspect.FloatType) for t in items):
                others.append(("sequence", f.name))
        elif isinstance(tp, msgspec.inspect.DictType) and isinstance(tp.value_type, msgspec.inspect.FloatType):
            others.append(("map", f.name))
    getter = attrgetter(*plain) if len(plain) > 1 else (lambda m, n=tuple(plain): tuple(getattr(m, x) for x in n))
    plan = FinitePlan(tuple(plain), getter, tuple(others))
    cls._finite = plan
    return plan


def check_finite(msg: Any) -> None:
    """NonFinite for the first NaN or infinity in ``msg``'s own floats (nested structs check their own).

    One sum covers the plain floats: it is finite when they all are (a sum that
    overflows is then looked at value by value, and passes).
    """
    plan = msg._finite or finite_plan(type(msg))  # contracts are final classes: no plan is inherited
    values = plan.get_plain(msg)
    if not math.isfinite(sum(values)):
        for name, value in zip(plan.plain, values, strict=True):
            if not math.isfinite(value):
                raise NonFinite(type(msg).__name__, f".{name}", value)
    for how, name in plan.others:
        value = getattr(msg, name)
        if value is None:
            continue
        if how == "optional":
            if not math.isfinite(value):
                raise NonFinite(type(msg).__name__, f".{name}", value)
        elif how == "sequence":
            if not math.isfinite(sum(value)):
                for i, item in enumerate(value):
                    if not math.isfinite(item):
                        raise NonFinite(type(msg).__name__, f".{name}[{i}]", item)
        elif not math.isfinite(sum(value.values())):
            for k, item in value.items():
                if not math.isfinite(item):
                    raise NonFinite(type(msg).__name__, f".{name}.{k}", item)
