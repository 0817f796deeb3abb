"""``connect``: N clients connecting and joining a room at once, then a reconnect storm.

Phase 1: every client opens its connection and joins at the same instant (all
processes start together); a failed attempt is retried until the phase's
deadline. Phase 2: with ``restart_command``, every client reconnects when the
server drops it while the command restarts (or kills) the server; without it,
the generator closes every client and reconnects them all at once. Figures per
phase: time until all were connected and joined, percentiles of each client's
time, attempts, failures by kind, and clients that never made it.

When to try again is ``backoff.py``'s: with pacing (the default) a client follows
the reconnect advice of its close and the ``Retry-After`` of a 503, and backs off
with full jitter otherwise; ``pacing=False`` reconnects at once and retries after
``retry_interval`` (±50%), as clients that know nothing of pacing do.

A client rejoins with ``since`` and the epoch, and checks every seq it receives
(``SeqCheck``). With ``publish_rate``, a publisher (on ``publish_url``: an instance
that is not restarted) sends that many messages a second through phase 2; at its
end every client must have each seq once: lost, duplicated and reordered are
reported, and clients whose join did not recover.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .backoff import Backoff
from .context import Context, owner_of, summary, tolerant, while_running
from .cpu import CpuMeter
from .dialing import CONNECT_ERRORS, Failures
from .fastws import FastConnection
from .looplag import LoopWatch, lag_warnings
from .publishers import RealtimePublishers
from .stats import Histogram, SeqCheck, SeqTotals
from .target import Target
from .workers import Pool, Worker
from .wsclient import RealtimeClient

CALL_TIMEOUT = 30.0
START_DELAY = 0.5
"""Seconds between the parent's go and the common start, for every process to hear it."""
SETTLED = 5.0
"""Seconds after the restart command without a new drop that end the wait."""
POLL = 0.1
LEAD = 1.0
"""Seconds of publishing before the restart command, so it lands mid-stream."""
CATCH_UP = 30.0
"""Seconds after the last publication for every client to have it."""


@dataclass(frozen=True)
class ConnectOptions:
    clients: int = 1000
    room: str | None = None
    restart_command: str | None = None
    restart_timeout: float = 120.0
    timeout: float = 120.0
    retry_interval: float = 0.5
    pacing: bool = True
    publish_rate: float = 0.0
    publish_url: str | None = None


@dataclass(frozen=True)
class StormArgs:
    target: Target
    room: str
    members: list[tuple[int, str]]
    backoff: Backoff = field(default_factory=Backoff)
    concurrency: int = 1_000_000


@dataclass
class Seat:
    index: int
    user: str
    tokens: tuple[str, str]
    client: RealtimeClient | None = None
    dropped_at: float | None = None
    joined_at: float | None = None
    check: SeqCheck = field(default_factory=SeqCheck)
    epoch: str | None = None
    early: list[int] | None = None
    """Seqs pushed while the join's reply is being read: counted after its ``missed``."""


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
    unrecovered: int = 0
    """Rejoins whose reply said ``recovered: false``."""

    def result(self, loop_lag: float) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "failures": self.failures.kinds,
            "times": self.times,
            "last": self.last,
            "joined": self.joined,
            "gave_up": self.gave_up,
            "unrecovered": self.unrecovered,
            "loop_lag_s": loop_lag,
        }


