"""``/socket.io/`` over HTTP: Engine.IO's polling requests and the CORS around them.

``GET`` without ``sid`` opens a polling session (its open packet is the answer);
``GET`` with ``sid`` is a long poll, ``POST`` carries packets in (``sio.py``). A
WebSocket upgrade that reached aiohttp (a kept-alive connection) goes to
``ws.py``. Errors are Engine.IO's: 400 with ``{"code", "message"}``.

A ``sid`` that names another instance is relayed there (``sio_relay.py``): any
instance serves any session's requests. One that names this instance but is not
here (any more), or an instance nobody listens for, is "Session ID unknown"
(code 1).
"""

from __future__ import annotations

from aiohttp import web

from protocol import engineio
from protocol.engineio import RequestError

from .app_keys import NODE
from .listener import FirstRequest
from .node import Node
from .sio import EngineSocket, open_polling
from .sio_relay import Op, Reply
from .sio_sessions import owner_of
from .ws import aiohttp_websocket

CONTENT_TYPE = "text/plain; charset=UTF-8"


async def socketio_endpoint(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    origin = request.headers.get("Origin")
    if origin is not None and not _origin_allowed(node, origin):
        return _error(RequestError.FORBIDDEN)
    if request.method == "OPTIONS":
        return _preflight(request, origin)
    try:
        asked = engineio.parse_request(request.query)
    except engineio.RequestRefused as refused:
        return _error(refused.error, origin)
    if asked.transport == "websocket":
        if request.method != "GET" or request.headers.get("Upgrade", "").lower() != "websocket":
            return _error(RequestError.BAD_REQUEST, origin)
        return await aiohttp_websocket(request)
    if asked.sid is None:
        if request.method != "GET":
            return _error(RequestError.BAD_HANDSHAKE_METHOD, origin)
        if node.draining:
            return web.json_response(
                {"code": RequestError.BAD_REQUEST.value, "message": "server restarting"},
                status=503,
            )
        opened = open_polling(node, request.headers.get("Authorization"))
        await opened.session.open(None)
        return _answer(200, await _take_open(opened), origin)
    if request.method not in ("GET", "POST"):
        return _error(RequestError.BAD_REQUEST, origin)
    engine: EngineSocket | None = node.engine_sessions.get(asked.sid)
    if engine is None:
        return await _relayed(request, node, asked.sid, origin)
    if engine.conn.authenticated:
        _leave_admission(request)
    if request.method == "GET":
        status, body = await engine.poll(request.query.get("t"))
    else:
        status, body = await engine.post(await request.read())
    return _respond(status, body, origin)


async def _relayed(
    request: web.Request, node: Node, sid: str, origin: str | None
) -> web.StreamResponse:
    """A request for a session this instance does not hold: its owner answers it."""
    owner = owner_of(sid)
    if owner is None or not node.relay.reaches(sid):
        return _error(RequestError.UNKNOWN_SID, origin)
    reply: Reply
    if request.method == "GET":
        key = request.query.get("t", "").encode()
        reply = await node.relay.request(owner, Op.GET, sid, key)
    else:
        reply = await node.relay.request(owner, Op.POST, sid, await request.read())
    if reply.authenticated:
        _leave_admission(request)
    return _respond(reply.status, reply.body, origin)


def _respond(status: int, body: bytes, origin: str | None) -> web.StreamResponse:
    if status != 200:
        response = web.Response(status=status, body=body, content_type="application/json")
        _cors(response, origin)
        return response
    return _answer(status, body, origin)


async def _take_open(engine: EngineSocket) -> bytes:
    assert engine.polling is not None
    return await engine.polling.take(0)


def _leave_admission(request: web.Request) -> None:
    """An HTTP connection serving an authenticated session gives its place back
    (``admission.py`` counts only connections that have not authenticated)."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    if isinstance(protocol, FirstRequest):
        protocol.authenticated()


def _origin_allowed(node: Node, origin: str) -> bool:
    allowed = node.settings.server.allowed_origins
    return not allowed or "*" in allowed or origin in allowed


def _cors(response: web.StreamResponse, origin: str | None) -> None:
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"


def _preflight(request: web.Request, origin: str | None) -> web.Response:
    response = web.Response(status=204)
    _cors(response, origin)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    asked = request.headers.get("Access-Control-Request-Headers")
    if asked:
        response.headers["Access-Control-Allow-Headers"] = asked
    return response


def _answer(status: int, body: bytes, origin: str | None) -> web.Response:
    response = web.Response(status=status, body=body, headers={"Content-Type": CONTENT_TYPE})
    _cors(response, origin)
    return response


def _error(error: RequestError, origin: str | None = None) -> web.Response:
    response = web.Response(
        status=error.status, body=engineio.error_body(error), content_type="application/json"
    )
    _cors(response, origin)
    return response
