"""The benchmark's peer servers still start and speak what the load generator expects.

Each test starts a real peer process (not pinned) and does a join → send →
receive round trip with a plain ``websockets`` client: the Socket.IO peers (Node
Socket.IO and python-socketio) with a token in the CONNECT's ``auth``, three
clients in one room, acks for ``join`` and ``send``. The Node peer's tests skip
when Node.js (>= 20) is missing; its packages come from npm the first time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench.contenders import NODE_PEER, SOCKETIO_PATH, Running, start_node_peer, start_peer
from bench.node import NodeUnavailable, node_binary, node_with_packages
from tests.server import SECRET
from tests.services import RedisServer

SOCKETIO = "bench.peers.socketio_server"
RT1_JSON = Subprotocol("rt1.json")
ROOM = "followers:bench-owner"
TIMEOUT = 30.0


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


def user_token(user: str) -> str:
    return jwt.encode({"sub": user}, SECRET, algorithm="HS256")


async def receive(ws: ClientConnection) -> str:
    """The next Socket.IO packet, Engine.IO pings answered on the way."""
    async with asyncio.timeout(TIMEOUT):
        while (packet := await ws.recv(decode=True)) == "2":
            await ws.send("3")
    return packet


async def socketio_client(url: str, token: str) -> tuple[ClientConnection, str]:
    """Engine.IO v4 over the websocket transport, the token in CONNECT's ``auth``;
    the open socket and the server's answer to the CONNECT."""
    ws = await connect(url + "?EIO=4&transport=websocket")
    opened = await receive(ws)
    assert opened.startswith("0") and "pingInterval" in opened
    await ws.send("40" + json.dumps({"token": token}))
    return ws, await receive(ws)


def packet_json(packet: str, head: str) -> Any:
    assert packet.startswith(head), packet
    return json.loads(packet[len(head) :])


async def socketio_fan_out(url: str) -> None:
    """Three clients join one room; one sends; all three get the message, the sender its ack."""
    clients = []
    try:
        for number in range(3):
            ws, answer = await socketio_client(url, user_token(f"u{number}"))
            clients.append(ws)
            assert answer.startswith("40{")  # connected, with its sid
            await ws.send("421" + json.dumps(["join", {"room": ROOM, "token": "unchecked"}]))
            assert packet_json(await receive(ws), "431") == [{"room": ROOM, "seq": 0}]
        body = {"t": 1763900000123456789, "p": "x" * 50}
        await clients[0].send("422" + json.dumps(["send", {"room": ROOM, "body": body}]))
        for number, ws in enumerate(clients):
            packets = [await receive(ws) for _ in range(2 if number == 0 else 1)]
            event = next(packet_json(p, "42") for p in packets if p.startswith('42["'))
            name, message = event
            assert name == "message"
            assert (message["room"], message["seq"], message["user"]) == (ROOM, 1, "u0")
            assert message["body"]["p"] == body["p"] and isinstance(message["ts"], int)
            # Node parses JSON numbers as doubles: the send time keeps its 19 digits.
            assert len(str(message["body"]["t"])) == 19
            if number == 0:
                ack = next(packet_json(p, "432") for p in packets if p.startswith("432"))
                assert ack == [{"room": ROOM, "seq": 1, "ts": message["ts"]}]
    finally:
        for ws in clients:
            await ws.close()


async def socketio_refuses_a_bad_token(url: str) -> None:
    forged = jwt.encode({"sub": "u"}, "not-the-secret-" * 4, algorithm="HS256")
    ws, answer = await socketio_client(url, forged)
    try:
        assert packet_json(answer, "44")["message"] == "unauthorized"
    finally:
        await ws.close()


@pytest.fixture
def python_socketio(tmp_path: Path) -> Iterator[Running]:
    running = start_peer(tmp_path, SOCKETIO, "--secret", SECRET, ws_path=SOCKETIO_PATH, cpu=None)
    yield running
    running.stop()


async def test_python_socketio_fans_out_to_three(python_socketio: Running) -> None:
    await socketio_fan_out(python_socketio.ws_url)
    await socketio_refuses_a_bad_token(python_socketio.ws_url)


async def test_python_socketio_redis_manager(tmp_path: Path, redis_server: RedisServer) -> None:
    args = ("--secret", SECRET, "--redis", redis_server.url)
    running = start_peer(tmp_path, SOCKETIO, *args, ws_path=SOCKETIO_PATH, cpu=None)
    try:
        await socketio_fan_out(running.ws_url)
    finally:
        running.stop()


@pytest.fixture(scope="session")
def node_peer_installed() -> None:
    """Node.js >= 20 (else the test skips) and the Node peer's packages (npm ci)."""
    try:
        node_binary()
    except NodeUnavailable as error:
        pytest.skip(str(error))
    try:
        node_with_packages(NODE_PEER)
    except NodeUnavailable as error:
        pytest.fail(str(error))


@pytest.fixture
def node_socketio(tmp_path: Path, node_peer_installed: None) -> Iterator[Running]:
    running = start_node_peer(tmp_path, cpu=None)
    yield running
    running.stop()


async def test_node_socketio_fans_out_to_three(node_socketio: Running) -> None:
    await socketio_fan_out(node_socketio.ws_url)
    await socketio_refuses_a_bad_token(node_socketio.ws_url)
