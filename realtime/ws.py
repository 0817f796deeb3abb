"""The WebSocket endpoints: ``GET /ws`` (native) and ``GET /socket.io/`` (Engine.IO's
websocket transport): handshakes, and handing the socket to ``websocket.py``.

Connections arrive two ways: ``listener.py`` gives us a fresh TCP connection
whose first request is ``GET /ws`` (the usual way; no HTTP framework objects stay
alive for the life of the socket), and the aiohttp route below takes an upgrade
that arrived on a kept-alive HTTP connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any, cast
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from websockets.datastructures import Headers
from websockets.exceptions import HeaderLineTooLong, RequestLineTooLong, TooManyHeaders
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from protocol import CODECS, JSON, SUBPROTOCOLS, engineio

from . import sio, sio_move
from .admission import Ticket
from .app_keys import NODE
from .listener import http_error, refuse
from .node import Node
from .session import Session
from .websocket import WebSocket

log = logging.getLogger(__name__)

_SUBPROTOCOLS = [Subprotocol(name) for name in SUBPROTOCOLS]


Opener = Callable[[asyncio.Transport], WebSocket]
"""Makes the WebSocket of an accepted upgrade once the 101 is written."""
SOCKET_IO_PATH = "/socket.io/"


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


def handshake(node: Node, request: Request) -> tuple[Response, Opener | None]:
    """The response to an upgrade request (past ``turned_away``), and what opens the
    socket (if accepted)."""
    settings = node.settings.server
    path, _, query = request.path.partition("?")
    if path not in ("/ws", SOCKET_IO_PATH):
        return _refusal(404, "not_found", "WebSocket endpoints are /ws and /socket.io/"), None
    origin = request.headers.get("Origin")
    allowed = settings.allowed_origins
    if origin is not None and allowed and "*" not in allowed and origin not in allowed:
        return _refusal(403, "forbidden", f"origin {origin} is not allowed"), None
    authorization = request.headers.get("Authorization")
    opener: Opener
    if path == SOCKET_IO_PATH:
        try:
            engine = engineio.parse_request(dict(parse_qsl(query)))
        except engineio.RequestRefused as refused:
            return _engine_refusal(refused.error), None
        if engine.transport != "websocket":
            return _engine_refusal(engineio.RequestError.BAD_REQUEST), None
        sid = engine.sid
        if sid is not None and not sio.upgradable(node, sid):
            return _engine_refusal(engineio.RequestError.UNKNOWN_SID), None
        negotiator = ServerProtocol()
        if sid is not None and node.engine_sessions.get(sid) is None:
            # Another instance's session: it moves here if the probe succeeds.
            opener = partial(
                sio_move.open_remote_upgrade, node, sid=sid, authorization=authorization
            )
        else:
            opener = partial(sio.open_websocket, node, sid=sid, authorization=authorization)
    else:
        negotiator = ServerProtocol(subprotocols=_SUBPROTOCOLS, select_subprotocol=_first_offered)
    response = negotiator.accept(request)
    if response.status_code != 101:
        return response, None
    if path == "/ws":
        opener = partial(
            native, node, subprotocol=negotiator.subprotocol, authorization=authorization
        )
    return response, opener


def native(
    node: Node, transport: asyncio.Transport, *, subprotocol: str | None, authorization: str | None
) -> WebSocket:
    """The WebSocket of ``GET /ws``: a native session, authenticated from the header or
    by its first message."""
    ws = WebSocket(node, transport)
    conn = ws.new_connection(CODECS.get(subprotocol or "", JSON))
    session = Session(node, conn)
    node.hub.add_connection(conn)
    # The session opens (header auth, user room) before any message is handled.
    ws.serve(conn, session, session.open(authorization))
    return ws


def _engine_refusal(error: engineio.RequestError) -> Response:
    body = engineio.error_body(error)
    headers = Headers(
        [
            ("Connection", "close"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
    )
    return Response(error.status, "", headers, body)


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
        response, opener = handshake(self._node, request)
        if opener is None:
            self._close_with(serialize(response))
            return
        transport.write(serialize(response))
        ws = self._ws = opener(transport)
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
    response, opener = (refused, None) if refused is not None else handshake(node, upgrade)
    if opener is None:
        retry_after = response.headers.get("Retry-After")
        return web.Response(
            status=response.status_code,
            body=response.body,
            content_type="application/json",
            headers={"Retry-After": retry_after} if retry_after else None,
        )
    reply = web.StreamResponse(status=101, headers=dict(response.headers.raw_items()))
    await reply.prepare(request)
    ws = opener(transport)
    request.protocol.set_parser(cast(Any, _FeedFromAiohttp(ws)))
    await ws.finished
    return reply
