"""The fan-out publishers: messages into one room at an offered rate.

Each message's body is ``{"t":<time.time_ns()>,"p":"xxx…"}`` of the requested size,
so a subscriber reads the send time with the seq. realtime acknowledges every
send (``{"id","ok":{"seq"}}``; over Socket.IO the ``send`` event's ack carries the
same reply): the publishers count acks and errors, the last seq and the send→ack
latency. realtime limits commands per connection (50/s by default), so a rate
above that is spread over several publisher connections; the Socket.IO peers have
no such limit, and one publisher serves them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .fastws import FastConnection
from .sioclient import SocketIOClient
from .stats import Histogram
from .target import SOCKETIO, Target
from .wsclient import RealtimeClient

PER_CONNECTION_RATE = 40.0
"""Messages/s per publisher connection, under realtime's default limit of 50/s."""
BODY_OVERHEAD = len(b'{"t":1763900000000000000,"p":""}')


PER_USER_CONNECTIONS = 16
"""realtime's default connections per user: the cap when one user (a room's owner)
publishes on every connection."""


def publisher_count(rate: float, protocol: str, one_user: bool = False) -> int:
    if protocol == SOCKETIO:
        return 1
    count = max(1, math.ceil(rate / PER_CONNECTION_RATE))
    return min(count, PER_USER_CONNECTIONS) if one_user else count


def body(payload: int) -> Callable[[], orjson.Fragment]:
    """A maker of message bodies of ``payload`` bytes carrying the send time."""
    padding = b"x" * max(payload - BODY_OVERHEAD, 0)

    def make() -> orjson.Fragment:
        return orjson.Fragment(b'{"t":%d,"p":"%s"}' % (time.time_ns(), padding))

    return make


@dataclass
class PublishStats:
    sent: int = 0
    acked: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    last_seq: int = 0
    ack_latency: Histogram = field(default_factory=Histogram)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "published": self.sent,
            "acknowledged": self.acked,
            "publish_errors": self.error_count,
            "publish_error_codes": self.errors,
        }
        if self.ack_latency.total:
            report["ack_latency_ms"] = self.ack_latency.summary_ms()
        return report


class RealtimePublishers:
    """Several connections taking turns, all in the room (joined with room tokens)."""

    def __init__(self, clients: list[RealtimeClient], room: str, payload: int) -> None:
        self.clients = clients
        self.room = room
        self.stats = PublishStats()
        self._body = body(payload)
        self._pending: dict[tuple[int, int], int] = {}
        for number, client in enumerate(clients):
            client.on_reply = self._on_reply(number)

    @classmethod
    async def open(
        cls, target: Target, users: list[str], room: str, payload: int
    ) -> RealtimePublishers:
        clients = []
        for user in users:
            client = await RealtimeClient.open(target, 0, target.tokens.user(user), FastConnection)
            await client.command("join", room=room, token=target.tokens.room(user, room))
            clients.append(client)
        return cls(clients, room, payload)

    def publish(self) -> None:
        stats = self.stats
        number = stats.sent % len(self.clients)
        client = self.clients[number]
        command_id = client.next_id()
        self._pending[(number, command_id)] = time.monotonic_ns()
        client.send(command_id, "send", room=self.room, body=self._body())
        stats.sent += 1

    def _on_reply(self, number: int) -> Callable[[dict[str, Any]], None]:
        stats = self.stats
        pending = self._pending

        def on_reply(reply: dict[str, Any]) -> None:
            sent = pending.pop((number, reply.get("id", 0)), None)
            if sent is None:
                return
            ok = reply.get("ok")
            if isinstance(ok, dict) and "seq" in ok:
                stats.acked += 1
                stats.last_seq = max(stats.last_seq, int(ok["seq"]))
                stats.ack_latency.add((time.monotonic_ns() - sent) // 1000)
            else:
                error = reply.get("error")
                code = str(error.get("code")) if isinstance(error, dict) else "malformed"
                stats.errors[code] = stats.errors.get(code, 0) + 1

        return on_reply

    @property
    def unanswered(self) -> int:
        return len(self._pending)

    @property
    def connections(self) -> int:
        return len(self.clients)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)


class SocketIOPublishers:
    """The same over Socket.IO: ``send`` events with an ack id, the ack carrying the seq."""

    def __init__(self, clients: list[SocketIOClient], room: str, payload: int) -> None:
        self.clients = clients
        self.room = room
        self.stats = PublishStats()
        self._body = body(payload)
        self._pending: dict[tuple[int, int], int] = {}
        for number, client in enumerate(clients):
            client.on_ack = self._on_ack(number)

    @classmethod
    async def open(
        cls, target: Target, users: list[str], room: str, payload: int
    ) -> SocketIOPublishers:
        tokens = target.tokens
        clients = []
        for user in users:
            token = tokens.user(user) if tokens.configured else None
            client = await SocketIOClient.open(target, 0, token)
            join: dict[str, Any] = {"room": room}
            if tokens.configured:
                join["token"] = tokens.room(user, room)
            await client.call("join", join, limit=target.connect_timeout)
            clients.append(client)
        return cls(clients, room, payload)

    def publish(self) -> None:
        stats = self.stats
        number = stats.sent % len(self.clients)
        client = self.clients[number]
        ack = client.next_ack()
        self._pending[(number, ack)] = time.monotonic_ns()
        client.emit("send", {"room": self.room, "body": self._body()}, ack=ack)
        stats.sent += 1

    def _on_ack(self, number: int) -> Callable[[int, list[Any]], None]:
        stats = self.stats
        pending = self._pending

        def on_ack(ack: int, args: list[Any]) -> None:
            sent = pending.pop((number, ack), None)
            if sent is None:
                return
            ok = args[0] if args else None
            if isinstance(ok, dict) and "seq" in ok:
                stats.acked += 1
                stats.last_seq = max(stats.last_seq, int(ok["seq"]))
                stats.ack_latency.add((time.monotonic_ns() - sent) // 1000)
            else:
                error = ok.get("error") if isinstance(ok, dict) else None
                code = str(error.get("code")) if isinstance(error, dict) else "malformed"
                stats.errors[code] = stats.errors.get(code, 0) + 1

        return on_ack

    @property
    def unanswered(self) -> int:
        return len(self._pending)

    @property
    def connections(self) -> int:
        return len(self.clients)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)


Publishers = RealtimePublishers | SocketIOPublishers


async def open_publishers(target: Target, users: list[str], room: str, payload: int) -> Publishers:
    if target.protocol == SOCKETIO:
        return await SocketIOPublishers.open(target, users, room, payload)
    return await RealtimePublishers.open(target, users, room, payload)


async def pace(
    publish: Callable[[], None], rate: float, duration: float, count: Callable[[], int]
) -> float:
    """Call ``publish`` ``rate`` times a second for ``duration`` seconds, on time
    (late calls catch up at once); returns the seconds it took."""
    total = int(rate * duration)
    started = time.monotonic()
    while (done := count()) < total:
        now = time.monotonic()
        due = min(int((now - started) * rate) + 1, total)
        for _ in range(due - done):
            publish()
        if due < total:
            await asyncio.sleep(max(started + due / rate - time.monotonic(), 0))
    return time.monotonic() - started