class Storm(Worker[StormArgs]):
    def __init__(self, args: StormArgs) -> None:
        super().__init__(args)
        self.seats: list[Seat] = []
        self.tally = PhaseTally()
        self.origin = 0.0
        self.dropped = 0
        self._tasks: set[asyncio.Task[bool]] = set()
        self._gate = asyncio.Semaphore(max(args.concurrency, 1))
        self.watch = LoopWatch()

    async def rpc_prepare(self) -> int:
        tokens = self.args.target.tokens
        room = self.args.room
        self.seats = [
            Seat(index, user, (tokens.user(user), tokens.room(user, room)))
            for index, user in self.args.members
        ]
        self.watch.start()
        return len(self.seats)

    async def _join(
        self, seat: Seat, deadline: float, wait: float = 0.0, gated: bool = True
    ) -> bool:
        """Connect and join after ``wait``, retrying until ``deadline``; whether it made it.

        ``gated``: at most ``concurrency`` attempts of this process at a time (a
        reconnect after a drop is not gated: the storm is what is measured).
        """
        tally = self.tally
        target = self.args.target
        backoff = self.args.backoff
        failed = 0
        if wait > 0:
            await asyncio.sleep(min(wait, max(deadline - time.monotonic(), 0)))
        while True:
            tally.attempts += 1
            try:
                async with (
                    self._gate if gated else contextlib.nullcontext(),
                    asyncio.timeout(max(deadline - time.monotonic(), 0.01)),
                ):
                    client = await RealtimeClient.open(
                        target, seat.index, seat.tokens[0], FastConnection
                    )
                    try:
                        await self._subscribe(seat, client)
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
                failed += 1
                retry_after = getattr(error, "retry_after", None)
                pause = backoff.after_failure(failed, retry_after, random.random())
            if time.monotonic() + pause >= deadline:
                tally.gave_up += 1
                return False
            await asyncio.sleep(pause)

    async def _subscribe(self, seat: Seat, client: RealtimeClient) -> None:
        """Join the room, with ``since`` after the first time, and count what comes."""
        room = self.args.room
        seat.early = []
        client.on_push = lambda message: self._on_push(seat, message)
        args: dict[str, Any] = {"room": room, "token": seat.tokens[1]}
        if seat.epoch is not None:
            args.update(since=seat.check.last, epoch=seat.epoch)
        joined = await client.command("join", **args)
        check = seat.check
        if seat.epoch is None:
            check.last = int(joined["seq"])
        elif not joined.get("recovered"):
            self.tally.unrecovered += 1
        seat.epoch = str(joined["epoch"])
        for message in joined.get("missed", ()):
            check.add(int(message["seq"]))
        early, seat.early = seat.early, None
        for seq in early:
            check.add(seq)

    def _on_push(self, seat: Seat, message: dict[str, Any]) -> None:
        if message.get("push") != "message" or message.get("room") != self.args.room:
            return
        seq = int(message["seq"])
        if seat.early is not None:
            seat.early.append(seq)
        else:
            seat.check.add(seq)

    async def rpc_phase(self, start_at: float, deadline: float) -> dict[str, Any]:
        """Every client at ``start_at`` (monotonic, shared by the processes)."""
        self.tally = PhaseTally()
        self.origin = start_at
        await asyncio.sleep(max(start_at - time.monotonic(), 0))
        self.watch.reset()
        await asyncio.gather(*(self._join(seat, deadline) for seat in self.seats))
        return self.tally.result(self.watch.reset())

    async def rpc_arm(self, origin: float, deadline: float) -> int:
        """From now on a client the server drops reconnects (``backoff.py``), until ``deadline``."""
        self.tally = PhaseTally()
        self.origin = origin
        self.dropped = 0
        self.watch.reset()
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
        reason = seat.client.connection.close_reason if seat.client is not None else ""
        seat.client = None
        wait = self.args.backoff.after_close(reason, random.random())
        task = asyncio.create_task(self._join(seat, deadline, wait, gated=False))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def rpc_behind(self, final_seq: int) -> int:
        """Clients that have not yet seen ``final_seq``."""
        return sum(1 for seat in self.seats if seat.check.last < final_seq)

    async def rpc_seqs(self, final_seq: int) -> dict[str, int]:
        """Seq totals over every client, and lost among those connected at the end
        (a client that never came back misses everything after its drop)."""
        totals = SeqTotals()
        connected = SeqTotals()
        for seat in self.seats:
            totals.add(seat.check, final_seq)
            if seat.client is not None and not seat.client.connection.closed.done():
                connected.add(seat.check, final_seq)
        return {
            "lost": totals.lost,
            "duplicated": totals.duplicated,
            "reordered": totals.reordered,
            "lost_connected": connected.lost,
        }

    async def rpc_snapshot(self) -> dict[str, Any]:
        # Asked ten times a second: counters only, no walk over every client.
        return {
            "joined": self.tally.joined,
            "gave_up": self.tally.gave_up,
            "attempts": self.tally.attempts,
            "dropped": self.dropped,
        }

    async def rpc_collect(self) -> dict[str, Any]:
        return {**self.tally.result(self.watch.reset()), "dropped": self.dropped}

    async def rpc_close_all(self) -> int:
        """Close every client (close handshake, bounded), forgetting the drops."""
        clients = [s.client for s in self.seats if s.client is not None]
        for seat in self.seats:
            seat.client = None
            seat.dropped_at = None
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        return len(clients)

    async def close(self) -> None:
        await self.watch.stop()
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
    # After a restart, those dropped are the ones to rejoin.
    expected = sum(r["dropped"] for r in results) if "dropped" in results[0] else clients
    failures = Failures.merge([r["failures"] for r in results])
    report: dict[str, Any] = {
        "joined": joined,
        "never_joined": clients - joined,
        "attempts": sum(r["attempts"] for r in results),
        "failed_attempts": sum(failures.values()),
        "failures": failures,
        "unrecovered": sum(r["unrecovered"] for r in results),
        "all_joined_s": round(max(r["last"] for r in results), 3) if joined == expected else None,
        "last_joined_s": round(max(r["last"] for r in results), 3),
        "time_to_join_ms": times.summary_ms(),
        "loop_lag_s": {f"p{i}": round(r["loop_lag_s"], 3) for i, r in enumerate(results)},
    }
    if "dropped" in results[0]:
        report["dropped"] = sum(r["dropped"] for r in results)
    return report


