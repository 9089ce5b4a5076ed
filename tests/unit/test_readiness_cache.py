"""/readyz's data part is cached for HMM_READINESS_CACHE_SEC (seed 003 §7)."""

from __future__ import annotations

from services.dashboard_api.app import _ReadinessCache


async def test_stale_series_are_computed_once_per_ttl() -> None:
    calls: list[int] = []

    async def compute() -> list[str]:
        calls.append(1)
        return [f"s{len(calls)}"]

    cache = _ReadinessCache(ttl=3600.0)
    assert await cache.get(compute) == ["s1"]
    assert await cache.get(compute) == ["s1"]
    assert len(calls) == 1


async def test_a_zero_ttl_recomputes_every_time() -> None:
    calls: list[int] = []

    async def compute() -> list[str]:
        calls.append(1)
        return []

    cache = _ReadinessCache(ttl=0.0)
    await cache.get(compute)
    await cache.get(compute)
    assert len(calls) == 2
