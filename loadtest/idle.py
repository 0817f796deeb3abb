"""``idle``: N joined connections that send nothing; server memory per connection.

Memory is read from /proc when the server runs on this machine: resident memory
before the connections open and after they are all joined (and have settled),
divided by N. The connections are then held open for ``hold`` seconds (answering
the server's pings), and any the server closed meanwhile are counted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from .context import Context, summary, tolerant, while_running
from .dialing import Failures
from .probe import rss_bytes
from .subscribers import SubscriberArgs, Subscribers
from .workers import Pool

CONNECT_TIMEOUT = 1800.0
CALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class IdleOptions:
    connections: int = 5000
    rooms: int = 1
    """Rooms the connections are dealt to."""
    room: str | None = None
    settle: float = 3.0
    """Seconds between the last join and the memory reading."""
    hold: float = 0.0
    """Seconds to keep the connections open after the reading."""


def total_rss(pids: tuple[int, ...]) -> int | None:
    try:
        return sum(rss_bytes(pid) for pid in pids) if pids else None
    except OSError:
        return None


async def run_idle(context: Context, options: IdleOptions) -> dict[str, Any]:
    target = context.target
    if options.room:
        rooms = [options.room]
    else:
        rooms = [context.room(f"idle{i}") for i in range(max(options.rooms, 1))]
    shares = context.deal(context.users("i", options.connections))
    before = total_rss(context.server_pids)
    args = [SubscriberArgs(target, rooms, s, context.concurrency) for s in shares]
    async with Pool(Subscribers, args) as pool:
        return await _run(context, options, pool, before, rooms)


async def _run(
    context: Context, options: IdleOptions, pool: Pool, before: int | None, rooms: list[str]
) -> dict[str, Any]:
    progress = context.progress
    await pool.call("prepare", limit=CONNECT_TIMEOUT)
    started = time.monotonic()
    open_now = 0

    async def tick() -> None:
        nonlocal open_now
        with tolerant():
            open_now = sum(s["open"] for s in await pool.call("snapshot", limit=CALL_TIMEOUT))
            rss = total_rss(context.server_pids)
            memory = f", server RSS {rss / 2**20:.0f} MB" if rss else ""
            progress.line(
                f"{time.monotonic() - started:5.1f}s {open_now} of {options.connections} "
                f"joined{memory}"
            )

    connected = await while_running(pool.call("connect", limit=CONNECT_TIMEOUT), tick)
    connect_seconds = time.monotonic() - started
    ready = sum(c["connected"] for c in connected)
    progress.note(f"{ready} of {options.connections} joined in {connect_seconds:.1f}s")
    await asyncio.sleep(options.settle)
    after = total_rss(context.server_pids)
    if options.hold > 0:
        hold_started = time.monotonic()
        await while_running(asyncio.sleep(options.hold), tick)
        progress.done()
        progress.note(f"held {time.monotonic() - hold_started:.0f}s")
    final = await pool.call("finish", 0, limit=CALL_TIMEOUT)
    report: dict[str, Any] = {
        "scenario": "idle",
        "protocol": context.target.protocol,
        "rooms": len(rooms),
        "connections": ready,
        "processes": len(pool),
        "connect_seconds": round(connect_seconds, 2),
        "connect_failures": Failures.merge([c["failures"] for c in connected]),
        "closed_by_server": Failures.merge([f["closed"] for f in final]),
    }
    if before is not None and after is not None:
        report["server_rss_before_mb"] = round(before / 2**20, 1)
        report["server_rss_after_mb"] = round(after / 2**20, 1)
        report["bytes_per_connection"] = round((after - before) / ready) if ready else None
    return summary(report)
