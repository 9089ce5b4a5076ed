"""How bench_pipeline prints a case's figures: a block per case as it ends, and the summary table."""

from __future__ import annotations

from typing import Any

# The processes of the table's CPU columns, in order.
CPU_COLUMNS = ("vol_regime", "hmm_regime", "screener", "state_publisher", "nats-server", "import")


def fmt(value: Any, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def block(res: dict[str, Any]) -> list[str]:
    """One case's figures as lines."""
    if "error" in res:
        return [f"[{res['case']}] FAILED: {res['error']}"]
    if "decision" in res:
        return [
            f"[{res['case']}] {res['series']} series warmed with {res['warm_bars']} candles, then one each at once",
            f"  all acked in {res['published_s'] * 1000:,.0f} ms; decided {res['decided']}, "
            f"in Redis {res['in_redis']}; all in Redis after {fmt(res['all_in_redis_s'], ',.2f')} s",
            *(
                f"  candle -> {k:8}: p50 {fmt(res[k]['p50_ms'])} ms, p99 {fmt(res[k]['p99_ms'])} ms, "
                f"max {fmt(res[k]['max_ms'])} ms"
                for k in ("vol", "hmm", "decision", "redis")
                if k in res
            ),
            "  CPU µs per series (the burst and the state writes after it, until 1 s quiet): "
            + ", ".join(f"{n} {v:,.0f}" for n, v in res.get("cpu_us_per_series", {}).items()),
        ]
    if "import" not in res:
        return [
            f"[{res['case']}] dashboard_api over {res['series']} series, wrk 16 connections x {res['seconds']} s",
            *(
                f"  {k:8}: {fmt(res[k]['rps'], ',.1f')} req/s, p99 {fmt(res[k]['p99_ms'], ',.1f')} ms, "
                f"API CPU {res[k]['api_cpu_s']:.1f} s"
                for k in ("symbols", "status", "symbol")
            ),
            f"  /api/symbols: {res['symbols_bytes']:,} bytes; {res['symbols_bytes_gzip']:,} with gzip accepted",
        ]
    imp, bare, bt = res["import"], res["bare_consumer"], res.get("backtest")
    lines = [
        f"[{res['case']}] {res['series']} series x {res['bars']} candles = {res['candles']:,} candles",
        f"  import: {fmt(imp['reported_rate'])} candles/s reported, {imp['wall_s']:.1f} s wall",
        f"  end to end: {res['e2e_s']:.2f} s = {res['e2e_rate']:,.0f} candles/s from the first publish; "
        f"{res['from_command_s']:.2f} s = {res['candles'] / res['from_command_s']:,.0f} candles/s from the"
        " import command's start",
        "  CPU µs/candle: " + ", ".join(f"{n} {v:,.0f}" for n, v in res["cpu_us_per_candle"].items()),
        "  candles/s until last output: " + ", ".join(f"{n} {fmt(v)}" for n, v in res["service_rate"].items()),
        "  output messages: " + ", ".join(f"{n} {v:,}" for n, v in res["output_messages"].items()),
        "  RSS MB: " + ", ".join(f"{n} {v:.0f}" for n, v in res["rss_mb"].items()),
        f"  hmm_regime RSS growth: {res['hmm_bytes_per_series']:,.0f} bytes/series",
        f"  bare nats-py pull consumer (fetch 500, await ack), {bare['messages']:,} OHLCV messages: "
        f"{fmt(bare['msgs_per_s'])} msgs/s = {fmt(bare['candles_per_s'])} candles/s",
    ]
    if bt is not None:
        lines.append(
            f"  decisions equal backtest: {'yes' if bt['equal'] else 'no'} ({bt['compared']:,} compared, "
            f"{bt['stack']:,} in the stack)"
        )
    return lines


def print_block(res: dict[str, Any]) -> None:
    print("\n" + "\n".join(block(res)), flush=True)


def table_row(res: dict[str, Any]) -> str:
    """One case in the summary table."""
    if "error" in res:
        return f"{res['case']:>10}  FAILED"
    if "decision" in res:
        d, rd = res["decision"], res["redis"]
        return (
            f"{res['case']:>10}  candle->decision p50/p99/max {fmt(d['p50_ms'])}/{fmt(d['p99_ms'])}/"
            f"{fmt(d['max_ms'])} ms, ->Redis {fmt(rd['p50_ms'])}/{fmt(rd['p99_ms'])}/{fmt(rd['max_ms'])} ms, "
            f"all in Redis {fmt(res['all_in_redis_s'], ',.2f')} s"
        )
    if "import" not in res:
        return f"{res['case']:>10}  " + ", ".join(
            f"{k} {fmt(res[k]['rps'], ',.0f')} req/s p99 {fmt(res[k]['p99_ms'], ',.0f')} ms"
            for k in ("symbols", "status", "symbol")
        )
    cpu, bt = res["cpu_us_per_candle"], res.get("backtest")
    cols = "".join(f"{cpu[n]:>7,.0f}" for n in CPU_COLUMNS)
    check = "-" if bt is None else "yes" if bt["equal"] else "NO"
    return (
        f"{res['case']:>10}{res['candles']:>9,}{fmt(res['import']['reported_rate']):>9}{res['e2e_rate']:>7,.0f}"
        f"{cols}{res['hmm_bytes_per_series']:>11,.0f}{fmt(res['bare_consumer']['msgs_per_s']):>8}{check:>4}"
    )


def print_table(results: list[dict[str, Any]]) -> None:
    """The summary: bulk rows give import and e2e candles/s, CPU µs per candle per process, hmm_regime bytes
    per series, the bare consumer's msgs/s and whether decisions equal the backtest."""
    print("\n" + "=" * 105)
    print(f"{'':>10}{'':>9}{'--- candles/s':<16}{'--- CPU µs per candle':<42}")
    print(
        f"{'case':>10}{'candles':>9}{'import':>9}{'e2e':>7}{'vol':>7}{'hmm':>7}{'scr':>7}{'pub':>7}{'nats':>7}"
        f"{'import':>7}{'hmm B/ser':>11}{'bare/s':>8}{'bt':>4}"
    )
    for res in results:
        print(table_row(res))
