"""How series are split into partitions and partitions over the live replicas (pure: no bus)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.partitions import assign, desired, partition_of
from shared.domain.subjects import SeriesKey


def universe(n: int) -> list[SeriesKey]:
    return [SeriesKey(("kraken", "binance")[i % 2], f"C{i}/USD", ("1m", "5m", "1h")[i % 3]) for i in range(n)]


def fnv1a_32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) % 2**32
    return h


def test_a_series_partition_is_a_stable_hash_every_process_agrees_on() -> None:
    # Not Python's salted hash(): FNV-1a over the series token, so replicas in other processes agree.
    for key in universe(50):
        assert partition_of(key, 16) == fnv1a_32(key.token.encode()) % 16


def test_by_symbol_every_timeframe_of_a_symbol_is_in_the_symbols_partition() -> None:
    for key in universe(50):
        by_symbol = {partition_of(SeriesKey(key.exchange, key.symbol, tf), 16, "symbol") for tf in ("1m", "15m", "1h")}
        assert by_symbol == {fnv1a_32(f"{key.exchange}.{key.symbol.replace('/', '-')}".encode()) % 16}


def test_symbols_spread_over_every_partition() -> None:
    load = Counter(partition_of(k, 16, "symbol") for k in universe(800))
    assert set(load) == set(range(16))


def test_series_spread_over_every_partition() -> None:
    load = Counter(partition_of(k, 16) for k in universe(800))
    assert set(load) == set(range(16))
    assert max(load.values()) <= 2 * 800 / 16


@settings(max_examples=60, deadline=None)
@given(members=st.sets(st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True), min_size=1, max_size=9))
def test_every_partition_has_exactly_one_member(members: set[str]) -> None:
    shares = assign(members, 16)
    assert set(shares) == members
    owned = [p for ps in shares.values() for p in ps]
    assert sorted(owned) == list(range(16))


def test_the_assignment_is_the_same_whatever_order_members_are_listed_in() -> None:
    members = ["b-2", "a-1", "c-3"]
    assert assign(members, 16) == assign(sorted(members), 16) == assign(reversed(members), 16)


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_no_replica_idles_or_carries_a_wildly_unfair_share(n: int) -> None:
    shares = assign([f"host-{i}" for i in range(n)], 64)
    sizes = [len(ps) for ps in shares.values()]
    assert min(sizes) >= 1
    assert max(sizes) <= 3 * 64 / n


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_a_replica_joining_takes_partitions_only_from_others_and_moves_no_more_than_it_takes(n: int) -> None:
    before = assign([f"r{i}" for i in range(n)], 64)
    after = assign([*(f"r{i}" for i in range(n)), "new"], 64)
    for member, ps in before.items():
        assert after[member] <= ps, f"{member} gained a partition when a replica joined"
    moved = sum(len(ps - after[m]) for m, ps in before.items())
    assert moved == len(after["new"])


def test_a_replica_leaving_hands_only_its_own_partitions_to_the_others() -> None:
    before = assign(["r0", "r1", "r2"], 64)
    after = assign(["r0", "r2"], 64)
    assert after["r0"] >= before["r0"]
    assert after["r2"] >= before["r2"]
    assert after["r0"] | after["r2"] == frozenset(range(64))


def test_rendezvous_desire_ignores_current_holders() -> None:
    holders = {p: "old" for p in range(16)}
    mine = desired("me", ["me", "old"], 16, holders, sticky=False)
    assert mine == assign(["me", "old"], 16)["me"]


def test_sticky_desire_leaves_a_live_holders_partitions_alone() -> None:
    assert desired("standby", ["standby", "writer"], 1, {0: "writer"}, sticky=True) == frozenset()
    assert desired("writer", ["standby", "writer"], 1, {0: "writer"}, sticky=True) == frozenset({0})


def test_sticky_desire_takes_over_from_a_holder_that_is_gone() -> None:
    wanted = desired("standby", ["standby"], 1, {0: "dead-writer"}, sticky=True)
    assert wanted == frozenset({0})
    # With a free partition and several live standbys, only the one rendezvous picks reaches for it.
    takers = [m for m in ("a", "b", "c") if desired(m, ["a", "b", "c"], 1, {}, sticky=True)]
    assert len(takers) == 1
