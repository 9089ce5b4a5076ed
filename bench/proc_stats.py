"""CPU and memory of processes from /proc: what bench_pipeline counts per service (a process and its children)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime+stime+cutime+cstime in clock ticks) of every process."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            f = text[text.rindex(")") + 2 :].split()
            out[int(stat.parent.name)] = (int(f[1]), sum(int(x) for x in f[11:15]))
    return out


def tree_cpu_us(pids: dict[str, int]) -> dict[str, float]:
    """CPU µs so far of each named process and all its descendants (hmm_regime's training worker)."""
    table = proc_table()
    out = {}
    for name, root in pids.items():
        seen, todo = {root}, [root]
        while todo:
            parent = todo.pop()
            kids = [p for p, (pp, _) in table.items() if pp == parent and p not in seen]
            seen.update(kids)
            todo.extend(kids)
        out[name] = sum(table[p][1] for p in seen if p in table) * TICK_US
    return out


def rss_mb(pid: int) -> float:
    """VmRSS of one process, MB; 0 when it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def until_quiet(pids: dict[str, int], limit: float) -> None:
    """Until the processes together have used under a tenth of a core for a second (at most ``limit`` s)."""
    deadline = time.monotonic() + limit
    quiet_since, last = time.monotonic(), sum(tree_cpu_us(pids).values())
    while time.monotonic() - quiet_since < 1.0 and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = sum(tree_cpu_us(pids).values())
        if now - last > 25_000:  # more than 10 % of a core in the last 0.25 s
            quiet_since = time.monotonic()
        last = now
