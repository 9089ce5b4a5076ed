"""The API's response models describe the stored contracts, field for field: the shape is defined once.

The status API serves what state_publisher stores (``shared.domain.snapshot``) and
what the control plane carries (``shared.domain.contracts``); its pydantic models
(``services/dashboard_api/models.py``) exist for validation and the OpenAPI schema.
Every field of a contract appears in its model with a compatible type (same
nullability, same labels, the model's list for the contract's tuple) and every
field of the model in the contract. Fields the contract stores under a name
starting with ``_`` (the publisher's running sums) are its own and not served.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

import annotated_types
import msgspec
import msgspec.inspect as mi
import pytest
from pydantic import BaseModel

from services.dashboard_api import models as api
from shared.domain import control, snapshot

Shape = Any  # a nested tuple: ("int", ge, le), ("float",), ("str",), ("bool",), ("any",), ("literal", values) ...


def contract_shape(t: Any) -> Shape:
    """The shape of a msgspec type, from ``msgspec.inspect``."""
    if isinstance(t, mi.IntType):
        return ("int", t.ge, t.le)
    if isinstance(t, mi.FloatType):
        return ("float",)
    if isinstance(t, mi.StrType):
        return ("str",)
    if isinstance(t, mi.BoolType):
        return ("bool",)
    if isinstance(t, mi.AnyType):
        return ("any",)
    if isinstance(t, mi.LiteralType):
        return ("literal", _spelt(t.values))
    if isinstance(t, mi.UnionType):
        inner = [x for x in t.types if not isinstance(x, mi.NoneType)]
        assert len(inner) == 1, t
        return ("optional", contract_shape(inner[0]))
    if isinstance(t, (mi.VarTupleType, mi.ListType)):
        return ("list", contract_shape(t.item_type))
    if isinstance(t, mi.TupleType):
        return ("tuple", tuple(contract_shape(x) for x in t.item_types))
    if isinstance(t, mi.DictType):
        return ("dict", contract_shape(t.key_type), contract_shape(t.value_type))
    if isinstance(t, mi.StructType):
        served = [f for f in t.fields if not f.encode_name.startswith("_")]
        return ("object", {f.encode_name: contract_shape(f.type) for f in served})
    raise TypeError(f"no shape for {t!r}")


def _spelt(values: Any) -> frozenset[Any]:
    """Label values as the JSON API spells them: lower case (stored HMM labels are upper case)."""
    return frozenset(v.lower() if isinstance(v, str) else v for v in values)


def model_shape(tp: Any, metadata: list[Any] | None = None) -> Shape:
    """The shape of a pydantic annotation (a model's fields by their alias, as served)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is int:
        bounds = {type(m): m for m in metadata or []}
        ge, le = bounds.get(annotated_types.Ge), bounds.get(annotated_types.Le)
        return ("int", ge.ge if ge else None, le.le if le else None)
    if tp is float:
        return ("float",)
    if tp is str:
        return ("str",)
    if tp is bool:
        return ("bool",)
    if tp is Any:
        return ("any",)
    if origin is Literal:
        return ("literal", _spelt(args))
    if origin is typing.Annotated:  # a label type that lower-cases what it is given (the API's one spelling)
        return model_shape(args[0], metadata)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        assert len(inner) == 1, tp
        return ("optional", model_shape(inner[0], metadata))
    if origin in (list, tuple) and (origin is list or args[-1] is Ellipsis):
        return ("list", model_shape(args[0]))
    if origin is dict:
        return ("dict", model_shape(args[0]), model_shape(args[1]))
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        fields = tp.model_fields.items()
        return ("object", {(f.alias or name): model_shape(f.annotation, f.metadata) for name, f in fields})
    raise TypeError(f"no shape for {tp!r}")


def mismatches(stored: Shape, served: Shape, where: str) -> list[str]:
    """Where the served shape cannot carry the stored one; empty when it can, field for field."""
    if served == ("any",):
        return []
    if stored[0] == "tuple" and served[0] == "list":  # a fixed tuple is served as a list of its items
        return [m for i, item in enumerate(stored[1]) for m in mismatches(item, served[1], f"{where}[{i}]")]
    if stored[0] != served[0]:
        return [f"{where}: stored {stored}, served {served}"]
    if stored[0] == "object":
        out = [f"{where}.{name}: stored, not served" for name in stored[1] if name not in served[1]]
        out += [f"{where}.{name}: served, not stored" for name in served[1] if name not in stored[1]]
        for name in stored[1].keys() & served[1].keys():
            out += mismatches(stored[1][name], served[1][name], f"{where}.{name}")
        return out
    if stored[0] in ("optional", "list"):
        return mismatches(stored[1], served[1], where)
    if stored[0] == "dict":
        return mismatches(stored[1], served[1], f"{where}{{key}}") + mismatches(stored[2], served[2], f"{where}{{}}")
    return [] if stored == served else [f"{where}: stored {stored}, served {served}"]


PAIRS = [
    (snapshot.SeriesSnapshot, api.SymbolSnapshot),
    (snapshot.Summary, api.Summary),
    (snapshot.HistoryPoint, api.HistoryPoint),
    (snapshot.SymbolConsensus, api.SymbolConsensus),
    (control.Heartbeat, api.ServiceHealth),
    (control.BackfillRequest, api.BackfillRequest),
    (control.BackfillReply, api.BackfillResponse),
]


@pytest.mark.parametrize(("contract", "model"), PAIRS, ids=[m.__name__ for _, m in PAIRS])
def test_the_api_model_carries_every_field_of_the_contract_and_no_other(
    contract: type[msgspec.Struct], model: type[BaseModel]
) -> None:
    assert mismatches(contract_shape(mi.type_info(contract)), model_shape(model), model.__name__) == []


def test_the_series_status_serves_fields_of_the_snapshot_as_stored() -> None:
    stored = contract_shape(mi.type_info(snapshot.SeriesSnapshot))[1]
    served = model_shape(api.SeriesStatus)[1]
    assert served.keys() <= stored.keys()
    for name in served:
        assert mismatches(stored[name], served[name], f"SeriesStatus.{name}") == []


def test_a_transition_model_serves_both_kinds_of_stored_transition() -> None:
    served = model_shape(api.Transition)[1]
    kinds = [snapshot.VolTransition, snapshot.HmmTransition]
    assert served["kind"] == ("literal", frozenset(t.__struct_config__.tag for t in kinds))
    fields = {name for t in kinds for name in contract_shape(mi.type_info(t))[1]}
    assert set(served) == fields | {"kind"}
    for t in kinds:
        for name, shape in contract_shape(mi.type_info(t))[1].items():
            if served[name][0] == "optional":  # present only in one kind of transition
                shape = ("optional", shape)
            if shape[0] == "literal":  # a regime label, served as a string
                assert served[name] == ("str",), name
            else:
                assert mismatches(shape, served[name], f"Transition.{name}") == []


def test_the_check_itself_catches_a_missing_a_mistyped_and_an_extra_field() -> None:
    class Served(BaseModel):
        close: int
        extra: str

    got = mismatches(contract_shape(mi.type_info(snapshot.Price)), model_shape(Served), "Price")
    assert got == [
        "Price.ts: stored, not served",
        "Price.extra: served, not stored",
        "Price.close: stored ('float',), served ('int', None, None)",
    ]
