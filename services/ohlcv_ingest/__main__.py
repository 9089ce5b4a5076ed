"""ohlcv_ingest: closed candles from the demo market or exchanges into stream OHLCV, plus pipeline telemetry.

Sources by the universe's exchange id: ``demo`` is the built-in demo market;
any other id is a ccxt exchange, synced every HMM_OHLCV_SYNC_INTERVAL_SEC and
backfilled at start. Operators ask for deeper backfills on ``control.backfill``
(the API's POST /api/backfill and ``regimes backfill`` use it).
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import Any

from services.ohlcv_ingest.exchange import make_exchange
from services.ohlcv_ingest.sources import SERVICE, ExchangeFactory, Ingest, log, on_msg, run_demo, run_exchange
from shared.domain.subjects import SeriesKey
from shared.infra.service import Runtime, run


async def build_with(factory: ExchangeFactory, rt: Runtime) -> list[Any]:
    if not rt.config.hmm.ohlcv_enabled:
        log.warning("HMM_OHLCV_ENABLED is false: ingest publishes nothing")
        return []
    ing = Ingest(rt)
    await ing.load_books()
    await rt.nc.subscribe(rt.names.ohlcv_all, cb=on_msg(ing.observe))
    await rt.nc.subscribe(rt.names.control("backfill"), cb=ing.on_backfill_request)
    groups: dict[tuple[str, str], list[SeriesKey]] = defaultdict(list)
    for spec in rt.config.universe:
        groups[(spec.key.exchange, spec.key.timeframe if spec.key.exchange == "demo" else "")].append(spec.key)
    tasks: list[Any] = [ing.telemetry()]
    for (exchange_id, _tf), keys in groups.items():
        if exchange_id == "demo":
            tasks.append(run_demo(ing, keys))
        else:
            tasks.append(run_exchange(ing, exchange_id, keys, factory))
    return tasks


build = partial(build_with, make_exchange)


def main() -> None:
    run(SERVICE, build)


if __name__ == "__main__":
    main()