async def run_connect(context: Context, options: ConnectOptions) -> dict[str, Any]:
    room = options.room or context.room("storm")
    shares = context.deal(context.users("n", options.clients))
    backoff = Backoff(honour=options.pacing, base=options.retry_interval)
    args = [
        StormArgs(context.target, room, share, backoff, context.concurrency) for share in shares
    ]
    async with Pool(Storm, args) as pool:
        return await _run(context, options, pool, room)


async def _run(context: Context, options: ConnectOptions, pool: Pool, room: str) -> dict[str, Any]:
    progress = context.progress
    await pool.call("prepare", limit=CALL_TIMEOUT + options.clients / 1000)
    first = await _at_once(context, options, pool, "connect")
    if options.restart_command:
        second = await _restart(context, options, pool, room)
    else:
        closed = sum(await pool.call("close_all", limit=CALL_TIMEOUT))
        progress.note(f"closed {closed} clients; reconnecting them at once")
        second = await _at_once(context, options, pool, "reconnect")
    report: dict[str, Any] = {
        "scenario": "connect",
        "room": room,
        "clients": options.clients,
        "processes": len(pool),
        "pacing": options.pacing,
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
    report.update(_cpu(context, meter, report["joined"], report["loop_lag_s"]))
    context.progress.note(
        f"{label}: {report['joined']} of {options.clients} joined, the last after "
        f"{report['last_joined_s']}s"
    )
    return report


async def _restart(
    context: Context, options: ConnectOptions, pool: Pool, room: str
) -> dict[str, Any]:
    progress = context.progress
    assert options.restart_command is not None
    stream = await _Stream.open(context, options, room)
    if stream is not None:
        progress.note(f"publishing {options.publish_rate}/s to {room}")
        await asyncio.sleep(LEAD)
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
                f"{time.monotonic() - origin:.1f}s, {sum(s['attempts'] for s in snapshots)} "
                "attempts"
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
    report.update(_cpu(context, meter, report["joined"], report["loop_lag_s"]))
    report["restart_command"] = command
    report["command_seconds"] = round(command_done - origin, 3)
    report["armed"] = armed
    if stream is not None:
        report["messages"] = await stream.finish(pool, progress)
    return report


class _Stream:
    """Messages published through phase 2, and the check that every client has each."""

    def __init__(self, publishers: RealtimePublishers, rate: float) -> None:
        self.publishers = publishers
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(rate))

    @classmethod
    async def open(cls, context: Context, options: ConnectOptions, room: str) -> _Stream | None:
        if options.publish_rate <= 0:
            return None
        owner = owner_of(room)
        if owner is None:
            raise SystemExit(f"--publish-rate needs a room with an owner to publish: {room}")
        target = context.target
        if options.publish_url is not None:
            target = dataclasses.replace(target, urls=(options.publish_url,), sources=())
        publishers = await RealtimePublishers.open(target, [owner], room, 64)
        return cls(publishers, options.publish_rate)

    async def _run(self, rate: float) -> None:
        started = time.monotonic()
        sent = 0
        while not self._stop.is_set():
            self.publishers.publish()
            sent += 1
            pause = started + sent / rate - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(pause, 0))

    async def finish(self, pool: Pool, progress: Any) -> dict[str, Any]:
        """Stop publishing, wait (bounded) for every client to catch up, count seqs."""
        self._stop.set()
        await self._task
        stats = self.publishers.stats
        waited = time.monotonic()
        for _ in range(int(CATCH_UP / POLL)):
            if not self.publishers.unanswered:
                break
            await asyncio.sleep(POLL)
        final = stats.last_seq
        behind = -1
        while time.monotonic() - waited < CATCH_UP:
            behind = sum(await pool.call("behind", final, limit=CALL_TIMEOUT))
            if behind == 0:
                break
            progress.line(f"catching up: {behind} clients before seq {final}")
            await asyncio.sleep(POLL)
        progress.done()
        seqs = SeqTotals()
        lost_connected = 0
        for part in await pool.call("seqs", final, limit=CALL_TIMEOUT):
            lost_connected += part.pop("lost_connected")
            seqs.merge(SeqTotals(**part))
        await self.publishers.close()
        return {
            "published": stats.sent,
            "acknowledged": stats.acked,
            "unanswered": self.publishers.unanswered,
            "errors": stats.errors,
            "last_seq": final,
            "clients_behind": behind,
            "lost": seqs.lost,
            "lost_by_connected_clients": lost_connected,
            "duplicated": seqs.duplicated,
            "reordered": seqs.reordered,
        }


def _cpu(
    context: Context, meter: CpuMeter, joined: int, loop_lag: dict[str, float]
) -> dict[str, Any]:
    """The generator's and the server's CPU over a phase, and how late the generator's
    loops ran; warnings said at once."""
    figures: dict[str, Any] = {
        "generator": meter.report(joined, "join"),
        "server": meter.server_report(joined, "join"),
        "warnings": meter.warnings() + lag_warnings(loop_lag),
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
