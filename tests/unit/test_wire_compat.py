"""The wire does not move: bytes and dead-letter reasons recorded from the old codec still hold, case for case.

``wire_v1.json`` was recorded from the dataclass codec (commit 394981f) before the
contracts became msgspec Structs: the bytes every sample of ``test_contracts``
encoded to, and the reason the old decoder gave for each of about 2,700 mutated
messages (every top-level field of every message type set to each of ``VALUES``
or deleted, plus nested fields: events of batches, bars, probabilities, weights,
grid bias). An old client's bytes therefore still decode, and a refused message
still gets the reason the operator's dead-letter queries know.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

import tests.unit.test_contracts as samples
from shared.domain.contracts import ContractError, VolRegimeEvent, decode, encode

RECORDED = json.loads((Path(__file__).parent / "wire_v1.json").read_text())
# The values the recording put in place of a field (its cases name them by index; -1 deletes the field).
VALUES: list[Any] = [None, 0, -1, 1.5, math.nan, "x", True, [], {}, math.inf, 2**64 - 1, b"x", [1.0, 2.0, 3.0], -0.0,
                     "low", 7]  # fmt: skip
DELETE = -1
SAMPLE_NAMES = [name for name in RECORDED["wire"] if name != "VOL_NUMPY"]


# Fields added since the recording (confirmed regimes, training depth, the consensus decided on): trailing keys,
# null when not carried.
ADDED = {
    "vol_regime": ("raw_label", "pending_label"),
    "hmm_regime": ("raw_regime", "raw_confidence", "depth_tier", "training_candles", "label_agreement"),
    "screener_decision": ("consensus",),
}


def as_recorded(data: bytes) -> bytes:
    """A message's bytes without the keys added since the recording (the rest keeps its order and encoding)."""
    plain = msgpack.unpackb(data, raw=False)
    for item in [plain, *plain.get("events", [])]:
        for key in ADDED.get(item.get("kind", plain["kind"].removesuffix("_batch")), ()):
            assert item.pop(key) is None, f"{key}: a sample without it encodes it as null"
    return msgpack.packb(plain, use_bin_type=True)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_every_message_encodes_to_the_recorded_bytes(name: str) -> None:
    msg = getattr(samples, name)
    assert as_recorded(encode(msg)).hex() == RECORDED["wire"][name]


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_the_recorded_bytes_decode_to_the_same_message(name: str) -> None:
    msg = getattr(samples, name)
    assert decode(bytes.fromhex(RECORDED["wire"][name])) == msg


def test_numpy_numbers_from_the_regime_math_encode_as_python_numbers_did() -> None:
    f = np.float64
    event = VolRegimeEvent(
        "kraken", "BTC/USD", "1m", samples.T, f(100.5), "high", f(0.0123), f(0.0085), f(1.45), "normal", True,
        np.int64(900), True,  # type: ignore[arg-type]  # a numpy int on purpose: it must encode as an int does
    )  # fmt: skip
    assert as_recorded(encode(event)).hex() == RECORDED["wire"]["VOL_NUMPY"] == RECORDED["wire"]["VOL"]


def _mutated(name: str, path: list[str | int], value_index: int) -> bytes:
    plain = copy.deepcopy(msgpack.unpackb(bytes.fromhex(RECORDED["wire"][name]), raw=False))
    node = plain
    for step in path[:-1]:
        node = node[step]
    if value_index == DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = VALUES[value_index]
    return msgpack.packb(plain, use_bin_type=True)


def _outcome(data: bytes) -> str | None:
    try:
        decode(data)
    except ContractError as exc:
        return exc.reason
    return None


def test_every_recorded_mutation_gets_the_recorded_reason() -> None:
    reasons = RECORDED["reasons"]
    wrong = []
    for name, path, value_index, reason_index in RECORDED["cases"]:
        want = None if reason_index is None else reasons[reason_index]
        got = _outcome(_mutated(name, path, value_index))
        if got != want:
            wrong.append(f"{name} {path} = {'<deleted>' if value_index == DELETE else VALUES[value_index]!r}: "
                         f"got {got!r}, recorded {want!r}")  # fmt: skip
    assert len(RECORDED["cases"]) > 2500
    assert wrong == [], f"{len(wrong)} cases differ:\n" + "\n".join(wrong[:30])
