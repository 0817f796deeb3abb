"""A WebSocket client over a plain TCP stream, driven by websockets' Sans-I/O core.

Unlike a ``websockets`` connection it does only what the test says: it can send a
Close frame and keep the TCP connection open, or stop reading while the server
keeps writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from tests.client import TIMEOUT


class RawPeer:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: ClientProtocol
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None

    @classmethod
    async def open(cls, url: str, *, receive_buffer: int | None = None) -> RawPeer:
        """Open a WebSocket (``rt1.json``); ``receive_buffer`` shrinks SO_RCVBUF."""
        uri = parse_uri(url)
        sock = socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (uri.host, uri.port))
        except BaseException:
            sock.close()
            raise
        # A small read limit keeps the stream's own buffer from hiding the socket's.
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        protocol = ClientProtocol(uri, subprotocols=[Subprotocol("rt1.json")])
        peer = cls(reader, writer, protocol)
        try:
            protocol.send_request(protocol.connect())
            peer._write()
            async with asyncio.timeout(TIMEOUT):
                while not any(isinstance(e, Response) for e in peer._received()):
                    protocol.receive_data(await reader.read(4096))
            assert protocol.handshake_exc is None, protocol.handshake_exc
        except BaseException:
            await peer.abort()
            raise
        return peer

    def send(self, message: dict[str, Any]) -> None:
        self.protocol.send_text(orjson.dumps(message))
        self._write()

    def send_close(self) -> None:
        """Start the closing handshake; the TCP connection stays open."""
        self.protocol.send_close(1000, "bye")
        self._write()

    async def read(self, timeout: float = TIMEOUT) -> bool:
        """Read what arrives next into ``messages``; False at the end of the stream."""
        async with asyncio.timeout(timeout):
            data = await self.reader.read(65536)
        if not data:
            self.protocol.receive_eof()
            return False
        self.protocol.receive_data(data)
        for event in self._received():
            if not isinstance(event, Frame):
                continue
            if event.opcode is Opcode.TEXT:
                lines = bytes(event.data).split(b"\n")
                self.messages.extend(orjson.loads(line) for line in lines if line.strip())
            elif event.opcode is Opcode.CLOSE and self.protocol.close_rcvd is not None:
                self.close_code = self.protocol.close_rcvd.code
        self._write()  # pongs
        return True

    async def reply(self, command_id: int, timeout: float = TIMEOUT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for message in self.messages:
                    if message.get("id") == command_id:
                        self.messages.remove(message)
                        return message
                if not await self.read():
                    raise ConnectionError("closed before the reply")

    async def call(self, command_id: int, op: str, **args: Any) -> dict[str, Any]:
        self.send({"id": command_id, "op": op, **args})
        reply = await self.reply(command_id)
        assert "ok" in reply, reply
        ok: dict[str, Any] = reply["ok"]
        return ok

    async def until_closed(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server's close frame; returns its code."""
        async with asyncio.timeout(timeout):
            while self.close_code is None:
                if not await self.read():
                    break
        return self.close_code

    def pushes(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("push") == kind]

    async def abort(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    def _received(self) -> list[Any]:
        return list(self.protocol.events_received())

    def _write(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.writer.write(data)
