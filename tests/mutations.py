"""The fuzzers' one way to damage a document: any JSON value at any of its places, or the place left out."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

Place = tuple[Any, ...]  # dict keys and list indexes from the root

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def places(node: Any, prefix: Place = ()) -> list[Place]:
    """Every place a value sits in ``node``; lists longer than 8 by their first and last entries only."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += places(v, (*prefix, k))
    elif isinstance(node, list) and node:
        for i in range(len(node)) if len(node) <= 8 else sorted({0, len(node) - 1}):
            out += places(node[i], (*prefix, i))
    return out


def damaged(doc: Any, place: Place, value: Any, drop: bool) -> Any:
    """A copy of ``doc`` with ``value`` at ``place``, or (``drop``, in a dict) that key left out."""
    out = copy.deepcopy(doc)
    parent: Any = out
    for step in place[:-1]:
        parent = parent[step]
    if drop and isinstance(parent, dict):
        del parent[place[-1]]
    else:
        parent[place[-1]] = value
    return out
