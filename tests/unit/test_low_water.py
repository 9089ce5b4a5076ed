"""The lowest buffered sequence over many keys, from a lazy heap, equals the minimum asked of every key."""

from __future__ import annotations

from collections import deque

from hypothesis import example, given, settings
from hypothesis import strategies as st

from shared.infra.low_water import LowWaters

# An operation: (key, True, _) buffers an event of ``key`` at the next stream sequence; (key, False, _) takes its
# oldest event out (decided or dropped); ("reset", _, _) forgets everything, as the consume loop's reset does.
# The third item: whether the low water is asked after it (a commit), so stale entries are not always cleared.
Ops = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d", "reset"]), st.booleans(), st.booleans()), max_size=200
)


@given(Ops)
@settings(max_examples=500)
# After a reset the stream is read again at lower sequences: an entry recorded before it must not stand.
@example([("a", True, False), ("a", True, False), ("b", True, True), ("reset", False, False), ("b", True, False),
          ("a", True, True)])
def test_the_heap_gives_the_minimum_over_every_key_after_any_buffering(ops: list[tuple[str, bool, bool]]) -> None:
    buffers: dict[str, deque[int]] = {}
    waters: LowWaters[str] = LowWaters(lambda k: buffers[k][0] if buffers.get(k) else None)
    seq = 0
    for key, add, ask in ops:
        if key == "reset":
            buffers.clear()
            waters.discard()
            seq = max(0, seq - 50)  # the stream is read again from an earlier position
        elif add:
            seq += 1
            waters.touch(key, seq)
            buffers.setdefault(key, deque()).append(seq)
        elif buffers.get(key):
            buffers[key].popleft()
        if ask:
            heads = [b[0] for b in buffers.values() if b]
            assert waters() == (min(heads) if heads else None)


def test_nothing_buffered_is_no_low_water() -> None:
    waters: LowWaters[str] = LowWaters(lambda _k: None)
    assert waters() is None
    waters.touch("a", 7)
    assert waters() is None  # the handler touched it, then the event was decided at once
