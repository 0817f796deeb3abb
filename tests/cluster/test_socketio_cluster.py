"""Socket.IO on several instances (PostgreSQL + Redis): clients on different instances
share a room; a client of a killed instance recovers on another; a polling session's
requests are served on any instance (relayed to its owner), with Engine.IO's error when
the owner died or Redis is down; an upgrade on another instance moves the session there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest
import websockets

from tests.client import Client
from tests.cluster.conftest import make_cluster
from tests.e2e.support import eventually, metric
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


# Polling on another instance: the relay -------------------------------------------------

FAST = {"REALTIME_SERVER_PING_INTERVAL": "2", "REALTIME_SERVER_PING_TIMEOUT": "30"}


class Polling:
    """A raw Engine.IO polling session: any request may go to any instance."""

    def __init__(self, http: aiohttp.ClientSession, sid: str) -> None:
        self.http = http
        self.sid = sid

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, instance: ServerProcess) -> Polling:
        async with http.get(f"{instance.url}/socket.io/?EIO=4&transport=polling") as got:
            assert got.status == 200
            return cls(http, orjson.loads((await got.read())[1:])["sid"])

    def url(self, instance: ServerProcess) -> str:
        return f"{instance.url}/socket.io/?EIO=4&transport=polling&sid={self.sid}"

    async def get(self, instance: ServerProcess) -> tuple[int, bytes]:
        async with self.http.get(self.url(instance)) as response:
            return response.status, await response.read()

    async def post(self, instance: ServerProcess, body: bytes) -> tuple[int, bytes]:
        async with self.http.post(self.url(instance), data=body) as response:
            return response.status, await response.read()

    async def until(self, instance: ServerProcess, wanted: bytes) -> bytes:
        """GET (pinging back) until a response holds ``wanted``; returns what came."""
        got = b""
        async with asyncio.timeout(TIMEOUT):
            while wanted not in got:
                status, body = await self.get(instance)
                assert status == 200, body
                got += body + b"\x1e"
                if b"2" in body.split(b"\x1e"):
                    await self.post(instance, b"3")
        return got


async def relayed(instance: ServerProcess, op: str, result: str = "ok") -> float:
    _, text = await instance.rest("GET", "/metrics")
    return metric(text, "realtime_sio_relayed_total", op=op, result=result)


async def served(instance: ServerProcess, op: str) -> float:
    _, text = await instance.rest("GET", "/metrics")
    return metric(text, "realtime_sio_relay_served_total", op=op)


UNKNOWN = b'{"code":1,"message":"Session ID unknown"}'


def message_seqs(packets: list[str]) -> list[str]:
    """The seqs of the ``message`` events among Socket.IO packets, in order."""
    return [str(orjson.loads(p[2:])[1]["seq"]) for p in packets if p.startswith('42["message"')]


async def test_another_instances_polling_session_is_served_through_the_relay(
    tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    cluster = make_cluster(tmp_path, postgres_server, redis_server.url, size=2, **FAST)
    owner, other = cluster[0], cluster[1]
    try:
        room = f"swap:{unique('relay')}"
        alice = unique("alice")
        await member(owner, room, alice)
        async with aiohttp.ClientSession() as http:
            session = await Polling.open(http, owner)
            token = owner.token(alice)
            connect = b'40{"token":"%s"}' % token.encode()
            assert await session.post(other, connect) == (200, b"ok")
            assert b"\x1e40{" in b"\x1e" + await session.until(other, b"40{")
            join = b'420["join",{"room":"%s"}]' % room.encode()
            assert await session.post(other, join) == (200, b"ok")
            assert b'"seq":0' in await session.until(other, b"430[")
            status, _ = await owner.rest("POST", f"/api/v1/rooms/{room}/messages", {"body": 1})
            assert status == 201
            got = await session.until(other, b'42["message"')
            assert b'"seq":1' in got
            assert await relayed(other, "get") >= 3 and await relayed(other, "post") == 2
            assert await served(owner, "get") >= 3 and await served(owner, "post") == 2
            # The owner holds it alone: its own requests are served directly.
            assert (await session.get(owner))[0] == 200
            assert await relayed(owner, "get") == 0

            # A long poll waiting on the owner when it dies ends with Engine.IO's
            # error, not at the end of the poll: the client reconnects and recovers.
            before = await served(owner, "get")
            polling = asyncio.ensure_future(session.get(other))

            async def waiting() -> bool:
                return await served(owner, "get") > before

            await eventually(waiting, timeout=TIMEOUT)
            owner.kill()
            assert await asyncio.wait_for(polling, TIMEOUT * 3) == (400, UNKNOWN)
            assert await session.post(other, b"3") == (400, UNKNOWN)
            assert await relayed(other, "post", "gone") == 1
    finally:
        cluster.stop()


async def test_a_redis_outage_fails_relayed_requests_until_it_heals(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    with RedisServer() as redis:
        cluster = make_cluster(tmp_path, postgres_server, redis.url, size=2, **FAST)
        owner, other = cluster[0], cluster[1]
        try:
            async with aiohttp.ClientSession() as http:
                session = await Polling.open(http, owner)
                token = owner.token(unique("o"))
                assert await session.post(other, b'40{"token":"%s"}' % token.encode()) == (
                    200,
                    b"ok",
                )
                await session.until(other, b"40{")
                redis.stop()
                status, body = await session.get(other)
                assert status == 503, body
                assert orjson.loads(body)["code"] == 3
                # The owner serves its own session all along.
                assert (await session.get(owner))[0] == 200
                redis.start()

                async def healed() -> bool:
                    status, _ = await session.get(other)
                    return status == 200

                await eventually(healed, timeout=30)
        finally:
            cluster.stop()


# An upgrade on another instance: the session moves ----------------------------------------


async def test_an_upgrade_that_reaches_another_instance_moves_the_session_there(
    tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    cluster = make_cluster(tmp_path, postgres_server, redis_server.url, size=2, **FAST)
    owner, other = cluster[0], cluster[1]
    try:
        room = f"swap:{unique('move')}"
        alice, bob = unique("alice"), unique("bob")
        for user in (alice, bob):
            await member(owner, room, user)
        watcher = await Client.connected(owner.ws_url, owner.token(bob), rooms=[{"room": room}])
        async with aiohttp.ClientSession() as http:
            session = await Polling.open(http, owner)
            connect = b'40{"token":"%s"}' % owner.token(alice).encode()
            assert await session.post(owner, connect) == (200, b"ok")
            join = b'420["join",{"room":"%s"}]' % room.encode()
            assert await session.post(owner, join) == (200, b"ok")
            await session.until(owner, b"430[")
            await watcher.push_where("presence", user=alice, event="join")
            await owner.rest("POST", f"/api/v1/rooms/{room}/messages", {"body": 1})
            polled = await session.until(owner, b'"seq":1')
            # queued on the owner, or missed by it: either way it reaches the client once
            await owner.rest("POST", f"/api/v1/rooms/{room}/messages", {"body": 2})

            url = f"ws://127.0.0.1:{other.port}/socket.io/?EIO=4&transport=websocket"
            async with websockets.connect(f"{url}&sid={session.sid}") as ws:
                await ws.send("2probe")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "3probe"
                await ws.send("5")
                await owner.rest("POST", f"/api/v1/rooms/{room}/messages", {"body": 3})
                await ws.send(f'421["send",{{"room":"{room}","body":4}}]')
                frames: list[str] = []
                async with asyncio.timeout(TIMEOUT):
                    while not any(f.startswith("431[") for f in frames):
                        frame = await ws.recv()
                        assert isinstance(frame, str)
                        frames.append(frame)
                while "4" not in message_seqs(frames):
                    frames.append(str(await asyncio.wait_for(ws.recv(), TIMEOUT)))
                got = message_seqs(polled.decode().split("\x1e")) + message_seqs(frames)
                assert got == ["1", "2", "3", "4"], (polled, frames)
                assert await relayed(other, "take") == 1 and await relayed(other, "probe") == 1
                # The owner let it go: its id is no session there any more, and its
                # connections are the watcher's alone.
                assert await session.get(owner) == (400, UNKNOWN)

                async def let_go() -> bool:
                    _, text = await owner.rest("GET", "/metrics")
                    return metric(text, "realtime_connections") == 1

                await eventually(let_go, timeout=TIMEOUT)
                # Nobody saw alice leave and come back while her session moved.
                await watcher.push_where("message", seq=4)
                await watcher.no_push("presence")
        await watcher.close()
    finally:
        cluster.stop()


async def test_a_failed_probe_on_another_instance_leaves_the_session_polling(
    tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    cluster = make_cluster(tmp_path, postgres_server, redis_server.url, size=2, **FAST)
    owner, other = cluster[0], cluster[1]
    try:
        async with aiohttp.ClientSession() as http:
            session = await Polling.open(http, owner)
            connect = b'40{"token":"%s"}' % owner.token(unique("p")).encode()
            assert await session.post(owner, connect) == (200, b"ok")
            await session.until(owner, b"40{")
            # An id of the owner's that names no session there: the owner refuses.
            forged = "x" + session.sid[1:]
            url = f"ws://127.0.0.1:{other.port}/socket.io/?EIO=4&transport=websocket"
            async with websockets.connect(f"{url}&sid={forged}") as ws:
                await ws.send("2probe")
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert await relayed(other, "probe", "gone") == 1
            # The real session is untouched, on polling, wherever its requests land.
            assert await session.post(other, b"3") == (200, b"ok")
            assert (await session.get(owner))[0] == 200
    finally:
        cluster.stop()
