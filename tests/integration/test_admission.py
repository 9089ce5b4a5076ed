"""The stack admits the first MAX_SERIES series to appear in the candle stream; later ones are dead-lettered."""

from __future__ import annotations

from typing import Any

import httpx

from shared.domain.contracts import MESSAGE_TYPES, DeadLetter, events_in
from shared.domain.subjects import SeriesKey
from shared.infra.admission import registered
from shared.infra.bus import read_subject
from tests.factories import candle
from tests.harness import StackFactory, eventually, small_config

KEYS = [SeriesKey("test", f"N{i}/USD", "1m") for i in range(6)]


async def test_only_the_first_max_series_get_regimes_and_the_rest_are_dead_lettered_with_the_reason(
    make_stack: StackFactory,
) -> None:
    st = await make_stack(small_config([("N0/USD", "CORE")], hmm={"HMM_ENABLED": True}))
    # Series appear in the order N0, N1, ... but their candles interleave after that.
    order = [(KEYS[j], i) for i in range(4) for j in range(len(KEYS)) if i >= j // 2]
    await st.start("vol_regime", max_series=3)
    await st.start("hmm_regime", max_series=3)
    await st.publish(candle(i, 10.0 + 0.01 * i, key=k) for k, i in order)
    kinds = tuple(MESSAGE_TYPES.values())

    async def regimes() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {"vol_regime": set(), "hmm_regime": set()}
        for subjects in (st.names.vol_all, st.names.hmm_all):
            for msg in await read_subject(st.js, st.names.stream_regimes, subjects, keep_last=0, decode_as=kinds):
                for event in events_in(msg):
                    out[type(event).KIND].add(event.symbol)
        return out

    async def refused() -> list[DeadLetter]:
        letters = await read_subject(st.js, st.names.stream_dlq, st.names.dlq_all, keep_last=0, decode_as=(DeadLetter,))
        return [d for d in letters if d.reason.startswith("series cap reached")]

    refused_candles = sum(1 for k, _ in order if k in KEYS[3:])
    letters = await eventually(lambda: _at_least(refused, 2 * refused_candles), timeout=30)
    admitted = {k.symbol for k in KEYS[:3]}
    assert await regimes() == {"vol_regime": admitted, "hmm_regime": admitted}
    assert {d.service for d in letters} == {"vol_regime", "hmm_regime"}
    assert all("MAX_SERIES=3" in d.reason for d in letters)
    kv = await st.js.key_value(st.names.bucket("series"))
    assert sorted(await kv.keys()) == sorted(k.token for k in KEYS)  # registered, refused ones included


async def test_a_restarted_service_keeps_refusing_what_it_refused(make_stack: StackFactory) -> None:
    st = await make_stack(small_config([("N0/USD", "CORE")]))
    await st.start("vol_regime", max_series=2)
    await st.publish(candle(0, 10.0, key=k) for k in KEYS[:4])
    await st.stop("vol_regime")
    await st.start("vol_regime", max_series=2)
    await st.publish(candle(1, 10.01, key=k) for k in KEYS[:4])

    async def vol_symbols() -> set[str]:
        msgs = await read_subject(st.js, st.names.stream_regimes, st.names.vol_all, keep_last=0,
                                  decode_as=tuple(MESSAGE_TYPES.values()))
        events = [e for m in msgs for e in events_in(m)]
        return {e.symbol for e in events} if len(events) >= 4 else set()

    assert await eventually(vol_symbols, timeout=30) == {KEYS[0].symbol, KEYS[1].symbol}


async def _at_least(read: object, n: int) -> list[DeadLetter] | None:
    got = await read()  # type: ignore[operator]
    return got if len(got) >= n else None


async def test_the_api_lists_the_admitted_series_a_page_at_a_time_and_refuses_bad_pages(
    make_stack: StackFactory,
) -> None:
    st = await make_stack(small_config([("N0/USD", "CORE")]))
    await st.start("vol_regime", max_series=3)
    await st.start("dashboard_api", max_series=3)
    await st.publish(candle(0, 10.0, key=k) for k in KEYS[:5])  # N3 and N4 come after the cap is reached
    base = f"http://127.0.0.1:{st.settings.api_port}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:

        async def listing() -> dict[str, Any] | None:
            body: dict[str, Any] = (await client.get("/api/series")).json()
            return body if body.get("registered") == 5 else None

        body = await eventually(listing, timeout=30)
        kv = await st.js.key_value(st.names.bucket("series"))
        firsts = [int((await kv.get(k.token)).value or b"0") for k in KEYS[:3]]
        assert body["admitted"] == 3
        assert body["max_series"] == 3
        assert body["next_offset"] is None
        assert body["series"] == [
            {"exchange": k.exchange, "symbol": k.symbol, "timeframe": k.timeframe, "first_seq": seq}
            for k, seq in zip(KEYS[:3], firsts, strict=True)
        ]
        assert firsts == sorted(firsts)

        first_page = (await client.get("/api/series", params={"limit": 2})).json()
        assert [s["symbol"] for s in first_page["series"]] == ["N0/USD", "N1/USD"]
        assert first_page["next_offset"] == 2
        last_page = (await client.get("/api/series", params={"limit": 2, "offset": 2})).json()
        assert [s["symbol"] for s in last_page["series"]] == ["N2/USD"]
        assert last_page["next_offset"] is None
        assert (await client.get("/api/series", params={"offset": 3})).json()["series"] == []

        for bad, named in (({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"offset": -1}, "offset"),
                           ({"limit": "many"}, "limit"), ({"cursor": "x"}, "cursor")):
            answer = await client.get("/api/series", params=bad)
            assert answer.status_code == 400, bad
            assert named in answer.json()["detail"], answer.json()


async def test_reading_the_registry_again_fetches_only_what_is_new_and_forgets_what_is_gone(
    make_stack: StackFactory,
) -> None:
    st = await make_stack(small_config([("N0/USD", "CORE")]))
    kv = await st.js.create_key_value(bucket=st.names.bucket("series"))
    for seq, k in enumerate(KEYS[:2], start=1):
        await kv.put(k.token, str(seq).encode())
    first = await registered(kv)
    await kv.put(KEYS[2].token, b"3")
    await kv.purge(KEYS[0].token)

    again = await registered(kv, first)

    assert again == await registered(kv) == {KEYS[1].token: 2, KEYS[2].token: 3}
