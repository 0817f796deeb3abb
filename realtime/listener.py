"""One port for both: a new connection whose first request is ``GET /ws`` becomes a
WebSocket of ours; any other goes to aiohttp, which serves the REST API.

Deciding on the first request line keeps aiohttp's per-request objects out of the
life of a WebSocket (they would outweigh everything else a connection holds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

ProtocolFactory = Callable[[], asyncio.Protocol]

# A request line longer than this is not ours to judge: aiohttp answers it.
MAX_REQUEST_LINE = 8192


class FirstRequest(asyncio.Protocol):
    """Reads the first request line, then hands the connection to its owner."""

    __slots__ = ("_buffer", "_http", "_transport", "_websocket")

    def __init__(self, http: ProtocolFactory, websocket: ProtocolFactory) -> None:
        self._http = http
        self._websocket = websocket
        self._transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n")
        if end < 0 and len(self._buffer) < MAX_REQUEST_LINE:
            return
        line = self._buffer[: max(end, 0)]
        is_websocket = line.startswith((b"GET /ws ", b"GET /ws?"))
        owner = self._websocket() if is_websocket else self._http()
        transport = self._transport
        assert transport is not None
        transport.set_protocol(owner)
        owner.connection_made(transport)
        owner.data_received(self._buffer)
        self._buffer = b""
        self._transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
