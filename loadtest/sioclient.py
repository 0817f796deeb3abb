"""A Socket.IO client over ``FastConnection``: Engine.IO v4 on the websocket transport.

Opening: the server sends ``0{…}`` (open), the client ``40`` (connect to the
default namespace), the server ``40{…}``. Engine.IO pings (``2``) are answered
with ``3``. Events go to ``on_event``; ``join`` emits ``join`` and waits for the
peer server's ``joined`` event naming the room.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .fastws import FastConnection
from .sioproto import CONNECT, PONG, Kind, Packet, PacketError, event, parse
from .target import Target
from .wsclient import ConnectionClosed

TIMEOUT = 30.0

OnEvent = Callable[[str, list[Any]], None]


class SocketIOClient:
    def __init__(self, connection: FastConnection) -> None:
        loop = asyncio.get_running_loop()
        self.connection = connection
        self.opened: asyncio.Future[Any] = loop.create_future()
        self.connected: asyncio.Future[Any] = loop.create_future()
        self._waiters: list[tuple[str, Any, asyncio.Future[None]]] = []
        self.on_event: OnEvent = _ignore
        connection.on_payload = self._on_payload
        connection.closed.add_done_callback(self._on_closed)

    @classmethod
    async def open(
        cls,
        target: Target,
        index: int,
        token: str | None,
        connection_class: type[FastConnection] = FastConnection,
    ) -> SocketIOClient:
        """Open the WebSocket, then the Engine.IO session and the default namespace."""
        connection = await target.open(index, connection_class, token)
        client = cls(connection)
        try:
            async with asyncio.timeout(target.connect_timeout):
                await client.opened
                connection.send_text(CONNECT)
                await client.connected
        except BaseException:
            connection.abort()
            raise
        return client

    def emit(self, name: str, *args: Any) -> None:
        self.connection.send_text(event(name, *args))

    async def join(self, room: str, limit: float = TIMEOUT) -> None:
        """Emit ``join`` and wait for ``joined`` with the room's name."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = ("joined", room, future)
        self._waiters.append(waiter)
        try:
            self.emit("join", room)
            async with asyncio.timeout(limit):
                await future
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _on_payload(self, opcode: int, payload: bytes) -> None:
        try:
            packet = parse(payload)
        except PacketError as error:
            self.connection.fail(f"socket.io: {error}")
            return
        kind = packet.kind
        if kind is Kind.EVENT:
            self._on_event(packet)
        elif kind is Kind.PING:
            self.connection.send_text(PONG)
        elif kind is Kind.OPEN:
            _settle(self.opened, packet.data)
        elif kind is Kind.CONNECT:
            _settle(self.connected, packet.data)
        elif kind is Kind.CONNECT_ERROR:
            if not self.connected.done():
                self.connected.set_exception(ConnectionError(f"socket.io refused: {packet.data}"))
        elif kind is Kind.CLOSE or kind is Kind.DISCONNECT:
            self.connection.abort()

    def _on_event(self, packet: Packet) -> None:
        name = packet.event
        if name is None:
            return
        args = packet.args
        if self._waiters:
            for waited, first, future in self._waiters:
                if waited == name and args[:1] == [first] and not future.done():
                    future.set_result(None)
        self.on_event(name, args)

    def _on_closed(self, closed: asyncio.Future[int]) -> None:
        error = ConnectionClosed(closed.result(), self.connection.close_reason)
        futures = [self.opened, self.connected, *(f for _, _, f in self._waiters)]
        for future in futures:
            if not future.done():
                future.set_exception(error)
        # Nobody may await them any more: retrieve, so asyncio does not complain.
        for future in futures:
            if future.done() and not future.cancelled():
                future.exception()

    async def close(self) -> None:
        await self.connection.close()


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _ignore(name: str, args: list[Any]) -> None:
    pass
