"""One port for both: a new connection whose first request is ``GET /ws`` (or Engine.IO's
``GET /socket.io/?…transport=websocket``) becomes a WebSocket of ours; any other goes
to aiohttp, which serves the REST API and Engine.IO's polling.

Deciding on the first request line keeps aiohttp's per-request objects out of the
life of a WebSocket (they would outweigh everything else a connection holds).

Nothing here waits without a bound: the request line and headers must arrive
within ``server.handshake_timeout`` (408 when something came, else just closed),
and every connection holds a place in ``Admission`` until it is an authenticated
WebSocket. An HTTP connection stays behind this protocol for its life (it forwards
to aiohttp's handler) so that its place is given back when it closes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import orjson

from .admission import Admission, Ticket

HttpFactory = Callable[[], asyncio.Protocol]
WebSocketFactory = Callable[[Ticket, float], asyncio.Protocol]
"""(the connection's admission ticket, loop time by which the upgrade must be read)."""

MAX_REQUEST_LINE = 8192
# A connection beyond the cap must name one of these at once to be served.
PROBES = tuple(
    b"GET " + path + end for path in (b"/healthz", b"/readyz", b"/metrics") for end in (b" ", b"?")
)
PROBE_WINDOW = 1.0


@dataclass(frozen=True, slots=True)
class Doorway:
    """What every new connection is held to."""

    admission: Admission
    handshake_timeout: float
    linger: float

    @property
    def retry_after(self) -> str:
        # By then every handshake now in progress has finished or been closed.
        return str(math.ceil(self.handshake_timeout))


def http_error(
    status: int, code: str, message: str, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """A complete JSON error response that closes the connection."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, '')}",
        "Connection: close",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def refuse(
    transport: asyncio.Transport,
    response: bytes,
    ticket: Ticket | None,
    linger: float,
    previous: asyncio.BaseProtocol | None = None,
) -> None:
    """Write a final response and close.

    The client may still be sending (a huge header, a body): closing with unread
    data would reset the connection and could destroy the response before it is
    read. So half-close, discard what still comes for at most ``linger`` seconds,
    then drop the connection. The ticket is given back when it is gone, and the
    ``previous`` owner of the connection (aiohttp's handler) told.
    """
    transport.write(response)
    discard = _Discard(ticket, linger, previous)
    transport.set_protocol(discard)
    discard.connection_made(transport)


class _Discard(asyncio.Protocol):
    __slots__ = ("_linger", "_previous", "_ticket", "_timer")

    def __init__(
        self, ticket: Ticket | None, linger: float, previous: asyncio.BaseProtocol | None
    ) -> None:
        self._ticket = ticket
        self._linger = linger
        self._previous = previous
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)
        if tcp.is_closing():
            return
        if tcp.can_write_eof():
            tcp.write_eof()
            self._timer = asyncio.get_running_loop().call_later(self._linger, tcp.abort)
        else:
            tcp.close()

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._ticket is not None:
            self._ticket.release()
        if self._previous is not None:
            self._previous.connection_lost(exc)


class FirstRequest(asyncio.Protocol):
    """Reads the first request line, then hands the connection to its owner."""

    __slots__ = (
        "_buffer",
        "_deadline",
        "_doorway",
        "_http",
        "_owner",
        "_tail",
        "_ticket",
        "_timer",
        "_transport",
        "_websocket",
    )

    def __init__(self, http: HttpFactory, websocket: WebSocketFactory, doorway: Doorway) -> None:
        self._http = http
        self._websocket = websocket
        self._doorway = doorway
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._ticket: Ticket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        # aiohttp's handler, once this is an HTTP connection.
        self._owner: asyncio.Protocol | None = None
        # The end of what came so far while the first request's headers are read.
        self._tail: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = self._transport = cast(asyncio.Transport, transport)
        doorway = self._doorway
        ticket = self._ticket = doorway.admission.admit()
        if ticket is None:
            tcp.close()
            return
        loop = asyncio.get_running_loop()
        timeout = doorway.handshake_timeout
        self._deadline = loop.time() + timeout
        window = min(PROBE_WINDOW, timeout) if ticket.spare else timeout
        self._timer = loop.call_later(window, self._expire)

    def data_received(self, data: bytes) -> None:
        owner = self._owner
        if owner is not None:
            if self._tail is not None:
                self._watch_headers(data)
            owner.data_received(data)
            return
        if self._ticket is None:
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) >= MAX_REQUEST_LINE:
                self._refuse(414, "too_large", f"request line over {MAX_REQUEST_LINE} bytes")
            return
        line = self._buffer[:end]
        if self._ticket.spare and not line.startswith(PROBES):
            self._refuse_busy()
        elif line.startswith((b"GET /ws ", b"GET /ws?")) or (
            line.startswith(b"GET /socket.io/?") and b"transport=websocket" in line
        ):
            self._to_websocket()
        else:
            self._to_http()

    def _to_websocket(self) -> None:
        transport, ticket = self._transport, self._ticket
        assert transport is not None and ticket is not None
        self._cancel_timer()
        self._ticket = None
        owner = self._websocket(ticket, self._deadline)
        transport.set_protocol(owner)
        owner.connection_made(transport)
        buffer, self._buffer = self._buffer, b""
        self._transport = None
        owner.data_received(buffer)

    def _to_http(self) -> None:
        transport = self._transport
        assert transport is not None
        owner = self._owner = self._http()
        owner.connection_made(transport)
        buffer, self._buffer = self._buffer, b""
        self._tail = b""
        self._watch_headers(buffer)
        owner.data_received(buffer)

    def _watch_headers(self, data: bytes) -> None:
        """Stop the clock when the first request's headers are complete (aiohttp's
        keep-alive timeout bounds later requests, the REST layer a body)."""
        assert self._tail is not None
        seen = self._tail + data
        if b"\n\r\n" in seen or b"\n\n" in seen:
            self._tail = None
            # A spare place is short-lived whatever it serves.
            if self._ticket is not None and not self._ticket.spare:
                self._cancel_timer()
        else:
            self._tail = seen[-2:]

    def _expire(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._owner is None and self._ticket is not None and self._ticket.spare:
            self._refuse_busy()
        elif self._tail is not None or self._buffer:
            self._refuse(408, "timeout", "request not received within the handshake timeout")
        else:
            transport.close()

    def _refuse_busy(self) -> None:
        self._refuse(
            503,
            "unavailable",
            "too many connections are opening: retry later",
            [("Retry-After", self._doorway.retry_after)],
        )

    def _refuse(
        self, status: int, code: str, message: str, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        transport = self._transport
        assert transport is not None
        self._cancel_timer()
        ticket, self._ticket = self._ticket, None
        owner, self._owner = self._owner, None
        self._buffer = b""
        self._transport = None
        response = http_error(status, code, message, headers)
        refuse(transport, response, ticket, self._doorway.linger, owner)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def authenticated(self) -> None:
        """This HTTP connection serves an authenticated client (a Socket.IO polling
        session): it gives its place back, as an authenticated WebSocket does."""
        if self._ticket is not None and not self._ticket.spare:
            self._ticket.release()
            self._ticket = None

    # An HTTP connection: aiohttp's handler sees everything else. ---------------------

    def eof_received(self) -> bool | None:
        if self._owner is not None:
            return self._owner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._owner is not None:
            self._owner.pause_writing()

    def resume_writing(self) -> None:
        if self._owner is not None:
            self._owner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None
        self._transport = None
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.connection_lost(exc)
