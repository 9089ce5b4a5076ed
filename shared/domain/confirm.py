"""Confirmed transitions: a label is reported only after it has led for N consecutive bars.

One small state machine for both regime kinds (vol labels and HMM regimes are
plain strings here). It holds the label in force (``label``), the challenger
(``candidate``) and how many bars in a row the challenger has led (``run``).
Every bar it is given the raw label:

- the label in force again: the challenger is dropped;
- the challenger again: its run grows; at ``confirm_bars`` it takes over;
- another label: that label becomes the challenger with a run of 1 (and takes
  over at once when ``confirm_bars`` is 1).

So with ``confirm_bars = N`` a clean change is reported N − 1 bars after the
raw label changed, and a flicker shorter than N bars is never reported. The
first label given is taken as it is (there is nothing to confirm it against).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Confirmation:
    """The confirmed label of one series; ``confirm_bars`` (bars, ≥ 1) is read at every update."""

    __slots__ = ("candidate", "confirm_bars", "label", "run")

    def __init__(self, confirm_bars: int) -> None:
        if isinstance(confirm_bars, bool) or not isinstance(confirm_bars, int) or confirm_bars < 1:
            raise ValueError(f"confirm_bars must be an int >= 1, got {confirm_bars!r}")
        self.confirm_bars = confirm_bars
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next label given is taken as it is."""
        self.label: str | None = None  # the label in force; None before the first update
        self.candidate: str | None = None  # the label challenging it, if any
        self.run: int = 0  # bars in a row the candidate has led

    @property
    def pending(self) -> bool:
        """Whether a challenger is waiting for confirmation."""
        return self.candidate is not None

    def update(self, raw: str) -> str:
        """Take this bar's raw label; returns the label in force after it."""
        if self.label is None or raw == self.label:
            self.label, self.candidate, self.run = raw, None, 0
            return raw
        if raw == self.candidate:
            self.run += 1
        else:
            self.candidate, self.run = raw, 1
        if self.run >= self.confirm_bars:
            self.label, self.candidate, self.run = raw, None, 0
        return self.label

    def to_state(self) -> dict[str, Any]:
        """Plain msgpack/JSON-safe values; :meth:`load` resumes exactly here."""
        return {"label": self.label, "candidate": self.candidate, "run": self.run}

    def load(self, state: Mapping[str, Any], labels: tuple[str, ...]) -> None:
        """Resume from :meth:`to_state`; ValueError (nothing changed) if it is malformed or names unknown labels."""
        label, candidate, run = state["label"], state["candidate"], state["run"]
        for name, value in (("label", label), ("candidate", candidate)):
            if value is not None and value not in labels:
                raise ValueError(f"confirmation {name} {value!r} is not one of {list(labels)}")
        if isinstance(run, bool) or not isinstance(run, int) or run < 0:
            raise ValueError(f"confirmation run must be an int >= 0, got {run!r}")
        if (
            (candidate is None) != (run == 0)
            or (label is None and candidate is not None)
            or (candidate is not None and candidate == label)
        ):
            raise ValueError(f"inconsistent confirmation state {dict(state)!r}")
        self.label, self.candidate, self.run = label, candidate, run
