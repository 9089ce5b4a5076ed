"""The ``regimes`` command: run the stack, one service, or feed it candles from files."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path

from regimes.supervisor import SERVICES, Supervisor, UpOptions
from services.ohlcv_ingest.replay import interleave
from shared.domain.config import StrategyConfig, load_strategy_config
from shared.domain.errors import ConfigError
from shared.domain.vocab import TIMEFRAMES_MS
from shared.infra.bus import now_ms
from shared.infra.settings import Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="regimes", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="embedded NATS + Redis and all six services, with the demo market")
    up.add_argument("--host", default="127.0.0.1", help="dashboard/API address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="dashboard/API port (default 8000)")
    up.add_argument("--nats-port", type=int, default=0, help="embedded nats-server port (default: a free one)")
    up.add_argument("--redis-port", type=int, default=0, help="embedded Redis port (default: a free one)")
    up.add_argument("--nats-url", help="use this NATS (JetStream on) instead of starting one")
    up.add_argument("--redis-url", help="use this Redis instead of starting one")
    up.add_argument("--data-dir", type=Path, help="keep JetStream data here across runs (default: a fresh temp dir)")
    up.add_argument("--config", type=Path, help="strategy config (default config/strategy_config.json)")
    up.add_argument("--namespace", default="", help="prefix for every subject, stream, bucket and Redis key")
    up.add_argument("--only", nargs="+", choices=SERVICES, help="start only these services")

    run = sub.add_parser("run", help="run one service in the foreground (settings from the environment)")
    run.add_argument("service", choices=SERVICES)

    for name, helptext in (
        ("replay", "publish candles from a file at a pace (CSV or freqtrade json/jsongz/feather/parquet)"),
        ("import", "publish candles from files or a freqtrade data directory as fast as possible"),
    ):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("paths", nargs="+", type=Path, help="candle files, or a freqtrade data directory")
        sp.add_argument("--exchange", default="file", help="exchange id to publish under (default: file)")
        sp.add_argument("--symbol", help="symbol such as BTC/USD (default: from a freqtrade file name)")
        sp.add_argument("--timeframe", choices=list(TIMEFRAMES_MS), help="(default: from a freqtrade file name)")
        if name == "replay":
            sp.add_argument("--speed", type=float, default=60.0, help="x real time (default 60); 0: fastest")

    bt = sub.add_parser("backtest", help="the pure cores over candle files, no bus: the stack's events as JSON lines")
    bt.add_argument("paths", nargs="+", type=Path, help="candle files, or a freqtrade data directory")
    bt.add_argument("--exchange", default="file", help="exchange id of the series (default: file)")
    bt.add_argument("--symbol", help="symbol such as BTC/USD (default: from a freqtrade file name)")
    bt.add_argument("--timeframe", choices=list(TIMEFRAMES_MS), help="(default: from a freqtrade file name)")
    bt.add_argument("--config", type=Path, help="strategy config (default: $STRATEGY_CONFIG or the shipped one)")
    bt.add_argument("--out", type=Path, help="write the JSON lines here (default: stdout)")

    ev = sub.add_parser("evaluate", help="the pure cores over candle files, no bus: an HTML + PNG report per series")
    ev.add_argument("paths", nargs="+", type=Path, help="candle files, or a freqtrade data directory")
    ev.add_argument("--exchange", default="file", help="exchange id of the series (default: file)")
    ev.add_argument("--symbol", help="symbol such as BTC/USD (default: from a freqtrade file name)")
    ev.add_argument("--timeframe", choices=list(TIMEFRAMES_MS), help="(default: from a freqtrade file name)")
    ev.add_argument("--config", type=Path, help="strategy config (default: $STRATEGY_CONFIG or the shipped one)")
    ev.add_argument("--out", type=Path, required=True, help="directory for index.html and the per-series files")

    bf = sub.add_parser("backfill", help="ask ingest for deeper history (the seed's /backfill_ohlcv)")
    bf.add_argument("--series", help="exchange:symbol:timeframe (default: every series)")
    bf.add_argument("--target-candles", type=int, help="default HMM_TRAINING_CANDLES")
    bf.add_argument("--max-pages", type=int, help="default HMM_OHLCV_BACKFILL_MAX_PAGES")
    bf.add_argument("--timeout", type=float, default=300.0, help="seconds to wait per series (default 300)")

    # Users and their permissions: regimes/security.py (from shared/domain/access.py).
    ev = sub.add_parser("env", help="print the exports a client needs to connect as one of the stack's users")
    ev.add_argument("--user", required=True, help="bot, operator, or a service's name")
    ev.add_argument("--data-dir", type=Path, required=True, help="the data directory `regimes up` printed")
    sec = sub.add_parser("secrets", help="generate every user's credentials and the servers' auth config")
    sec.add_argument("out", type=Path, nargs="?", default=Path("deploy/secrets"), help="default deploy/secrets")
    sec.add_argument("--namespace", default="", help="the stack's REGIMES_NAMESPACE")

    cc = sub.add_parser("check-config", help="validate a strategy config and print what it sets")
    cc.add_argument("path", type=Path, nargs="?", help="default: $STRATEGY_CONFIG or config/strategy_config.json")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "up":
        opts = UpOptions(
            host=args.host, port=args.port, nats_port=args.nats_port, redis_port=args.redis_port,
            nats_url=args.nats_url, redis_url=args.redis_url, data_dir=args.data_dir, config=args.config,
            namespace=args.namespace, services=tuple(args.only or SERVICES),
        )
        if args.config is not None:
            _check(args.config)
        raise SystemExit(Supervisor(opts).run())
    if args.command == "run":
        importlib.import_module(f"services.{args.service}.__main__").main()
        return
    if args.command in ("env", "secrets"):
        from regimes import security

        try:
            if args.command == "env":
                print(security.env_command(args.user, args.data_dir), end="")
            else:
                print(security.secrets_command(args.out, args.namespace))
        except ConfigError as exc:
            print(f"regimes: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        return
    if args.command == "check-config":
        path = args.path or Settings.from_env().strategy_config
        cfg = _check(path)
        print(f"{path}: ok")
        print(f"  universe: {len(cfg.universe)} series ({', '.join(s.key.id for s in cfg.universe)})")
        print(f"  vol windows: {cfg.vol.short_window_bars}/{cfg.vol.long_window_bars} bars")
        print(f"  HMM: {'on' if cfg.hmm.enabled else 'off'}, blend {cfg.hmm.blend_with_trend}")
        return
    from regimes import feed  # file and control commands need NATS; imported late to keep `up` light

    try:
        if args.command == "backtest":
            from regimes import backtest

            cfg = _check(args.config or Settings.from_env().strategy_config)
            candles = interleave(*feed.load_files(args.paths, args.exchange, args.symbol, args.timeframe))
            raise SystemExit(backtest.run(candles, cfg, now_ms(), args.out))
        if args.command == "evaluate":
            from regimes import report

            cfg = _check(args.config or Settings.from_env().strategy_config)
            candles = interleave(*feed.load_files(args.paths, args.exchange, args.symbol, args.timeframe))
            raise SystemExit(report.main(candles, cfg, now_ms(), args.out))
        if args.command in ("replay", "import"):
            speed = None if args.command == "import" or not args.speed else args.speed
            code = asyncio.run(feed.publish_files(args.paths, args.exchange, args.symbol, args.timeframe, speed))
        else:
            code = asyncio.run(feed.backfill(args.series, args.target_candles, args.max_pages, args.timeout))
    except ConfigError as exc:
        print(f"regimes: {exc}", file=sys.stderr)
        code = 2
    except feed.FeedError as exc:
        print(f"regimes: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


def _check(path: Path) -> StrategyConfig:
    try:
        return load_strategy_config(path)
    except ConfigError as exc:
        print(f"regimes: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
