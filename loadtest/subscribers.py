"""A generator process's share of one room's subscribers: connect, join, count.

Used by ``fanout`` (counting what the publisher sends) and ``idle`` (just held
open). Each subscriber is a ``CountingConnection``; they share the process's
latency histogram and send-time cache, and each checks its own seqs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .dialing import Failures, open_all
from .receiver import CountingConnection, Receiver, SendTimes
from .sioclient import IGNORED as SOCKETIO_IGNORED
from .sioclient import OnEvent, SocketIOClient
from .stats import Histogram, SeqTotals
from .target import SOCKETIO, Target
from .workers import Worker
from .wsclient import IGNORED, OnMessage, RealtimeClient


def realtime_prefix(room: str) -> bytes:
    """How realtime's ``message`` push for ``room`` begins, up to its seq."""
    return b'{"push":"message","room":' + orjson.dumps(room) + b',"seq":'


def socketio_prefixes(room: str) -> tuple[bytes, ...]:
    """How a Socket.IO ``message`` event for ``room`` may begin, up to its seq: the
    push's fields after the event name (realtime's /socket.io/, the peers), the same
    with the ``push`` field kept, or the seq first."""
    name = orjson.dumps(room)
    return (
        b'42["message",{"room":' + name + b',"seq":',
        b'42["message",{"push":"message","room":' + name + b',"seq":',
        b'42["message",{"seq":',
    )


def realtime_recorder(connection: CountingConnection, room: str) -> OnMessage:
    """What a subscriber does with a push the hot loop did not count: count it."""

    def on_push(message: dict[str, Any]) -> None:
        body = message.get("body")
        if (
            message.get("push") == "message"
            and message.get("room") == room
            and isinstance(body, dict)
            and isinstance(body.get("t"), int)
        ):
            connection.record(int(message["seq"]), body["t"])

    return on_push


def socketio_recorder(connection: CountingConnection) -> OnEvent:
    """The same for a Socket.IO ``message`` event."""

    def on_event(name: str, args: list[Any]) -> None:
        data = args[0] if args else None
        if name == "message" and isinstance(data, dict):
            body = data.get("body")
            if isinstance(body, dict) and isinstance(body.get("t"), int):
                connection.record(int(data["seq"]), body["t"])

    return on_event


async def join_realtime(
    target: Target, index: int, tokens: tuple[str, str], room: str, receiver: Receiver
) -> CountingConnection:
    """Subscriber ``index``, connected with its (user, room) tokens, joined, counting."""
    client = await RealtimeClient.open(target, index, tokens[0], CountingConnection)
    connection = client.connection
    assert isinstance(connection, CountingConnection)
    client.on_push = realtime_recorder(connection, room)
    try:
        reply = await client.command("join", room=room, token=tokens[1])
    except BaseException:
        connection.abort()
        raise
    connection.start(receiver.latency, int(reply["seq"]))
    receiver.adopt(connection)
    return connection


async def join_socketio(
    target: Target, index: int, tokens: tuple[str, str] | None, room: str, receiver: Receiver
) -> CountingConnection:
    """Subscriber ``index`` over Socket.IO: connected with its user token, joined with
    its room token (an ack with the room's seq), counting."""
    client = await SocketIOClient.open(
        target, index, tokens[0] if tokens else None, CountingConnection
    )
    connection = client.connection
    assert isinstance(connection, CountingConnection)
    client.on_event = socketio_recorder(connection)
    join: dict[str, Any] = {"room": room}
    if tokens:
        join["token"] = tokens[1]
    try:
        reply = await client.call("join", join, limit=target.connect_timeout)
    except BaseException:
        connection.abort()
        raise
    connection.start(receiver.latency, int(reply["seq"]))
    receiver.adopt(connection)
    return connection


@dataclass(frozen=True)
class SubscriberArgs:
    target: Target
    rooms: list[str]
    """Subscriber i of the run joins ``rooms[i % len(rooms)]`` (fan-out: one room)."""
    members: list[tuple[int, str]]
    """(index of the connection in the run, user) of each subscriber of this process."""
    concurrency: int = 100
    read_interval: float = 0.0
    """Seconds between reads of the subscriber sockets (0: as soon as readable)."""

    def room(self, index: int) -> str:
        return self.rooms[index % len(self.rooms)]


class Subscribers(Worker[SubscriberArgs]):
    def __init__(self, args: SubscriberArgs) -> None:
        super().__init__(args)
        self.latency = Histogram()
        if args.target.protocol == SOCKETIO:
            prefixes = socketio_prefixes(args.rooms[0])
            self.receiver = Receiver(self.latency, SendTimes(), prefixes, SOCKETIO_IGNORED)
        else:
            prefix = realtime_prefix(args.rooms[0])
            self.receiver = Receiver(self.latency, SendTimes(), prefix, IGNORED)
        self.receiver.attach(asyncio.get_running_loop(), args.read_interval)
        self.connections: list[CountingConnection] = []
        self.failures = Failures()
        self.tokens: list[tuple[str, str]] = []
        self.attempted = 0

    async def rpc_prepare(self) -> int:
        """Mint the tokens before anything is timed."""
        tokens = self.args.target.tokens
        if tokens.configured:
            args = self.args
            self.tokens = [(tokens.user(u), tokens.room(u, args.room(i))) for i, u in args.members]
        return len(self.tokens)

    async def rpc_connect(self) -> dict[str, Any]:
        args = self.args
        target = args.target
        receiver = self.receiver

        def opener(position: int, index: int) -> Callable[[], Awaitable[CountingConnection]]:
            room = args.room(index)

            async def join() -> CountingConnection:
                if target.protocol == SOCKETIO:
                    tokens = self.tokens[position] if self.tokens else None
                    connection = await join_socketio(target, index, tokens, room, receiver)
                else:
                    tokens = self.tokens[position]
                    connection = await join_realtime(target, index, tokens, room, receiver)
                self.connections.append(connection)
                return connection

            return join

        started = time.monotonic()
        openers = [opener(p, index) for p, (index, _) in enumerate(args.members)]
        self.attempted = len(openers)
        await open_all(openers, args.concurrency, self.failures)
        return {
            "connected": len(self.connections),
            "failures": self.failures.kinds,
            "seconds": time.monotonic() - started,
        }

    async def rpc_snapshot(self) -> dict[str, Any]:
        return {
            "received": self.latency.total,
            "latency": self.latency.copy(),
            "reads": self.receiver.reads,
            "open": sum(1 for c in self.connections if not c.closed.done()),
        }

    async def rpc_finish(self, final_seq: int) -> dict[str, Any]:
        """Totals; ``final_seq`` is the last seq every subscriber should have had."""
        totals = SeqTotals()
        closed: dict[str, int] = {}
        for connection in self.connections:
            totals.add(connection.check, final_seq)
            if connection.closed.done():
                code = str(connection.closed.result())
                closed[code] = closed.get(code, 0) + 1
        return {
            "received": self.latency.total,
            "latency": self.latency,
            "reads": self.receiver.reads,
            "seq": totals,
            "closed": closed,
        }

    async def close(self) -> None:
        for connection in self.connections:
            connection.abort()
        self.receiver.close()
