"""What nats-server itself spends per JetStream operation the stack makes: the floor under a live candle's cost.

Run: ``.venv/bin/python bench/bench_nats_ops.py`` (about 20 s; ``--messages N``
per case, default 20,000). It starts its own nats-server on a free port in a
temp dir and, through the stack's own publish pipeline
(``shared.infra.acks.AckPipeline``, what every service publishes with), stores
300-byte messages the ways the stack does:

- into a file stream with a ``Nats-Msg-Id`` (every candle, regime event and
  decision), and without one, and into a memory stream for comparison;
- as KV writes (history 1, the per-series state buckets) over 1,000 keys
  rewritten, and over keys each written once;
- then delivers the first stream to a pull consumer with ``AckPolicy.NONE``,
  batches of 1,000, as the consume loop fetches.

For each it prints the server's CPU µs per message (from ``/proc``, user +
system) and the client's wall µs per message. A live candle costs about seven
stored messages (the candle, a vol and an HMM event, a decision, three state
writes) and seven deliveries (two of the candle, two of each event, one of
the decision), so multiply to compare with ``bench_pipeline.py``'s burst figure
for nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nats
from nats.js import api

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regimes.servers import start_nats
from shared.infra.acks import AckPipeline, Publish

PAYLOAD = b"x" * 300  # about a regime event's size
WINDOW = 1000  # messages sent before their acks are awaited


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stored(acks: AckPipeline, pid: int, n: int, make: Callable[[int], Publish]) -> tuple[float, float]:
    """Server CPU µs and client wall µs per message for ``n`` publishes of ``make(i)``, WINDOW at a time."""
    await asyncio.sleep(0.3)  # let the server's own housekeeping of the last case pass
    cpu0, t0 = server_cpu_s(pid), time.perf_counter()
    for start in range(0, n, WINDOW):
        await acks.send([make(i) for i in range(start, min(n, start + WINDOW))])
    wall = time.perf_counter() - t0
    await asyncio.sleep(0.3)
    return (server_cpu_s(pid) - cpu0) * 1e6 / n, wall * 1e6 / n


async def delivered(js: nats.js.JetStreamContext, pid: int, stream: str, subjects: str, n: int) -> float:
    """Server CPU µs per message delivering ``n`` stored messages to a pull consumer, WINDOW per fetch."""
    cfg = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE)
    sub = await js.pull_subscribe(subjects, durable="bench", stream=stream, config=cfg)
    cpu0, got = server_cpu_s(pid), 0
    while got < n:
        got += len(await sub.fetch(WINDOW, timeout=5))
    await asyncio.sleep(0.3)
    return (server_cpu_s(pid) - cpu0) * 1e6 / got


async def run(n: int, url: str, pid: int) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(api.StreamConfig(name="F", subjects=["f.>"], storage=api.StorageType.FILE,
                                             duplicate_window=600.0))
        await js.add_stream(api.StreamConfig(name="M", subjects=["m.>"], storage=api.StorageType.MEMORY,
                                             duplicate_window=600.0))
        await js.create_key_value(api.KeyValueConfig(bucket="state", history=1))
        acks = AckPipeline(nc, timeout=60.0)
        cases: list[tuple[str, Callable[[int], Publish]]] = [
            ("file stream, Nats-Msg-Id", lambda i: Publish(f"f.s{i % 1000}", PAYLOAD, {"Nats-Msg-Id": f"a{i}"})),
            ("file stream, no msg id", lambda i: Publish(f"f.t{i % 1000}", PAYLOAD)),
            ("memory stream, Nats-Msg-Id", lambda i: Publish(f"m.s{i % 1000}", PAYLOAD, {"Nats-Msg-Id": f"b{i}"})),
            ("KV write, 1,000 keys rewritten", lambda i: Publish(f"$KV.state.k{i % 1000}", PAYLOAD)),
            ("KV write, every key new", lambda i: Publish(f"$KV.state.n{i}", PAYLOAD)),
        ]
        print(f"{'operation':34s} {'server CPU µs/msg':>18s} {'client wall µs/msg':>19s}")
        for name, make in cases:
            cpu, wall = await stored(acks, pid, n, make)
            print(f"{name:34s} {cpu:18.1f} {wall:19.1f}", flush=True)
        cpu = await delivered(js, pid, "F", "f.>", n)
        print(f"{'pull delivery (AckPolicy.NONE)':34s} {cpu:18.1f}")
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per case (default 20,000)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-nats-"))
    server = start_nats(tmp)
    try:
        print(f"bench_nats_ops: {os.cpu_count()} CPUs, load {', '.join(f'{x:.2f}' for x in os.getloadavg())}, "
              f"{args.messages:,} messages per case")
        asyncio.run(run(args.messages, server.url, server.proc.pid))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
