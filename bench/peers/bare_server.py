"""The bare reference: the least Python can do to fan a message out over WebSocket.

    python -m bench.peers.bare_server [--host 127.0.0.1] [--port 8090]

An aiohttp + uvloop server on ``/ws`` speaking just the subset of realtime's
protocol that ``loadtest fanout`` and ``loadtest idle`` use:

- the upgrade's ``Authorization: Bearer`` header is accepted without a check;
- ``join`` → ``{"room", "seq": 0, "epoch": "bare", "missed": [], "recovered": false}``;
- ``send`` → ``{"room", "seq", "ts"}``, and the ``message`` push is encoded once
  (orjson), framed once, and that one frame is written with ``transport.write`` to
  every socket in the room;
- ``leave`` and ``ping`` → ``{}``; anything else → a ``bad_request`` error.

Nothing is stored, nothing is checked, no send buffer is watched: it is the floor
("the limit") that a real server's cost per delivery is compared with, not a server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

import orjson
import uvloop
from aiohttp import WSMsgType, web
from websockets.frames import Frame, Opcode

EPOCH = "bare"
# As realtime's: connection storms of thousands must not overflow the accept queue.
BACKLOG = 4096


def text_frame(message: dict[str, Any]) -> bytes:
    """One unmasked server text frame carrying ``message`` as JSON."""
    return Frame(Opcode.TEXT, orjson.dumps(message)).serialize(mask=False)


class Rooms:
    """Room name → the transports joined to it, and each room's last seq."""

    def __init__(self) -> None:
        self.members: dict[str, set[asyncio.Transport]] = {}
        self.seqs: dict[str, int] = {}

    def join(self, room: str, transport: asyncio.Transport) -> None:
        self.members.setdefault(room, set()).add(transport)

    def leave(self, room: str, transport: asyncio.Transport) -> None:
        members = self.members.get(room)
        if members is not None:
            members.discard(transport)
            if not members:
                del self.members[room]

    def publish(self, room: str, user: str, body: Any) -> tuple[int, int]:
        """Fan one message out; returns its (seq, ts)."""
        seq = self.seqs.get(room, 0) + 1
        self.seqs[room] = seq
        ts = time.time_ns() // 1_000_000
        push = {"push": "message", "room": room, "seq": seq, "user": user, "body": body, "ts": ts}
        frame = text_frame(push)
        # The whole point of this server: no per-recipient Python but the write.
        for transport in self.members.get(room, ()):
            transport.write(frame)
        return seq, ts


ROOMS = web.AppKey("rooms", Rooms)


def handle(rooms: Rooms, transport: asyncio.Transport, joined: set[str], data: bytes) -> bytes:
    """The reply frame to one command (or b"" for a command without id)."""
    command = orjson.loads(data)
    op, room, command_id = command.get("op"), command.get("room"), command.get("id")
    reply: dict[str, Any]
    if op == "join" and isinstance(room, str):
        rooms.join(room, transport)
        joined.add(room)
        seq = rooms.seqs.get(room, 0)
        reply = {"room": room, "seq": seq, "epoch": EPOCH, "missed": [], "recovered": False}
    elif op == "send" and isinstance(room, str):
        seq, ts = rooms.publish(room, "bench", command.get("body"))
        reply = {"room": room, "seq": seq, "ts": ts}
    elif op == "leave" and isinstance(room, str):
        rooms.leave(room, transport)
        joined.discard(room)
        reply = {}
    elif op in ("ping", "connect"):
        reply = {}
    else:
        error = {"code": "bad_request", "message": f"bare server: no op {op!r}"}
        return text_frame({"id": command_id, "error": error}) if command_id else b""
    return text_frame({"id": command_id, "ok": reply}) if command_id else b""


async def websocket(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(protocols=("rt1.json",), max_msg_size=1 << 20)
    await ws.prepare(request)
    transport = request.transport
    if transport is None:  # the client left during the handshake
        return ws
    rooms = request.app[ROOMS]
    joined: set[str] = set()
    try:
        async for message in ws:
            if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            data = message.data if isinstance(message.data, bytes) else message.data.encode()
            try:
                reply = handle(rooms, transport, joined, data)
            except (orjson.JSONDecodeError, AttributeError):
                await ws.close(code=4000, message=b"bad frame")
                break
            if reply:
                transport.write(reply)
    finally:
        for room in joined:
            rooms.leave(room, transport)
    return ws


def make_app() -> web.Application:
    app = web.Application()
    app[ROOMS] = Rooms()
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    return app


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "instance": "bare"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(
            make_app(),
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
