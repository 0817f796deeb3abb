"""``connect``: N clients connecting and joining a room at once, then a reconnect storm.

Phase 1: every client opens its connection and joins at the same instant (all
processes start together); a failed attempt is retried after ``retry_interval``
(with jitter) until the phase's deadline. Phase 2: with ``restart_command``,
every client reconnects as soon as the server drops it while the command
restarts the server; without it, the generator closes every client and
reconnects them all at once. Figures per phase: time until all were connected
and joined, percentiles of each client's time, attempts, failures by kind, and
clients that never made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .context import Context, summary, tolerant, while_running
from .cpu import CpuMeter
from .dialing import CONNECT_ERRORS, Failures
from .fastws import FastConnection
from .stats import Histogram
from .target import Target
from .workers import Pool, Worker
from .wsclient import RealtimeClient

CALL_TIMEOUT = 30.0
START_DELAY = 0.5
"""Seconds between the parent's go and the common start, for every process to hear it."""
SETTLED = 5.0
"""Seconds after the restart command without a new drop that end the wait."""
POLL = 0.1


@dataclass(frozen=True)
class ConnectOptions:
    clients: int = 1000
    room: str | None = None
    restart_command: str | None = None
    restart_timeout: float = 120.0
    timeout: float = 120.0
    retry_interval: float = 0.5


@dataclass(frozen=True)
class StormArgs:
    target: Target
    room: str
    members: list[tuple[int, str]]
    retry_interval: float = 0.5
    concurrency: int = 1_000_000


@dataclass
class Seat:
    index: int
    user: str
    tokens: tuple[str, str]
    client: RealtimeClient | None = None
    dropped_at: float | None = None
    joined_at: float | None = None


@dataclass
class PhaseTally:
    attempts: int = 0
    failures: Failures = field(default_factory=Failures)
    times: Histogram = field(default_factory=Histogram)
    """µs from the phase's start (or the client's drop) to joined."""
    last: float = 0.0
    """Latest join, seconds after the phase's start."""
    joined: int = 0
    gave_up: int = 0

    def result(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "failures": self.failures.kinds,
            "times": self.times,
            "last": self.last,
            "joined": self.joined,
            "gave_up": self.gave_up,
        }


class Storm(Worker[StormArgs]):
    def __init__(self, args: StormArgs) -> None:
        super().__init__(args)
        self.seats: list[Seat] = []
        self.tally = PhaseTally()
        self.origin = 0.0
        self.dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._gate = asyncio.Semaphore(max(args.concurrency, 1))

    async def rpc_prepare(self) -> int:
        tokens = self.args.target.tokens
        room = self.args.room
        self.seats = [
            Seat(index, user, (tokens.user(user), tokens.room(user, room)))
            for index, user in self.args.members
        ]
        return len(self.seats)

    async def _join(self, seat: Seat, deadline: float) -> bool:
        """Connect and join, retrying until ``deadline``; whether it made it."""
        tally = self.tally
        target = self.args.target
        while True:
            tally.attempts += 1
            try:
                async with self._gate, asyncio.timeout(max(deadline - time.monotonic(), 0.01)):
                    client = await RealtimeClient.open(
                        target, seat.index, seat.tokens[0], FastConnection
                    )
                    try:
                        await client.command("join", room=self.args.room, token=seat.tokens[1])
                    except BaseException:
                        client.connection.abort()
                        raise
                seat.client = client
                now = time.monotonic()
                seat.joined_at = now
                since = seat.dropped_at if seat.dropped_at is not None else self.origin
                tally.times.add(int((now - since) * 1e6))
                tally.last = max(tally.last, now - self.origin)
                tally.joined += 1
                return True
            except CONNECT_ERRORS as error:
                tally.failures.add(error)
            pause = self.args.retry_interval * random.uniform(0.5, 1.5)
            if time.monotonic() + pause >= deadline:
                tally.gave_up += 1
                return False
            await asyncio.sleep(pause)

    async def rpc_phase(self, start_at: float, deadline: float) -> dict[str, Any]:
        """Every client at ``start_at`` (monotonic, shared by the processes)."""
        self.tally = PhaseTally()
        self.origin = start_at
        await asyncio.sleep(max(start_at - time.monotonic(), 0))
        await asyncio.gather(*(self._join(seat, deadline) for seat in self.seats))
        return self.tally.result()

    async def rpc_arm(self, origin: float, deadline: float) -> int:
        """From now on a client the server drops reconnects at once, until ``deadline``."""
        self.tally = PhaseTally()
        self.origin = origin
        self.dropped = 0
        armed = 0
        for seat in self.seats:
            if seat.client is not None and not seat.client.connection.closed.done():
                seat.client.connection.closed.add_done_callback(self._on_drop(seat, deadline))
                armed += 1
        return armed

    def _on_drop(self, seat: Seat, deadline: float) -> Callable[[object], None]:
        return lambda _: self._dropped(seat, deadline)

    def _dropped(self, seat: Seat, deadline: float) -> None:
        self.dropped += 1
        seat.dropped_at = time.monotonic()
        seat.client = None
        task = asyncio.create_task(self._rejoin(seat, deadline))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _rejoin(self, seat: Seat, deadline: float) -> None:
        await self._join(seat, deadline)

    async def rpc_snapshot(self) -> dict[str, Any]:
        return {
            "joined": self.tally.joined,
            "gave_up": self.tally.gave_up,
            "attempts": self.tally.attempts,
            "dropped": self.dropped,
            "open": sum(
                1 for s in self.seats if s.client and not s.client.connection.closed.done()
            ),
        }

    async def rpc_collect(self) -> dict[str, Any]:
        return {**self.tally.result(), "dropped": self.dropped}

    async def rpc_close_all(self) -> int:
        """Close every client (close handshake, bounded), forgetting the drops."""
        clients = [s.client for s in self.seats if s.client is not None]
        for seat in self.seats:
            seat.client = None
            seat.dropped_at = None
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        return len(clients)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for seat in self.seats:
            if seat.client is not None:
                seat.client.connection.abort()


