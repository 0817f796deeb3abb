"""``fanout``: one room, S subscribers, publishers at an offered rate R.

Figures: deliveries/s received, latency from publish to receipt (p50/p90/p99/max),
lost, duplicated and reordered deliveries by seq, send→ack latency, the CPU the
generator spent (per process) and, when it runs on this machine, the server's.
The measured window runs from the first publish until the last delivery (or the
end of the drain).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from .context import Context, owner_of, summary, tolerant, usage_text, while_running
from .dialing import Failures
from .progress import rate
from .publishers import Publishers, open_publishers, pace, publisher_count
from .stats import Histogram, SeqTotals
from .subscribers import SubscriberArgs, Subscribers
from .workers import Pool

CONNECT_TIMEOUT = 600.0
CALL_TIMEOUT = 30.0
DRAIN_POLL = 0.1


@dataclass(frozen=True)
class FanoutOptions:
    subscribers: int = 1000
    rate: float = 100.0
    """Messages per second offered to the room."""
    duration: float = 10.0
    payload: int = 100
    """Bytes of each message's body."""
    publishers: int = 0
    """Publisher connections (0: one per 40 messages/s, under realtime's rate limit)."""
    room: str | None = None
    drain: float = 10.0
    """Seconds to wait, after the last publish, for deliveries still on their way."""
    read_interval: float = 0.0
    """Seconds between reads of the subscriber sockets (0: as soon as readable)."""


class _Totals:
    """Deliveries so far, from the processes' snapshots."""

    def __init__(self) -> None:
        self.received = 0
        self.latency = Histogram()
        self.open = 0

    def update(self, snapshots: list[dict[str, Any]]) -> Histogram:
        """Take new snapshots; returns the latency histogram of what arrived since."""
        latency = Histogram()
        for snapshot in snapshots:
            latency.merge(snapshot["latency"])
        window = latency.minus(self.latency) if self.latency.total else latency
        self.latency = latency
        self.received = latency.total
        self.open = sum(s["open"] for s in snapshots)
        return window


async def run_fanout(context: Context, options: FanoutOptions) -> dict[str, Any]:
    target = context.target
    room = options.room or context.room("fanout")
    users = context.users("s", options.subscribers)
    shares = context.deal(users)
    args = [
        SubscriberArgs(target, [room], share, context.concurrency, options.read_interval)
        for share in shares
    ]
    async with Pool(Subscribers, args) as pool:
        return await _run(context, options, pool, room)


async def _run(context: Context, options: FanoutOptions, pool: Pool, room: str) -> dict[str, Any]:
    progress = context.progress
    meter = context.meter(pool)
    totals = _Totals()
    await pool.call("prepare", limit=CONNECT_TIMEOUT)
    connect_started = time.monotonic()

    async def connecting() -> None:
        with tolerant():
            totals.update(await pool.call("snapshot", limit=CALL_TIMEOUT))
            progress.line(
                f"connecting: {totals.open} of {options.subscribers} subscribers joined "
                f"({time.monotonic() - connect_started:.0f}s)"
            )

    connected = await while_running(pool.call("connect", limit=CONNECT_TIMEOUT), connecting)
    ready = sum(c["connected"] for c in connected)
    connect_seconds = time.monotonic() - connect_started
    progress.note(f"{ready} of {options.subscribers} subscribers joined in {connect_seconds:.1f}s")
    owner = owner_of(room)
    count = options.publishers or publisher_count(
        options.rate, context.target.protocol, one_user=owner is not None
    )
    users = [owner] * count if owner else context.users("pub", count)
    publishers = await open_publishers(context.target, users, room, options.payload)
    # Reads from here on: the set-up's (presence pushes, say) do not count.
    reads_before = sum(s["reads"] for s in await pool.call("snapshot", limit=CALL_TIMEOUT))
    meter.sample()
    meter.start()
    started = time.monotonic()

    async def tick() -> None:
        usage = meter.sample()
        with tolerant():
            window = totals.update(await pool.call("snapshot", limit=CALL_TIMEOUT))
            _progress_line(context, started, publishers, totals, window, usage)

    publishing = pace(publishers.publish, options.rate, options.duration, lambda: stats.sent)
    stats = publishers.stats
    publish_seconds = await while_running(publishing, tick)
    await tick()
    last_delivery = await _drain(pool, publishers, totals, ready, options.drain)
    meter.stop()
    progress.done()
    final = await pool.call("finish", stats.last_seq, limit=CALL_TIMEOUT)
    await publishers.close()
    latency = Histogram()
    seq = SeqTotals()
    closed: list[dict[str, int]] = []
    reads = sum(result["reads"] for result in final) - reads_before
    for result in final:
        latency.merge(result["latency"])
        seq.merge(result["seq"])
        closed.append(result["closed"])
    received = latency.total
    expected = stats.acked * ready
    elapsed = (last_delivery or time.monotonic()) - started
    report: dict[str, Any] = {
        "scenario": "fanout",
        "protocol": context.target.protocol,
        "room": room,
        "instances": len(context.target.urls),
        "subscribers": ready,
        "connect_seconds": round(connect_seconds, 3),
        "connect_failures": Failures.merge([c["failures"] for c in connected]),
        "offered_rate": options.rate,
        "payload_bytes": options.payload,
        "read_interval_ms": options.read_interval * 1000,
        "publishers": publishers.connections,
        **stats.report(),
        "publish_seconds": round(publish_seconds, 3),
        "duration_s": round(elapsed, 3),
        "deliveries": received,
        "expected_deliveries": expected,
        "delivered_ratio": round(received / expected, 6) if expected else 0.0,
        "deliveries_per_s": round(received / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": latency.summary_ms(),
        "frames_per_read": round(received / reads, 2) if reads else None,
        "lost": seq.lost,
        "duplicated": seq.duplicated,
        "reordered": seq.reordered,
        "closed_during_run": Failures.merge(closed),
        "generator": meter.report(received),
        "server": meter.server_report(received),
        **meter.flat(received),
        "warnings": meter.warnings(),
    }
    for warning in report["warnings"]:
        context.progress.note(f"warning: {warning}")
    return summary(report)


async def _drain(
    pool: Pool, publishers: Publishers, totals: _Totals, ready: int, drain: float
) -> float | None:
    """Wait for acks and deliveries still on their way; when the last one came."""
    stats = publishers.stats
    deadline = time.monotonic() + drain
    last_change: float | None = None
    seen = -1
    while time.monotonic() < deadline:
        with tolerant():
            totals.update(await pool.call("snapshot", limit=CALL_TIMEOUT))
        if totals.received != seen:
            seen, last_change = totals.received, time.monotonic()
        if not publishers.unanswered and totals.received >= stats.acked * min(ready, totals.open):
            break
        await asyncio.sleep(DRAIN_POLL)
    return last_change


def _progress_line(
    context: Context,
    started: float,
    publishers: Publishers,
    totals: _Totals,
    window: Histogram,
    usage: dict[str, float],
) -> None:
    stats = publishers.stats
    latency = window.summary_ms()
    errors = f" errors {stats.error_count}" if stats.errors else ""
    context.progress.line(
        f"{time.monotonic() - started:5.1f}s sent {stats.sent} acked {stats.acked}{errors} | "
        f"delivered {totals.received} ({rate(window.total)}/s) p50 {latency['p50']}ms "
        f"p99 {latency['p99']}ms max {latency['max']}ms | open {totals.open} | "
        f"{usage_text(usage)}"
    )
