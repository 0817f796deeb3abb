"""``GET /ws``: the only code that touches a WebSocket.

The WebSocket protocol itself is python-websockets' Sans-I/O core: bytes go in,
frames come out, and the bytes it wants written (handshake response, pongs,
close frames) are written to the transport. This module is the few lines that
feed it and hand complete messages to the session. Pushes and replies do not pass
through here: ``Connection`` writes ready frames straight to the transport.

A connection costs no task while it is idle: a task is started when a message
arrives and ends when the messages waiting are handled (in order; see
``Session.handle_frames``). When ``INBOX_LIMIT`` wait, the socket stops being read
until they are taken, so a fast sender meets TCP backpressure, not an unbounded
queue.

Connections arrive two ways: ``listener.py`` gives us a fresh TCP connection
whose first request is ``GET /ws`` (the usual way; no HTTP framework objects stay
alive for the life of the socket), and the aiohttp route below takes an upgrade
that arrived on a kept-alive HTTP connection.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import orjson
from aiohttp import web
from websockets.datastructures import Headers
from websockets.exceptions import HeaderLineTooLong, RequestLineTooLong, TooManyHeaders
from websockets.frames import CloseCode as WebSocketCloseCode
from websockets.frames import Frame, Opcode
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request, Response
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from protocol import CODECS, JSON, SUBPROTOCOLS, CloseCode

from .admission import Ticket
from .app_keys import NODE
from .connection import Connection
from .frames import close_reason
from .listener import http_error, refuse
from .logs import bind, bound
from .node import Node
from .session import Session

log = logging.getLogger(__name__)

INBOX_LIMIT = 32
_SUBPROTOCOLS = [Subprotocol(name) for name in SUBPROTOCOLS]


class _Frames(Protocol):
    """The data phase of a server connection; an oversized frame closes with 4008."""

    def fail(self, code: int, reason: str = "") -> None:
        if code == WebSocketCloseCode.MESSAGE_TOO_BIG:
            code, reason = CloseCode.LIMIT, "frame too large"
        super().fail(code, reason)


def turned_away(node: Node) -> Response | None:
    """The 503 for a new WebSocket when this instance takes none now: draining, its
    event loop behind (``server.max_lag``), too many still opening
    (``server.max_opening``), past ``server.max_handshake_rate``.

    Asked before the upgrade's headers are parsed: in a reconnect storm most
    attempts are refused, and a refusal must cost next to nothing.
    """
    if node.draining:
        return _refusal(503, "unavailable", "server restarting: connect to another instance")
    max_lag = node.settings.server.max_lag
    overloaded = max_lag > 0 and node.lag.behind() > max_lag
    # The opening cap first: a refusal for it takes no token from the rate limit.
    retry_after = node.openings.admit(overloaded=overloaded)
    if retry_after is None:
        retry_after = node.handshakes.admit()
    if retry_after is None:
        return None
    node.metrics.handshakes_refused.inc()
    message = f"too many new connections: retry after {retry_after}s"
    return _refusal(503, "unavailable", message, retry_after)


def handshake(node: Node, request: Request) -> tuple[Response, str | None]:
    """The response to an upgrade request (past ``turned_away``), and the subprotocol
    chosen (if accepted)."""
    settings = node.settings.server
    if request.path.partition("?")[0] != "/ws":
        return _refusal(404, "not_found", "WebSocket endpoint is /ws"), None
    origin = request.headers.get("Origin")
    allowed = settings.allowed_origins
    if origin is not None and allowed and "*" not in allowed and origin not in allowed:
        return _refusal(403, "forbidden", f"origin {origin} is not allowed"), None
    negotiator = ServerProtocol(subprotocols=_SUBPROTOCOLS, select_subprotocol=_first_offered)
    response = negotiator.accept(request)
    if response.status_code != 101:
        return response, None
    return response, negotiator.subprotocol


def _first_offered(_: ServerProtocol, offered: Any) -> Subprotocol | None:
    """The client's first choice among ours; none offered means JSON, with no header."""
    for name in offered:
        if name in CODECS:
            return Subprotocol(name)
    return None