def _phase_report(results: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    times = Histogram()
    for result in results:
        times.merge(result["times"])
    joined = sum(r["joined"] for r in results)
    report: dict[str, Any] = {
        "joined": joined,
        "never_joined": clients - joined,
        "attempts": sum(r["attempts"] for r in results),
        "failures": Failures.merge([r["failures"] for r in results]),
        "all_joined_s": round(max(r["last"] for r in results), 3) if joined == clients else None,
        "last_joined_s": round(max(r["last"] for r in results), 3),
        "time_to_join_ms": times.summary_ms(),
    }
    if "dropped" in results[0]:
        report["dropped"] = sum(r["dropped"] for r in results)
    return report


async def run_connect(context: Context, options: ConnectOptions) -> dict[str, Any]:
    room = options.room or context.room("storm")
    shares = context.deal(context.users("n", options.clients))
    args = [
        StormArgs(context.target, room, share, options.retry_interval, context.concurrency)
        for share in shares
    ]
    async with Pool(Storm, args) as pool:
        return await _run(context, options, pool, room)


async def _run(context: Context, options: ConnectOptions, pool: Pool, room: str) -> dict[str, Any]:
    progress = context.progress
    await pool.call("prepare", limit=CALL_TIMEOUT + options.clients / 1000)
    first = await _at_once(context, options, pool, "connect")
    if options.restart_command:
        second = await _restart(context, options, pool)
    else:
        closed = sum(await pool.call("close_all", limit=CALL_TIMEOUT))
        progress.note(f"closed {closed} clients; reconnecting them at once")
        second = await _at_once(context, options, pool, "reconnect")
    report: dict[str, Any] = {
        "scenario": "connect",
        "room": room,
        "clients": options.clients,
        "processes": len(pool),
        "connect": first,
        "restart" if options.restart_command else "reconnect": second,
    }
    return summary(report)


async def _at_once(
    context: Context, options: ConnectOptions, pool: Pool, label: str
) -> dict[str, Any]:
    start_at = time.monotonic() + START_DELAY
    deadline = start_at + options.timeout
    meter = context.meter(pool)
    meter.start()

    async def tick() -> None:
        with tolerant():
            snapshots = await pool.call("snapshot", limit=CALL_TIMEOUT)
            context.progress.line(
                f"{label}: {sum(s['joined'] for s in snapshots)} of {options.clients} joined "
                f"after {time.monotonic() - start_at:.1f}s, "
                f"{sum(s['attempts'] for s in snapshots)} attempts"
            )

    results = await while_running(
        pool.call("phase", start_at, deadline, limit=options.timeout + CALL_TIMEOUT), tick
    )
    meter.stop()
    report = _phase_report(results, options.clients)
    report.update(_cpu(context, meter, report["joined"]))
    context.progress.note(
        f"{label}: {report['joined']} of {options.clients} joined, the last after "
        f"{report['last_joined_s']}s"
    )
    return report


async def _restart(context: Context, options: ConnectOptions, pool: Pool) -> dict[str, Any]:
    progress = context.progress
    assert options.restart_command is not None
    origin = time.monotonic()
    deadline = origin + options.restart_timeout + options.timeout
    meter = context.meter(pool)
    meter.server = ()  # the server restarts: another process
    meter.start()
    armed = sum(await pool.call("arm", origin, deadline, limit=CALL_TIMEOUT))
    progress.note(f"running the restart command: {options.restart_command}")
    command = await _run_command(options.restart_command, options.restart_timeout)
    command_done = time.monotonic()
    progress.note(f"restart command: {command}")
    last_drop = command_done
    dropped = -1
    while time.monotonic() < deadline:
        with tolerant():
            snapshots = await pool.call("snapshot", limit=CALL_TIMEOUT)
            now_dropped = sum(s["dropped"] for s in snapshots)
            settled = sum(s["joined"] + s["gave_up"] for s in snapshots)
            progress.line(
                f"restart: {now_dropped} of {armed} dropped, "
                f"{sum(s['joined'] for s in snapshots)} rejoined after "
                f"{time.monotonic() - origin:.1f}s"
            )
            if now_dropped != dropped:
                dropped, last_drop = now_dropped, time.monotonic()
            everyone = now_dropped >= armed or time.monotonic() - last_drop > SETTLED
            if settled >= now_dropped and everyone:
                break
        await asyncio.sleep(POLL)
    progress.done()
    meter.stop()
    results = await pool.call("collect", limit=CALL_TIMEOUT)
    report = _phase_report(results, options.clients)
    report.update(_cpu(context, meter, report["joined"]))
    report["restart_command"] = command
    report["command_seconds"] = round(command_done - origin, 3)
    report["armed"] = armed
    return report


def _cpu(context: Context, meter: CpuMeter, joined: int) -> dict[str, Any]:
    """The generator's and the server's CPU over a phase; warnings said at once."""
    figures: dict[str, Any] = {
        "generator": meter.report(joined, "join"),
        "server": meter.server_report(joined, "join"),
        "warnings": meter.warnings(),
    }
    for warning in figures["warnings"]:
        context.progress.note(f"warning: {warning}")
    return summary(figures)


async def _run_command(command: str, limit: float) -> dict[str, Any]:
    process = await asyncio.create_subprocess_shell(
        command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(limit):
            output, _ = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return {"exit": None, "error": f"timed out after {limit}s"}
    return {"exit": process.returncode, "output": output.decode(errors="replace")[-500:]}
