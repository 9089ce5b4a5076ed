"""The two ways input can be refused: a bad message and a bad setting."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any


class ContractError(ValueError):
    """A message that breaks its contract; ``reason`` is what goes to the dead-letter subject."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(ValueError):
    """A setting that stops start-up: names the key and says why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config {key}: {reason}")
        self.key = key
        self.reason = reason


def check_known(block: Mapping[str, Any], where: str, known: Iterable[str]) -> None:
    """Refuse the first unknown key of a config ``block`` (dotted path ``where``), naming the nearest known key.

    Keys starting with ``_`` are comments, at every depth.
    """
    known = tuple(known)
    for key in sorted(k for k in block if not str(k).startswith("_")):
        if key not in known:
            path = f"{where}.{key}" if where else str(key)
            raise ConfigError(path, f"unknown key{nearest(str(key), known)}")


def nearest(key: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest known key, or the list of known keys when none is close."""
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
