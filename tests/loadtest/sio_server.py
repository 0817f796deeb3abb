"""A python-socketio server for the generator's Socket.IO tests, as the benchmark's
peer behaves: ``join`` → ``joined``; ``send`` → ``message`` {seq, body} to the room.

    python -m tests.loadtest.sio_server PORT
"""

from __future__ import annotations

import sys
from typing import Any

import socketio
from aiohttp import web


def make_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)

    async def join(sid: str, room: str) -> None:
        await sio.enter_room(sid, room)
        await sio.emit("joined", room, to=sid)

    async def send(sid: str, data: dict[str, Any]) -> None:
        await sio.emit("message", {"seq": data["seq"], "body": data["body"]}, room=data["room"])

    sio.on("join", join)
    sio.on("send", send)
    app = web.Application()
    sio.attach(app)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", healthz)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None)
