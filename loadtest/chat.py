"""``chat``: P swap rooms with two members each, both sending at rate r.

This is the persistence path: every ``send`` is acknowledged once stored. Figures:
acknowledged sends/s, send→ack latency, send→delivery latency (to the other
member), lost/duplicated/reordered per member by seq, errors by code. Rooms are
dealt to the processes whole; each process sends for its members on one timer,
round-robin, so every member sends at rate r, evenly spaced. A member with
``window`` sends unacknowledged skips its turn (counted), so a server that
stops answering does not pile up unbounded work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .context import Context, summary, tolerant, usage_text, while_running
from .dialing import Failures, open_all
from .fastws import FastConnection
from .progress import rate
from .publishers import body, pace
from .rest import Rest, path
from .stats import Histogram, SeqCheck, SeqTotals
from .target import Target
from .workers import Pool, Worker
from .wsclient import RealtimeClient

CONNECT_TIMEOUT = 600.0
CALL_TIMEOUT = 30.0
DRAIN_POLL = 0.1

Seat = tuple[int, str]
"""(index of the connection in the run, user)."""


@dataclass(frozen=True)
class ChatOptions:
    rooms: int = 100
    rate: float = 5.0
    """Sends per second of each member."""
    duration: float = 10.0
    payload: int = 100
    membership: str = "token"
    """``token``: join with room tokens; ``rest``: PUT the members over REST first."""
    window: int = 64
    drain: float = 10.0


@dataclass(frozen=True)
class ChatArgs:
    target: Target
    rooms: list[tuple[str, Seat, Seat]]
    options: ChatOptions
    concurrency: int = 100


class Member:
    __slots__ = ("check", "client", "pending", "room", "sent", "user")

    def __init__(self, client: RealtimeClient, user: str, room: str) -> None:
        self.client = client
        self.user = user
        self.room = room
        self.check = SeqCheck()
        self.pending: dict[int, int] = {}
        """Command id → send time (ns) of each unacknowledged send."""
        self.sent = 0


class ChatStats:
    def __init__(self) -> None:
        self.attempts = 0
        self.sent = 0
        self.skipped = 0
        self.acked = 0
        self.errors: dict[str, int] = {}
        self.ack_latency = Histogram()
        self.delivery_latency = Histogram()
        self.final_seq: dict[str, int] = {}

    def snapshot(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "skipped": self.skipped,
            "acked": self.acked,
            "errors": dict(self.errors),
            "ack_latency": self.ack_latency.copy(),
            "delivery_latency": self.delivery_latency.copy(),
        }


class ChatMembers(Worker[ChatArgs]):
    def __init__(self, args: ChatArgs) -> None:
        super().__init__(args)
        self.stats = ChatStats()
        self.members: list[Member] = []
        self.failures = Failures()
        self.tokens: dict[str, tuple[str, str | None]] = {}
        self._body = body(args.options.payload)

    async def rpc_prepare(self) -> dict[str, Any]:
        """Tokens, and room membership over REST when asked."""
        tokens = self.args.target.tokens
        by_token = self.args.options.membership == "token"
        for room, (_, first), (_, second) in self.args.rooms:
            for user in (first, second):
                room_token = tokens.room(user, room) if by_token else None
                self.tokens[f"{room} {user}"] = (tokens.user(user), room_token)
        granted = 0
        failures = Failures()
        if not by_token:
            target = self.args.target
            assert target.service_key is not None
            rest = Rest(target.rest_url(), target.service_key, self.args.concurrency)
            try:
                calls = [
                    ("PUT", path("rooms", room, "members", user))
                    for room, (_, a), (_, b) in self.args.rooms
                    for user in (a, b)
                ]
                granted = await rest.many(calls, self.args.concurrency, failures)
            finally:
                await rest.close()
        return {"granted": granted, "failures": failures.kinds}

    async def rpc_connect(self) -> dict[str, Any]:
        started = time.monotonic()
        openers = [self._opener(room, seat) for room, *seats in self.args.rooms for seat in seats]
        await open_all(openers, self.args.concurrency, self.failures)
        return {
            "connected": len(self.members),
            "failures": self.failures.kinds,
            "seconds": time.monotonic() - started,
        }

    def _opener(self, room: str, seat: Seat) -> Callable[[], Any]:
        index, user = seat
        user_token, room_token = self.tokens[f"{room} {user}"]

        async def open_member() -> Member:
            client = await RealtimeClient.open(self.args.target, index, user_token, FastConnection)
            member = Member(client, user, room)
            client.on_push = self._on_push(member)
            client.on_reply = self._on_reply(member)
            try:
                joined = await client.command("join", room=room, token=room_token)
            except BaseException:
                client.connection.abort()
                raise
            member.check.last = int(joined["seq"])
            self.members.append(member)
            return member

        return open_member

    def _on_push(self, member: Member) -> Callable[[dict[str, Any]], None]:
        stats = self.stats

        def on_push(message: dict[str, Any]) -> None:
            if message.get("push") != "message" or message.get("room") != member.room:
                return
            member.check.add(int(message["seq"]))
            sent = message.get("body")
            if message.get("user") != member.user and isinstance(sent, dict) and "t" in sent:
                stats.delivery_latency.add((time.time_ns() - int(sent["t"])) // 1000)

        return on_push

    def _on_reply(self, member: Member) -> Callable[[dict[str, Any]], None]:
        stats = self.stats

        def on_reply(reply: dict[str, Any]) -> None:
            sent = member.pending.pop(reply.get("id", 0), None)
            if sent is None:
                return
            ok = reply.get("ok")
            if isinstance(ok, dict) and "seq" in ok:
                stats.acked += 1
                stats.ack_latency.add((time.time_ns() - sent) // 1000)
                seq = int(ok["seq"])
                if seq > stats.final_seq.get(member.room, 0):
                    stats.final_seq[member.room] = seq
            else:
                error = reply.get("error")
                code = str(error.get("code")) if isinstance(error, dict) else "malformed"
                stats.errors[code] = stats.errors.get(code, 0) + 1

        return on_reply

    def _send_next(self) -> None:
        stats = self.stats
        member = self.members[stats.attempts % len(self.members)]
        stats.attempts += 1
        if (
            len(member.pending) >= self.args.options.window
            or member.client.connection.closed.done()
        ):
            stats.skipped += 1
            return
        client = member.client
        command_id = client.next_id()
        member.pending[command_id] = time.time_ns()
        member.sent += 1
        client.send(
            command_id, "send", room=member.room, body=self._body(), client_id=str(member.sent)
        )
        stats.sent += 1

    async def rpc_run(self, duration: float) -> float:
        """Send for ``duration`` seconds; the seconds it took."""
        if not self.members:
            return 0.0
        total_rate = self.args.options.rate * len(self.members)
        return await pace(self._send_next, total_rate, duration, lambda: self.stats.attempts)

    async def rpc_snapshot(self) -> dict[str, Any]:
        final = self.stats.final_seq
        open_members = [m for m in self.members if not m.client.connection.closed.done()]
        return {
            **self.stats.snapshot(),
            "unanswered": sum(len(m.pending) for m in self.members),
            "behind": sum(1 for m in open_members if m.check.last < final.get(m.room, 0)),
            "open": len(open_members),
        }

    async def rpc_finish(self) -> dict[str, Any]:
        totals = SeqTotals()
        closed: dict[str, int] = {}
        for member in self.members:
            totals.add(member.check, self.stats.final_seq.get(member.room, member.check.last))
            if member.client.connection.closed.done():
                code = str(member.client.connection.closed.result())
                closed[code] = closed.get(code, 0) + 1
        return {**(await self.rpc_snapshot()), "seq": totals, "closed": closed}

    async def close(self) -> None:
        for member in self.members:
            member.client.connection.abort()


async def run_chat(context: Context, options: ChatOptions) -> dict[str, Any]:
    users = context.users("c", options.rooms * 2)
    rooms = [
        (f"swap:lt-{context.run_id}-{i}", (2 * i, users[2 * i]), (2 * i + 1, users[2 * i + 1]))
        for i in range(options.rooms)
    ]
    parts = max(1, min(context.procs, len(rooms)))
    shares = [rooms[i::parts] for i in range(parts)]
    args = [ChatArgs(context.target, share, options, context.concurrency) for share in shares]
    async with Pool(ChatMembers, args) as pool:
        return await _run(context, options, pool)


def _merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"ack_latency": Histogram(), "delivery_latency": Histogram()}
    for key in ("sent", "skipped", "acked", "unanswered", "behind", "open"):
        merged[key] = sum(s.get(key, 0) for s in snapshots)
    merged["errors"] = Failures.merge([s["errors"] for s in snapshots])
    for snapshot in snapshots:
        merged["ack_latency"].merge(snapshot["ack_latency"])
        merged["delivery_latency"].merge(snapshot["delivery_latency"])
    return merged


async def _run(context: Context, options: ChatOptions, pool: Pool) -> dict[str, Any]:
    progress = context.progress
    prepared = await pool.call("prepare", limit=CONNECT_TIMEOUT)
    membership_failures = Failures.merge([p["failures"] for p in prepared])
    connect_started = time.monotonic()

    async def connecting() -> None:
        with tolerant():
            merged = _merge(await pool.call("snapshot", limit=CALL_TIMEOUT))
            progress.line(f"connecting: {merged['open']} of {options.rooms * 2} members joined")

    connected = await while_running(pool.call("connect", limit=CONNECT_TIMEOUT), connecting)
    ready = sum(c["connected"] for c in connected)
    progress.note(f"{ready} members joined in {time.monotonic() - connect_started:.1f}s")
    meter = context.meter(pool)
    meter.sample()
    meter.start()
    started = time.monotonic()
    previous = _merge([])

    async def tick() -> None:
        nonlocal previous
        usage = meter.sample()
        with tolerant():
            merged = _merge(await pool.call("snapshot", limit=CALL_TIMEOUT))
            ack = merged["ack_latency"].minus(previous["ack_latency"]).summary_ms()
            delivery = merged["delivery_latency"].minus(previous["delivery_latency"])
            errors = sum(merged["errors"].values())
            progress.line(
                f"{time.monotonic() - started:5.1f}s sent {merged['sent']} acked "
                f"{merged['acked']} ({rate(merged['acked'] - previous['acked'])}/s) "
                f"ack p50 {ack['p50']}ms p99 {ack['p99']}ms | delivery p99 "
                f"{delivery.summary_ms()['p99']}ms | errors {errors} skipped "
                f"{merged['skipped']} | {usage_text(usage)}"
            )
            previous = merged

    await while_running(pool.call("run", options.duration, limit=options.duration + 60), tick)
    await tick()
    last_ack = await _drain(pool, options.drain)
    meter.stop()
    progress.done()
    final = await pool.call("finish", limit=CALL_TIMEOUT)
    merged = _merge(final)
    seq = SeqTotals()
    for result in final:
        seq.merge(result["seq"])
    elapsed = (last_ack or time.monotonic()) - started
    acked = merged["acked"]
    report: dict[str, Any] = {
        "scenario": "chat",
        "rooms": options.rooms,
        "members": ready,
        "membership": options.membership,
        "membership_failures": membership_failures,
        "connect_failures": Failures.merge([c["failures"] for c in connected]),
        "offered_rate": options.rate * options.rooms * 2,
        "payload_bytes": options.payload,
        "sent": merged["sent"],
        "skipped_window_full": merged["skipped"],
        "acknowledged": acked,
        "errors": merged["errors"],
        "unanswered": merged["unanswered"],
        "duration_s": round(elapsed, 3),
        "acked_per_s": round(acked / elapsed, 1) if elapsed > 0 else 0.0,
        "ack_latency_ms": merged["ack_latency"].summary_ms(),
        "deliveries": merged["delivery_latency"].total,
        "delivery_latency_ms": merged["delivery_latency"].summary_ms(),
        "lost": seq.lost,
        "duplicated": seq.duplicated,
        "reordered": seq.reordered,
        "closed_during_run": Failures.merge([r["closed"] for r in final]),
        "generator": meter.report(acked, "ack"),
        "server": meter.server_report(acked, "ack"),
        **meter.flat(acked, "ack"),
        "warnings": meter.warnings(),
    }
    for warning in report["warnings"]:
        progress.note(f"warning: {warning}")
    return summary(report)


async def _drain(pool: Pool, drain: float) -> float | None:
    """Wait for the acks and deliveries still due; when the last ack came."""
    deadline = time.monotonic() + drain
    seen, last_change = -1, None
    while time.monotonic() < deadline:
        with tolerant():
            merged = _merge(await pool.call("snapshot", limit=CALL_TIMEOUT))
            if merged["acked"] != seen:
                seen, last_change = merged["acked"], time.monotonic()
            if not merged["unanswered"] and not merged["behind"]:
                break
        await asyncio.sleep(DRAIN_POLL)
    return last_change
