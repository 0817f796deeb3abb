"""A TCP proxy for tests that can silently stop forwarding one connection.

``freeze`` stops moving bytes both ways on a proxied connection while keeping both
sockets open: to the client the server simply goes quiet, as with a dead
listener or a stuck middlebox. Runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

CHUNK = 65536


class ProxiedConnection:
    def __init__(self) -> None:
        self.sent = bytearray()
        """The first bytes the client sent (enough to tell what it is for)."""
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: list[asyncio.Task[None]] = []
        self.writers: list[asyncio.StreamWriter] = []

    def freeze(self) -> None:
        self.flowing.clear()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections: list[ProxiedConnection] = []
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for connection in self.connections:
            await connection.close()
        await self._server.wait_closed()

    def freeze(self, which: Callable[[ProxiedConnection], bool]) -> list[ProxiedConnection]:
        """Freeze every open connection ``which`` picks; returns them."""
        picked = [c for c in self.connections if c.flowing.is_set() and which(c)]
        for connection in picked:
            connection.freeze()
        return picked

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = ProxiedConnection()
        self.connections.append(connection)
        connection.writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        connection.writers.append(up_writer)
        connection.tasks = [
            asyncio.create_task(self._pump(connection, reader, up_writer, record=True)),
            asyncio.create_task(self._pump(connection, up_reader, writer, record=False)),
        ]

    @staticmethod
    async def _pump(
        connection: ProxiedConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        record: bool,
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                await connection.flowing.wait()  # frozen: hold the bytes, send nothing
                if record and len(connection.sent) < CHUNK:
                    connection.sent += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            if connection.flowing.is_set():
                writer.close()
