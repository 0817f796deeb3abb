"""The benchmark's peer servers still start and speak what the load generator expects.

Each test starts a real peer process (not pinned) and does one join → send →
receive round trip with a plain ``websockets`` client. python-socketio is not in
requirements-dev.txt: its tests skip without it; the bare server always runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench.contenders import Running, start_peer
from tests.services import RedisServer

SOCKETIO = "bench.peers.socketio_server"
RT1_JSON = Subprotocol("rt1.json")


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Running]:
    running = start_peer(tmp_path, "bench.peers.bare_server", ws_path="/ws", cpu=None)
    yield running
    running.stop()


async def command(ws: ClientConnection, **message: Any) -> dict[str, Any]:
    await ws.send(json.dumps(message))
    reply: dict[str, Any] = json.loads(await ws.recv(decode=True))
    return reply


async def test_bare_server_join_send_receive(bare: Running) -> None:
    headers = {"Authorization": "Bearer not-checked"}
    async with (
        connect(bare.ws_url, additional_headers=headers, subprotocols=[RT1_JSON]) as a,
        connect(bare.ws_url, additional_headers=headers) as b,
    ):
        assert a.subprotocol == "rt1.json"
        for ws in (a, b):
            joined = await command(ws, id=1, op="join", room="swap:x", token="t")
            assert joined == {
                "id": 1,
                "ok": {
                    "room": "swap:x",
                    "seq": 0,
                    "epoch": "bare",
                    "missed": [],
                    "recovered": False,
                },
            }
        body = {"t": 123, "p": "x" * 70}
        await b.send(json.dumps({"id": 2, "op": "send", "room": "swap:x", "body": body}))
        push = json.loads(await a.recv())
        assert push["push"] == "message"
        assert (push["room"], push["seq"], push["body"]) == ("swap:x", 1, body)
        assert {"user", "ts"} <= push.keys()
        # The sender is in the room too: its own push, then its ack (or the other way).
        replies = [json.loads(await b.recv()), json.loads(await b.recv())]
        ack = next(r for r in replies if "id" in r)
        assert ack["ok"]["seq"] == 1 and ack["ok"]["room"] == "swap:x"
        error = await command(a, id=3, op="history", room="swap:x")
        assert error["error"]["code"] == "bad_request"


async def socketio_round_trip(url: str) -> None:
    """Engine.IO v4 over the websocket transport, as ``loadtest --protocol socketio``."""
    async with connect(url + "?EIO=4&transport=websocket") as ws:
        opened = await ws.recv(decode=True)
        assert opened.startswith("0") and "pingInterval" in opened
        await ws.send("40")  # connect to the default namespace
        assert (await ws.recv(decode=True)).startswith("40")
        await ws.send('42["join","room-1"]')
        assert json.loads((await ws.recv(decode=True))[2:]) == ["joined", "room-1"]
        data = {"room": "room-1", "seq": 7, "body": {"t": 1}}
        await ws.send("42" + json.dumps(["send", data]))
        assert json.loads((await ws.recv(decode=True))[2:]) == [
            "message",
            {"seq": 7, "body": {"t": 1}},
        ]


async def test_socketio_server_memory_manager(tmp_path: Path) -> None:
    running = start_peer(tmp_path, SOCKETIO, ws_path="/socket.io/", cpu=None)
    try:
        await socketio_round_trip(running.ws_url)
    finally:
        running.stop()


async def test_socketio_server_redis_manager(tmp_path: Path, redis_server: RedisServer) -> None:
    args = ("--redis", redis_server.url)
    running = start_peer(tmp_path, SOCKETIO, *args, ws_path="/socket.io/", cpu=None)
    try:
        await socketio_round_trip(running.ws_url)
    finally:
        running.stop()
