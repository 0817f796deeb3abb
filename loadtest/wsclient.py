"""realtime's protocol over ``FastConnection``: header auth, commands awaited by id,
pushes and unawaited replies to callbacks."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import orjson

from .fastws import FastConnection
from .target import Target

SUBPROTOCOL = "rt1.json"
TIMEOUT = 30.0

OnMessage = Callable[[dict[str, Any]], None]

IGNORED = (b'{"push":"presence"', b'{"push":"typing"')
"""Pushes no load client looks at, dropped unread: a join storm into a room with
presence sends every member a push per join."""


class CommandFailed(RuntimeError):
    """The server answered a command with an error."""

    def __init__(self, op: str, code: str, message: str) -> None:
        super().__init__(f"{op}: {code}: {message}")
        self.op = op
        self.code = code


class ConnectionClosed(ConnectionError):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed {code} {reason}".strip())
        self.code = code


class RealtimeClient:
    def __init__(self, connection: FastConnection) -> None:
        self.connection = connection
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.on_push: OnMessage = _ignore
        self.on_reply: OnMessage = _ignore
        """Replies nobody awaits: to commands sent with ``send`` and an id."""
        connection.skip = IGNORED
        connection.on_payload = self._on_payload
        connection.closed.add_done_callback(self._on_closed)

    @classmethod
    async def open(
        cls,
        target: Target,
        index: int,
        token: str,
        connection_class: type[FastConnection] = FastConnection,
    ) -> RealtimeClient:
        """Connection ``index`` of the run (which picks the URL and source address)."""
        return cls(await target.open(index, connection_class, token, (SUBPROTOCOL,)))

    @classmethod
    async def connect(cls, url: str, token: str, limit: float = 10.0) -> RealtimeClient:
        """One connection to a URL (no ``Target``), for scripts."""
        return cls(
            await FastConnection.connect(
                url,
                headers={"Authorization": f"Bearer {token}"},
                subprotocols=(SUBPROTOCOL,),
                limit=limit,
            )
        )

    def next_id(self) -> int:
        return next(self._ids)

    async def command(self, op: str, limit: float = TIMEOUT, **args: Any) -> dict[str, Any]:
        """Send a command and wait for its ``ok`` (raises on an error reply or a close)."""
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[command_id] = future
        self.send(command_id, op, **args)
        try:
            async with asyncio.timeout(limit):
                reply = await future
        finally:
            self._replies.pop(command_id, None)
        if "error" in reply:
            error = reply["error"]
            raise CommandFailed(op, str(error.get("code")), str(error.get("message")))
        ok: dict[str, Any] = reply["ok"]
        return ok

    def send(self, command_id: int | None, op: str, **args: Any) -> None:
        message: dict[str, Any] = {"op": op, **args}
        if command_id is not None:
            message["id"] = command_id
        self.connection.send_text(orjson.dumps(message))

    def _on_payload(self, opcode: int, payload: bytes) -> None:
        try:
            messages = split(payload)
        except orjson.JSONDecodeError:
            self.connection.fail("the server sent a frame that is not JSON")
            return
        for message in messages:
            if "push" in message:
                self.on_push(message)
                continue
            future = self._replies.get(message.get("id", 0))
            if future is not None:
                if not future.done():
                    future.set_result(message)
            else:
                self.on_reply(message)

    def _on_closed(self, closed: asyncio.Future[int]) -> None:
        error = ConnectionClosed(closed.result(), self.connection.close_reason)
        for future in self._replies.values():
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        await self.connection.close()


def split(data: bytes) -> list[dict[str, Any]]:
    """The messages of one frame (the server may pack several, newline-separated)."""
    if b"\n" in data:
        return [orjson.loads(line) for line in data.split(b"\n") if line.strip()]
    message: dict[str, Any] = orjson.loads(data)
    return [message]


def _ignore(message: dict[str, Any]) -> None:
    pass