def _refusal(status: int, code: str, message: str, retry_after: int | None = None) -> Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    headers = Headers(
        [
            ("Connection", "close"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
    )
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return Response(status, "", headers, body)


def serialize(response: Response) -> bytes:
    reason = response.reason_phrase or _PHRASES.get(response.status_code, "")
    head = f"HTTP/1.1 {response.status_code} {reason}\r\n".encode()
    return head + response.headers.serialize() + response.body


_PHRASES = {
    101: "Switching Protocols",
    403: "Forbidden",
    404: "Not Found",
    503: "Service Unavailable",
}


class WebSocket:
    """One open WebSocket: frames in, messages to the session, close handshake."""

    __slots__ = (
        "_arrived",
        "_close_timer",
        "_fragments",
        "_frames",
        "_inbox",
        "_node",
        "_opening",
        "_paused",
        "_session",
        "_transport",
        "_worker",
        "close_code",
        "conn",
        "finished",
    )

    def __init__(
        self,
        node: Node,
        transport: asyncio.Transport,
        subprotocol: str | None,
        authorization: str | None,
    ) -> None:
        self._node = node
        self._transport = transport
        settings = node.settings.server
        self._frames = _Frames(Side.SERVER, state=State.OPEN, max_size=settings.max_frame_bytes)
        codec = CODECS.get(subprotocol or "", JSON)
        self.conn = Connection(
            secrets.token_hex(8),
            transport,
            codec,
            settings.send_buffer_bytes,
            self.close,
            node.hub.outbox,
            settings.send_buffer_soft_bytes or settings.send_buffer_bytes // 2,
        )
        self._session = Session(node, self.conn)
        self._fragments: list[bytes] | None = None
        # Each message with the time it arrived: the rate limit charges it then.
        self._inbox: deque[tuple[float, bytes]] = deque()
        self._paused = False
        self._arrived = 0.0
        self._close_timer: asyncio.TimerHandle | None = None
        self.close_code: int | None = None
        self.finished = asyncio.get_running_loop().create_future()
        node.hub.add_connection(self.conn)
        # Counted in server.max_opening until its start is done (``_opened``).
        self._opening = True
        node.openings.begin()
        node.metrics.opening.set(node.openings.opening)
        # The session opens (header auth, user room) before any message is handled.
        self._worker: asyncio.Task[None] | None = asyncio.create_task(
            self._work(self._session.open(authorization))
        )

    # Input -------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        self.conn.last_seen = self._arrived = time.monotonic()
        frames = self._frames
        frames.receive_data(data)
        for frame in frames.events_received():
            self._on_frame(cast(Frame, frame))  # past the handshake: frames only
        self._flush()

    def receive_eof(self) -> None:
        self._frames.receive_eof()
        self._flush()

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._enqueue(bytes(frame.data))
            else:
                self._fragments = [bytes(frame.data)]
        elif opcode is Opcode.CONT and self._fragments is not None:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                message = b"".join(self._fragments)
                self._fragments = None
                self._enqueue(message)
        elif opcode is Opcode.CLOSE and self.close_code is None:
            received = self._frames.close_rcvd
            self.close_code = received.code if received is not None else None

    def _enqueue(self, message: bytes) -> None:
        if self.conn.closing:
            return
        self._inbox.append((self._arrived, message))
        if len(self._inbox) >= INBOX_LIMIT and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(None))

    async def _work(self, first: Any) -> None:
        """Handle waiting messages in order; the task ends when none are left."""
        session = self._session
        bind(self.conn)  # this task's log lines name the connection
        try:
            if first is not None:
                await first
            inbox = self._inbox
            while inbox and not self.conn.closing:
                frames = list(inbox)
                inbox.clear()
                if self._paused:
                    self._paused = False
                    self._transport.resume_reading()
                await session.handle_frames(frames)
        except Exception:
            log.exception("connection %s failed", self.conn)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._worker = None
            if self.conn.authenticated:
                # Authenticated, and what the client sent meanwhile is answered.
                self._opened()

    def _opened(self) -> None:
        """The start is over (done, or the connection is gone): free its place."""
        if self._opening:
            self._opening = False
            openings = self._node.openings
            openings.end()
            self._node.metrics.opening.set(openings.opening)

    # Output ------------------------------------------------------------------------

    def _flush(self) -> None:
        transport = self._transport
        if self._frames.state is not State.OPEN:
            # Closing, whoever started it: the close frame is about to be written,
            # then the half-close. Frames queued before go out ahead of it; none
            # may follow (a write after write_eof raises).
            self.conn.end()
        for data in self._frames.data_to_send():
            if data:
                transport.write(data)
            elif not transport.is_closing():
                # End of the closing handshake (or a failure): half-close, and let
                # the client close the TCP connection, or drop it when it won't.
                if transport.can_write_eof():
                    transport.write_eof()
                else:
                    transport.close()
                self._arm_close_timer()

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (``Connection``'s close callback)."""
        frames = self._frames
        if frames.state is State.OPEN:
            if code >= 4000:
                with bound(self.conn):
                    log.info("closing with %d: %s", code, reason)
            self.close_code = code
            reason = self._node.reconnects.advise(code, reason)
            frames.send_close(code, close_reason(reason).decode())
            self._flush()
            self._arm_close_timer()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None:
            timeout = self._node.settings.server.close_timeout
            self._close_timer = asyncio.get_running_loop().call_later(
                timeout, self._transport.abort
            )

    # End ---------------------------------------------------------------------------

    def lost(self) -> None:
        """The TCP connection is gone: forget the session (in a task the node owns)."""
        if self._close_timer is not None:
            self._close_timer.cancel()
        self.conn.end()
        self._opened()
        self._node.tasks.spawn(self._finish(), f"close {self.conn.id}")

    async def _finish(self) -> None:
        bind(self.conn)
        worker = self._worker
        if worker is not None:
            worker.cancel()
            await asyncio.wait([worker])
        try:
            await self._session.close()
        finally:
            code = self.close_code or WebSocketCloseCode.ABNORMAL_CLOSURE
            self._node.metrics.disconnects.labels(str(code)).inc()
            if not self.finished.done():
                self.finished.set_result(None)


class WebSocketProtocol(asyncio.Protocol):
    """A TCP connection that is a WebSocket from its first request on.

    The upgrade request must be complete by ``deadline`` (set by ``listener.py``);
    a malformed one is answered 400, one with a header line over
    ``MAX_LINE_LENGTH``, more than ``MAX_NUM_HEADERS`` headers or more than
    ``MAX_HEADER_BYTES`` in all is answered 431. Until the session authenticates,
    the connection holds its ``Ticket`` in the node's ``Admission``.
    """

    __slots__ = (
        "_deadline",
        "_handshake",
        "_node",
        "_received",
        "_ticket",
        "_timer",
        "_transport",
        "_ws",
    )

    def __init__(self, node: Node, ticket: Ticket, deadline: float) -> None:
        self._node = node
        self._ticket: Ticket | None = ticket
        self._deadline = deadline
        self._timer: asyncio.TimerHandle | None = None
        self._received = 0
        self._transport: asyncio.Transport | None = None
        self._handshake: ServerProtocol | None = None
        self._ws: WebSocket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        refused = turned_away(self._node)
        if refused is not None:
            self._close_with(serialize(refused))  # what else comes is discarded
            return
        self._handshake = ServerProtocol(max_size=self._node.settings.server.max_frame_bytes)
        self._timer = asyncio.get_running_loop().call_at(self._deadline, self._expire)

    def data_received(self, data: bytes) -> None:
        if self._ws is not None:
            self._ws.receive(data)
            return
        handshake_protocol = self._handshake
        if handshake_protocol is None:
            return  # refused; the rest is discarded
        self._received += len(data)
        handshake_protocol.receive_data(data)
        for event in handshake_protocol.events_received():
            if not isinstance(event, Request):
                continue
            head = self._received - len(handshake_protocol.reader.buffer)
            if head > MAX_HEADER_BYTES:
                self._refuse(431, f"request headers over {MAX_HEADER_BYTES} bytes")
            else:
                self._upgrade(event, handshake_protocol)
            return
        error = handshake_protocol.handshake_exc
        if error is not None:
            self._refuse(*_bad_request(error))
        elif self._received > MAX_HEADER_BYTES:
            self._refuse(431, f"request headers over {MAX_HEADER_BYTES} bytes")

    def _upgrade(self, request: Request, handshake_protocol: ServerProtocol) -> None:
        transport = self._transport
        assert transport is not None
        self._cancel_timer()
        self._handshake = None
        response, subprotocol = handshake(self._node, request)
        if response.status_code != 101:
            self._close_with(serialize(response))
            return
        transport.write(serialize(response))
        ws = self._ws = WebSocket(
            self._node, transport, subprotocol, request.headers.get("Authorization")
        )
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            self._node.admission.opened(ws.conn, ticket)
        # Clients wait for the 101 before sending frames; anything already here is theirs.
        leftover = bytes(handshake_protocol.reader.buffer)
        if leftover:
            ws.receive(leftover)

    def _expire(self) -> None:
        self._timer = None
        if self._ws is None and self._handshake is not None:
            self._refuse(408, "upgrade request not received within the handshake timeout")

    def _refuse(self, status: int, message: str) -> None:
        code = "timeout" if status == 408 else "bad_request"
        self._close_with(http_error(status, code, message))

    def _close_with(self, response: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._cancel_timer()
        self._handshake = None
        self._transport = None
        ticket, self._ticket = self._ticket, None
        refuse(transport, response, ticket, self._node.settings.server.close_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def eof_received(self) -> bool | None:
        if self._ws is not None:
            self._ws.receive_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None
        if self._ws is not None:
            self._node.admission.closed(self._ws.conn)
            self._ws.lost()
            self._ws = None


MAX_HEADER_BYTES = 32 * 1024
"""All of an upgrade request's head (nginx allows 4 buffers of 8 KiB by default)."""


def _bad_request(error: Exception) -> tuple[int, str]:
    """The status and message for what websockets' parser refused."""
    if isinstance(error, RequestLineTooLong):
        return 414, "request line too long"
    if isinstance(error, HeaderLineTooLong):
        return 431, f"a header line is over {MAX_LINE_LENGTH} bytes"
    if isinstance(error, TooManyHeaders):
        return 431, f"more than {MAX_NUM_HEADERS} headers"
    cause = error.__cause__ or error
    return 400, f"malformed upgrade request: {cause}"[:200]


def websocket_protocol(node: Node) -> Callable[[Ticket, float], WebSocketProtocol]:
    return lambda ticket, deadline: WebSocketProtocol(node, ticket, deadline)


# The upgrade that arrives on a kept-alive HTTP connection ---------------------------------


class _FeedFromAiohttp:
    """aiohttp's connection hands us the upgraded socket's bytes through its parser slot."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._ws.receive(data)
        return False, b""

    def feed_eof(self) -> None:
        self._ws.receive_eof()
        self._ws.lost()


async def aiohttp_websocket(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    transport = request.transport
    if transport is None:
        return web.Response(status=400)
    upgrade = Request(request.path_qs, Headers(request.headers.items()))
    refused = turned_away(node)
    response, subprotocol = (refused, None) if refused is not None else handshake(node, upgrade)
    if response.status_code != 101:
        retry_after = response.headers.get("Retry-After")
        return web.Response(
            status=response.status_code,
            body=response.body,
            content_type="application/json",
            headers={"Retry-After": retry_after} if retry_after else None,
        )
    reply = web.StreamResponse(status=101, headers=dict(response.headers.raw_items()))
    await reply.prepare(request)
    ws = WebSocket(node, transport, subprotocol, request.headers.get("Authorization"))
    request.protocol.set_parser(cast(Any, _FeedFromAiohttp(ws)))
    await ws.finished
    return reply
