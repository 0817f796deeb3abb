"""Socket.IO over WebSocket on several instances (PostgreSQL + Redis): clients on
different instances share a room; a client of a killed instance recovers on another;
a polling request for another instance's session is refused as Engine.IO does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.cluster.conftest import make_cluster
from tests.e2e.test_socketio import Peer
from tests.server import ServerProcess, unique
from tests.services import PostgresServer, RedisServer

TIMEOUT = 10


async def member(instance: ServerProcess, room: str, user: str) -> None:
    status, _ = await instance.rest("PUT", f"/api/v1/rooms/{room}/members/{user}")
    assert status == 204


@pytest.mark.timeout(240)
async def test_socketio_clients_on_two_instances_and_recovery_after_a_kill(
    tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    cluster = make_cluster(tmp_path, postgres_server, redis_server.url, size=2)
    peers: list[Peer] = []
    try:
        room = f"swap:{unique('c')}"
        alice, bob = unique("alice"), unique("bob")
        for user in (alice, bob):
            await member(cluster[0], room, user)
        a, b = Peer(), Peer()
        peers += [a, b]
        await a.connect(cluster[0], ["websocket"], auth={"token": cluster[0].token(alice)})
        await b.connect(cluster[1], ["websocket"], auth={"token": cluster[1].token(bob)})
        await a.call("join", {"room": room})
        await b.call("join", {"room": room})
        sent = await b.call("send", {"room": room, "body": "from 1"})
        assert sent["seq"] == 1
        assert (await a.event("message", room=room))["body"] == "from 1"
        offset = None
        while offset is None or f"{room}=1" not in offset:
            name, data = await asyncio.wait_for(a.events.get(), TIMEOUT)
            if name == "offset":
                offset = data

        cluster[0].kill()  # alice's instance: no goodbye
        for body in ("missed 2", "missed 3"):
            await b.call("send", {"room": room, "body": body})
        again = Peer()
        peers.append(again)
        await again.connect(
            cluster[1],
            ["websocket"],
            auth={"token": cluster[1].token(alice), "pid": "p", "offset": offset},
        )
        got = [(await again.event("message", room=room))["body"] for _ in range(2)]
        assert got == ["missed 2", "missed 3"]
        await b.call("send", {"room": room, "body": "live 4"})
        assert (await again.event("message", room=room))["seq"] == 4
    finally:
        for peer in peers:
            await peer.sio.disconnect()
        cluster.stop()


async def test_a_polling_request_for_another_instances_session_is_unknown(
    tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    cluster = make_cluster(tmp_path, postgres_server, redis_server.url, size=2)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{cluster[0].url}/socket.io/?EIO=4&transport=polling") as got:
                sid = orjson.loads((await got.read())[1:])["sid"]
            url = f"{cluster[1].url}/socket.io/?EIO=4&transport=polling&sid={sid}"
            async with http.get(url) as elsewhere:
                assert elsewhere.status == 400
                assert await elsewhere.json() == {"code": 1, "message": "Session ID unknown"}
    finally:
        cluster.stop()
