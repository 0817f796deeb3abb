"""python-socketio, deployed the way its users deploy it, for ``bench.compare``.

    python -m bench.peers.socketio_server --secret SECRET [--host 127.0.0.1] [--port 8091]
                                          [--redis redis://…]

An ``AsyncServer`` on aiohttp with uvloop: the in-memory client manager, or
``AsyncRedisManager`` with ``--redis`` (how python-socketio runs on several
nodes). Needs ``pip install -r requirements-bench.txt``.

The protocol the load generator speaks (``loadtest --protocol socketio``, the same
events as the Node peer in ``socketio-node/`` and realtime's ``/socket.io/``):

- CONNECT with ``auth.token``: an HS256 JWT checked with ``--secret`` (PyJWT); its
  ``sub`` is the user (kept in the socket's session), anything else is refused;
- ``join`` with ``{"room"}`` → the socket enters the room; the ack is
  ``{"room", "seq"}`` (the room's last seq);
- ``send`` with ``{"room", "body"}`` → the room's next seq; ``message`` with
  ``{"room", "seq", "user", "body", "ts"}`` is emitted to the room (sender
  included) with python-socketio's own broadcast, ``await sio.emit("message",
  data, room=room)``, and the ack is ``{"room", "seq", "ts"}``;
- ``leave`` with ``{"room"}`` → the socket leaves it; the ack is ``{}``.

Everything else is python-socketio's defaults (ping interval, JSON module, handlers
run as tasks): a fair, idiomatic user, not a tuned one. ``/healthz`` tells the
benchmark the server is up.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from typing import Any

import jwt
import socketio  # no types: a mypy override in pyproject.toml makes it Any
import uvloop
from aiohttp import web

BACKLOG = 4096  # as realtime's and the bare server's: connection storms must not stall


def make_server(redis_url: str | None, secret: str) -> Any:
    """The AsyncServer with this benchmark's handlers."""
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        logger=False,
        engineio_logger=False,
        # The generator sends no Origin; "*" just keeps a browser-less client from
        # ever being refused on a CORS check that would measure nothing.
        cors_allowed_origins="*",
    )
    seqs: dict[str, int] = {}

    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            claims = jwt.decode(str(token), secret, algorithms=["HS256"])
        except jwt.InvalidTokenError:
            raise socketio.exceptions.ConnectionRefusedError("unauthorized") from None
        await sio.save_session(sid, {"user": str(claims.get("sub"))})

    async def join(sid: str, data: Any) -> dict[str, Any]:
        room = data.get("room") if isinstance(data, dict) else None
        if not isinstance(room, str):
            return bad_request("join needs a room")
        await sio.enter_room(sid, room)
        return {"room": room, "seq": seqs.get(room, 0)}

    async def send(sid: str, data: Any) -> dict[str, Any]:
        room = data.get("room") if isinstance(data, dict) else None
        if not isinstance(room, str):
            return bad_request("send needs a room")
        seq = seqs[room] = seqs.get(room, 0) + 1
        ts = time.time_ns() // 1_000_000
        user = (await sio.get_session(sid))["user"]
        message = {"room": room, "seq": seq, "user": user, "body": data.get("body"), "ts": ts}
        await sio.emit("message", message, room=room)
        return {"room": room, "seq": seq, "ts": ts}

    async def leave(sid: str, data: Any) -> dict[str, Any]:
        room = data.get("room") if isinstance(data, dict) else None
        if isinstance(room, str):
            await sio.leave_room(sid, room)
        return {}

    sio.on("connect", connect)
    sio.on("join", join)
    sio.on("send", send)
    sio.on("leave", leave)
    return sio


def bad_request(message: str) -> dict[str, Any]:
    return {"error": {"code": "bad_request", "message": message}}


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "instance": "socketio"})


def make_app(redis_url: str | None, secret: str) -> web.Application:
    app = web.Application()
    make_server(redis_url, secret).attach(app)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--redis", help="redis://HOST:PORT/DB: use AsyncRedisManager")
    parser.add_argument("--secret", required=True, help="HS256 secret of the user tokens")
    args = parser.parse_args(argv)
    # No logging at all: logger=False still prints ERROR records (e.g. when thousands
    # of sockets drop at once), and the benchmark measures fan-out, not log lines.
    logging.disable(logging.CRITICAL)
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(
            make_app(args.redis, args.secret),
            host=args.host,
            port=args.port,
            backlog=BACKLOG,
            print=None,
            access_log=None,
            loop=uvloop.new_event_loop(),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
