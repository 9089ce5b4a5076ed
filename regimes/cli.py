"""The ``regimes`` command: run the stack, one service, or feed it candles from files.

Every command that talks to a stack finds the one `regimes up` is running by
itself (its state file, see :mod:`regimes.stackfile`); ``--nats-url`` or
``NATS_URL`` choose another. With neither and no running stack it refuses
with a one-line hint instead of trying a default address.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from regimes import stackfile
from regimes.stackfile import NoStack, Resolved
from regimes.supervisor import SERVICES, Supervisor, UpOptions, parse_replicas
from services.ohlcv_ingest.replay import interleave
from shared.domain.config import StrategyConfig, load_strategy_config
from shared.domain.control import Heartbeat
from shared.domain.errors import ConfigError
from shared.domain.vocab import TIMEFRAMES_MS
from shared.infra.bus import now_ms
from shared.infra.settings import Settings
from shared.infra.telemetry import quiet_hmmlearn

OPERATOR = "operator"  # the user a person at a shell is: imports, replays, backfills


_Commands = argparse._SubParsersAction  # what add_subparsers returns


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="regimes", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _add_up(sub)
    run = sub.add_parser("run", help="run one service in the foreground against the running stack (or NATS_URL)")
    run.add_argument("service", choices=SERVICES)
    _stack_args(run)
    _add_file_commands(sub)
    _add_operations(sub)
    return p


def _add_up(sub: _Commands) -> None:
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
    up.add_argument("--replicas", nargs="+", default=[], metavar="NAME=N",
                    help="run N copies of a service (vol_regime, hmm_regime, screener, state_publisher)")


def _file_args(sp: argparse.ArgumentParser, exchange_help: str) -> None:
    """The candle files a command reads, and the series they are when their names do not say."""
    sp.add_argument("paths", nargs="+", type=Path, help="candle files, or a freqtrade data directory")
    sp.add_argument("--exchange", default="file", help=f"{exchange_help} (default: file)")
    sp.add_argument("--symbol", help="symbol such as BTC/USD (default: from a freqtrade file name)")
    sp.add_argument("--timeframe", choices=list(TIMEFRAMES_MS), help="(default: from a freqtrade file name)")


def _add_file_commands(sub: _Commands) -> None:
    for name, helptext in (
        ("replay", "publish candles from a file at a pace (CSV or freqtrade json/jsongz/feather/parquet)"),
        ("import", "publish candles from files or a freqtrade data directory as fast as possible"),
    ):
        sp = sub.add_parser(name, help=helptext)
        _file_args(sp, "exchange id to publish under")
        if name == "replay":
            sp.add_argument("--speed", type=float, default=60.0, help="x real time (default 60); 0: fastest")
        _stack_args(sp)
    config_help = "strategy config (default: $STRATEGY_CONFIG or the shipped one)"
    bt = sub.add_parser("backtest", help="the pure cores over candle files, no bus: the stack's events as JSON lines")
    _file_args(bt, "exchange id of the series")
    bt.add_argument("--config", type=Path, help=config_help)
    bt.add_argument("--out", type=Path, help="write the JSON lines here (default: stdout)")
    ev = sub.add_parser("evaluate", help="the pure cores over candle files, no bus: an HTML + PNG report per series")
    _file_args(ev, "exchange id of the series")
    ev.add_argument("--config", type=Path, help=config_help)
    ev.add_argument("--out", type=Path, required=True, help="directory for index.html and the per-series files")


def _add_operations(sub: _Commands) -> None:
    bf = sub.add_parser("backfill", help="ask ingest for deeper history of one series or all, with a progress bar")
    bf.add_argument("--series", help="exchange:symbol:timeframe (default: every series)")
    bf.add_argument("--target-candles", type=int, help="default HMM_TRAINING_CANDLES")
    bf.add_argument("--max-pages", type=int, help="default HMM_OHLCV_BACKFILL_MAX_PAGES")
    bf.add_argument("--timeout", type=float, default=300.0, help="seconds to wait per series (default 300)")
    _stack_args(bf)
    st = sub.add_parser("status", help="where the running stack is and what its services report")
    _stack_args(st)
    en = sub.add_parser("env", help='the running stack\'s URLs and one user\'s credentials: eval "$(regimes env)"')
    en.add_argument("--data-dir", type=Path, help="the stack whose data is in DIR (default: the last started)")
    en.add_argument("--user", default=OPERATOR, help=f"whose credentials: bot, {OPERATOR} (default), or a service")
    # Users and their permissions: regimes/security.py (from shared/domain/access.py).
    sec = sub.add_parser("secrets", help="generate every user's credentials and the servers' auth config")
    sec.add_argument("out", type=Path, nargs="?", default=Path("deploy/secrets"), help="default deploy/secrets")
    sec.add_argument("--namespace", default="", help="the stack's REGIMES_NAMESPACE")
    cc = sub.add_parser("check-config", help="validate a strategy config and print what it sets")
    cc.add_argument("path", type=Path, nargs="?", help="default: $STRATEGY_CONFIG or config/strategy_config.json")


def _stack_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--nats-url", help="this NATS instead of the running stack's (default: $NATS_URL, else the stack)")
    sp.add_argument("--data-dir", type=Path, help="the stack whose data is in DIR (default: the last started)")


def _offline(args: argparse.Namespace) -> int:
    """``backtest`` and ``evaluate``: the pure cores over candle files, no bus."""
    from regimes import feed

    try:
        cfg = _check(args.config or Settings.from_env().strategy_config)
        files = feed.load_files(args.paths, args.exchange, args.symbol, args.timeframe)
        candles = interleave(*feed.with_built(files, cfg))
    except (ConfigError, feed.FeedError) as exc:
        print(f"regimes: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    if args.command == "backtest":
        from regimes import backtest

        return backtest.run(candles, cfg, now_ms(), args.out)
    from regimes import report

    return report.main(candles, cfg, now_ms(), args.out)


def _replicas(items: list[str]) -> dict[str, int]:
    try:
        return parse_replicas(items)
    except ConfigError as exc:
        print(f"regimes: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _credentials(stack: stackfile.StackInfo, user: str, env: Mapping[str, str]) -> dict[str, str]:
    """``user``'s credential settings for ``stack`` (none when it runs without generated credentials)."""
    from regimes import security

    secrets = security.Secrets(Path(stack.data_dir) / "secrets")
    if not secrets.nats_auth.is_file():
        return {}
    return security.service_env(secrets, user, env.get("REDIS_URL"))


