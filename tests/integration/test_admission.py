"""The stack admits the first MAX_SERIES series to appear in the candle stream; later ones are dead-lettered."""

from __future__ import annotations

from shared.domain.contracts import MESSAGE_TYPES, DeadLetter, events_in
from shared.domain.subjects import SeriesKey
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
