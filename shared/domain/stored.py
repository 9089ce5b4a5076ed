"""Checks on plain values read back from storage (KV states, snapshots, models): exact types, finite, shaped."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def finite_float(x: Any, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {x!r}")
    return float(x)


def number_array(obj: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Nested lists of int/float (nothing else: no strings, bools or None) of exactly ``shape``."""

    def check(node: Any, depth: int) -> None:
        if depth == len(shape):
            if isinstance(node, bool) or not isinstance(node, int | float):
                raise TypeError(f"expected a number, got {node!r}")
            return
        if not isinstance(node, list | tuple) or len(node) != shape[depth]:
            raise ValueError(f"expected a list of {shape[depth]} at depth {depth}, shape {shape}")
        for child in node:
            check(child, depth + 1)

    check(obj, 0)
    return np.array(obj, dtype=np.float64).reshape(shape)


def optional_int(x: Any, name: str, lo: int = 0) -> int | None:
    """A stored count or timestamp (ms): None, or an int (not a bool) of at least ``lo``."""
    if x is None:
        return None
    return stored_int(x, name, lo)


def stored_int(x: Any, name: str, lo: int = 0) -> int:
    if not is_int(x) or x < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {x!r}")
    return int(x)
