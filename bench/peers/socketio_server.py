"""python-socketio, deployed the way its users deploy it, for ``bench.compare``.

    python -m bench.peers.socketio_server [--host 127.0.0.1] [--port 8091] [--redis redis://…]

An ``AsyncServer`` on aiohttp with uvloop: the in-memory client manager, or
``AsyncRedisManager`` with ``--redis`` (how python-socketio runs on several
nodes). Needs ``pip install -r requirements-bench.txt``.

The protocol the load generator speaks (``loadtest --protocol socketio``), over the
Engine.IO v4 websocket transport at ``/socket.io/``:

- ``join`` with a room name → the socket enters the room and gets ``joined`` with
  the room name back;
- ``send`` with ``{"room", "seq", "body"}`` → ``message`` with ``{"seq", "body"}``
  is emitted to the room (sender included), with python-socketio's own broadcast:
  ``await sio.emit("message", data, room=room)``.

Everything else is python-socketio's defaults (ping interval, JSON module, handlers
run as tasks): a fair, idiomatic user, not a tuned one. ``/healthz`` tells the
benchmark the server is up.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from typing import Any

import socketio  # no types: a mypy override in pyproject.toml makes it Any
import uvloop
from aiohttp import web

BACKLOG = 4096  # as realtime's and the bare server's: connection storms must not stall


def make_server(redis_url: str | None) -> Any:
    """The AsyncServer with this benchmark's two handlers."""
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

    async def join(sid: str, room: str) -> None:
        await sio.enter_room(sid, room)
        await sio.emit("joined", room, to=sid)

    async def send(sid: str, data: dict[str, Any]) -> None:
        message = {"seq": data["seq"], "body": data["body"]}
        await sio.emit("message", message, room=data["room"])

    sio.on("join", join)
    sio.on("send", send)
    return sio


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "instance": "socketio"})


def make_app(redis_url: str | None) -> web.Application:
    app = web.Application()
    make_server(redis_url).attach(app)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--redis", help="redis://HOST:PORT/DB: use AsyncRedisManager")
    args = parser.parse_args(argv)
    # No logging at all: logger=False still prints ERROR records (e.g. when thousands
    # of sockets drop at once), and the benchmark measures fan-out, not log lines.
    logging.disable(logging.CRITICAL)
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(
            make_app(args.redis),
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