def find(args: argparse.Namespace, env: Mapping[str, str], home: Path) -> Resolved:
    """Where this command connects: flags, environment, then the running stack's state file."""
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        found = stackfile.read_state(data_dir / stackfile.STATE_NAME, stackfile.process_alive)
    else:
        found = stackfile.read_stack(stackfile.pointer_path(env, home), stackfile.process_alive)
    return stackfile.resolve(getattr(args, "nats_url", None), env, found)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "up":
        opts = UpOptions(
            host=args.host, port=args.port, nats_port=args.nats_port, redis_port=args.redis_port,
            nats_url=args.nats_url, redis_url=args.redis_url, data_dir=args.data_dir, config=args.config,
            namespace=args.namespace, services=tuple(args.only or SERVICES), replicas=_replicas(args.replicas),
        )
        if args.config is not None:
            _check(args.config)
        raise SystemExit(Supervisor(opts, os.environ, Path.home()).run())
    if args.command == "secrets":
        from regimes import security

        try:
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
    if args.command in ("backtest", "evaluate"):
        quiet_hmmlearn()
        raise SystemExit(_offline(args))
    try:
        where = find(args, os.environ, Path.home())
    except NoStack as exc:
        print(f"regimes: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.command == "env":
        # What a shell should use now: the running stack, whatever an older `eval` left in the environment.
        if where.running is None:
            print(f"regimes: no running stack: {stackfile.START_HINT}", file=sys.stderr)
            raise SystemExit(1)
        try:
            running = where.running.env()
            print(stackfile.export_line({**running, **_credentials(where.running, args.user, running)}))
        except ConfigError as exc:
            print(f"regimes: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        return
    env = where.env(os.environ)
    if where.stack is not None and "NATS_USER" not in os.environ:
        # A command on the running stack connects as the operator (a service run by hand: as itself).
        env.update(_credentials(where.stack, args.service if args.command == "run" else OPERATOR, env))
    if args.command == "run":
        os.environ.update(env)  # the service reads its settings from the environment, like in a container
        importlib.import_module(f"services.{args.service}.__main__").main()
        return
    raise SystemExit(_bus_command(args, where, env))


def _bus_command(args: argparse.Namespace, where: Resolved, env: Mapping[str, str]) -> int:
    import nats.errors

    from regimes import feed  # file and control commands need NATS; imported late to keep `up` light

    try:
        settings = Settings.from_env(env)
        if args.command == "status":
            return _status(where, asyncio.run(feed.health(settings)))
        if args.command in ("replay", "import"):
            speed = None if args.command == "import" or not args.speed else args.speed
            return asyncio.run(
                feed.publish_files(args.paths, args.exchange, args.symbol, args.timeframe, speed, settings)
            )
        return asyncio.run(feed.backfill(args.series, args.target_candles, args.max_pages, args.timeout, settings))
    except ConfigError as exc:
        print(f"regimes: {exc}", file=sys.stderr)
        return 2
    except feed.FeedError as exc:
        print(f"regimes: {exc}", file=sys.stderr)
        return 1
    except (nats.errors.NoServersError, nats.errors.TimeoutError, OSError, TimeoutError) as exc:
        hint = where.mismatch()
        more = f"; {hint}" if hint else ""
        print(f"regimes: cannot reach NATS at {where.nats_url} ({where.nats_source}): {exc or type(exc).__name__}"
              f"{more}", file=sys.stderr)
        return 1


def _status(where: Resolved, health: list[Heartbeat]) -> int:
    stack = where.stack
    if stack is not None:
        up = _duration(time.time() - stack.started_at)
        print(f"stack: pid {stack.pid}, up {up}, data in {stack.data_dir}")
        servers = ", ".join(f"{name} pid {pid}" for name, pid in stack.servers.items())
        if servers:
            print(f"  servers: {servers}")
    else:
        print(f"NATS from {where.nats_source} (not a stack `regimes up` recorded)")
        if hint := where.mismatch():
            print(f"  note: {hint}")
    print("  " + "  ".join(f"{k}={v}" for k, v in {
        "NATS_URL": where.nats_url, "REDIS_URL": where.redis_url, "API_URL": where.api_url,
    }.items() if v))
    if not health:
        print("services: none reporting")
        return 0
    print("services:")
    now = time.time() * 1000
    for rec in health:
        seen = _duration((now - rec.last_seen) / 1000)
        print(
            f"  {rec.service:<16} {rec.replica}  pid {rec.pid}  seen {seen} ago  "
            f"handled {rec.handled}  skipped {rec.skipped}  dead-lettered {rec.dead_lettered}"
        )
    return 0


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _check(path: Path) -> StrategyConfig:
    try:
        return load_strategy_config(path)
    except ConfigError as exc:
        print(f"regimes: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
