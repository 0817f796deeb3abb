"""``/socket.io/`` with python-socketio's AsyncClient (polling, websocket, and the
upgrade from one to the other), beside native clients, against real server processes.
Raw HTTP and WebSocket peers check Engine.IO's errors and malformed input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
import socketio

from tests.client import Client
from tests.e2e.support import eventually, metric
from tests.server import ServerProcess, unique

TRANSPORTS = {
    "polling": ["polling"],
    "websocket": ["websocket"],
    "upgrade": ["polling", "websocket"],
}
CONFIG = """
[namespaces.wide]
join = "anyone"
send = "anyone"
presence = true
typing = true
"""
TIMEOUT = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("sio"), config_text=CONFIG)
    process.start()
    yield process
    process.stop()
    assert "Traceback" not in process.log(), process.log()[-5000:]


@pytest.fixture(params=list(TRANSPORTS))
def transports(request: pytest.FixtureRequest) -> list[str]:
    return TRANSPORTS[request.param]


class Peer:
    """A python-socketio AsyncClient that records every event it gets."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.refused: Any = None
        self.sio.on("*", self._event)
        self.sio.on("connect_error", self._refused)

    async def _event(self, name: str, *args: Any) -> None:
        self.events.put_nowait((name, args[0] if len(args) == 1 else list(args)))

    async def _refused(self, data: Any) -> None:
        self.refused = data

    async def connect(self, server: ServerProcess, transports: list[str], **options: Any) -> None:
        await self.sio.connect(server.url, transports=transports, wait_timeout=TIMEOUT, **options)

    async def call(self, op: str, args: Any = None) -> Any:
        return await self.sio.call(op, {} if args is None else args, timeout=TIMEOUT)

    async def event(self, name: str, **fields: Any) -> Any:
        """The next event ``name`` whose fields have these values (skipping others)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                got, data = await self.events.get()
                if got == name and all(data.get(k) == v for k, v in fields.items()):
                    return data


@pytest.fixture
async def peers() -> AsyncIterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for peer in made:
        await peer.sio.disconnect()


async def connected(
    peers: list[Peer], server: ServerProcess, user: str, transports: list[str]
) -> Peer:
    peer = Peer()
    peers.append(peer)
    await peer.connect(server, transports, auth={"token": server.token(user)})
    return peer


# Connecting ------------------------------------------------------------------------------


async def test_connect_with_a_token_and_use_every_op(
    server: ServerProcess, transports: list[str], peers: list[Peer]
) -> None:
    alice, bob = unique("alice"), unique("bob")
    room = f"wide:{unique('r')}"
    a = await connected(peers, server, alice, transports)
    b = await connected(peers, server, bob, transports)
    assert a.sio.transport() == transports[-1]
    joined = await a.call("join", {"room": room})
    assert joined["room"] == room and joined["presence"] == [alice]
    assert set((await b.call("join", room))["presence"]) == {alice, bob}
    await a.event("presence", room=room, user=bob, event="join")
    sent = await a.call("send", {"room": room, "body": {"text": "hi"}, "client_id": "c1"})
    assert sent["seq"] == 1 and sent["room"] == room
    for peer in (a, b):
        message = await peer.event("message", room=room)
        assert message == {
            "room": room,
            "seq": 1,
            "user": alice,
            "body": {"text": "hi"},
            "ts": sent["ts"],
            "client_id": "c1",
        }
    # The app's own event name for sending.
    assert (await b.call("message", {"room": room, "body": "yo"}))["seq"] == 2
    assert (await a.event("message", room=room))["body"] == "yo"
    history = await a.call("history", {"room": room, "limit": 10})
    assert [m["seq"] for m in history["messages"]] == [1, 2] and history["more"] is False
    assert await a.call("typing", {"room": room, "active": True}) == {}
    assert (await b.event("typing", room=room)) == {"room": room, "user": alice, "active": True}
    assert (await b.call("read", {"room": room, "seq": 2})) == {"room": room, "seq": 2}
    assert (await a.event("read", room=room, user=bob))["seq"] == 2
    assert set((await a.call("presence", {"room": room}))["users"]) == {alice, bob}
    status, body = await server.rest(
        "POST", "/api/v1/notifications", {"to": [alice], "type": "like", "data": {"post": 7}}
    )
    assert status == 202, body
    notification = await a.event("notification", type="like")
    assert notification["data"] == {"post": 7} and notification["read"] is False
    listed = await a.call("notifications", {"unread": True})
    assert listed["unread_count"] == 1 and listed["items"][0]["id"] == notification["id"]
    assert await a.call("notifications.read", {"up_to": notification["id"]}) == {"unread_count": 0}
    refreshed = await a.call("refresh", {"token": server.token(alice, ttl=7200)})
    assert refreshed["expires_at"] > 0
    assert await a.call("ping") == {}
    assert await a.call("leave", {"room": room}) == {}
    await b.event("presence", room=room, user=alice, event="leave")


async def test_errors_are_acks_with_code_and_message(
    server: ServerProcess, transports: list[str], peers: list[Peer]
) -> None:
    a = await connected(peers, server, unique("alice"), transports)
    refused = await a.call("join", {"room": "swap:nobody"})
    assert refused["error"]["code"] == "forbidden" and refused["error"]["message"]
    assert (await a.call("send", {"room": "nope"}))["error"]["code"] == "bad_request"
    assert (await a.call("fly", {}))["error"]["code"] == "bad_request"
    # Still connected and working.
    assert await a.call("ping") == {}


async def test_a_bad_token_is_refused_with_connect_error(
    server: ServerProcess, transports: list[str]
) -> None:
    peer = Peer()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await peer.connect(server, transports, auth={"token": "not-a-jwt"})
    assert peer.refused["data"] == {"code": "unauthorized"}
    assert peer.refused["message"]
    expired = Peer()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await expired.connect(server, transports, auth={"token": server.token("x", ttl=-60)})
    assert expired.refused["data"] == {"code": "unauthorized"}
    nothing = Peer()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await nothing.connect(server, transports)
    assert nothing.refused["data"] == {"code": "unauthorized"}


async def test_the_authorization_header_authenticates(
    server: ServerProcess, transports: list[str], peers: list[Peer]
) -> None:
    user = unique("carol")
    peer = Peer()
    peers.append(peer)
    await peer.connect(
        server, transports, headers={"Authorization": f"Bearer {server.token(user)}"}
    )
    history = await peer.call("history", {"room": f"user:{user}"})
    assert history["messages"] == []


async def test_other_namespaces_are_refused(server: ServerProcess, transports: list[str]) -> None:
    peer = Peer()
    peer.sio.on("connect_error", peer._refused, namespace="/admin")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await peer.connect(
            server, transports, namespaces=["/admin"], auth={"token": server.token("dave")}
        )
    assert peer.refused == {"message": "Invalid namespace"}


# Beside native clients -------------------------------------------------------------------


async def test_socketio_and_native_clients_see_one_room_in_one_order(
    server: ServerProcess, transports: list[str], peers: list[Peer]
) -> None:
    room = f"wide:{unique('mix')}"
    sio_user, native_user = unique("s"), unique("n")
    sio = await connected(peers, server, sio_user, transports)
    await sio.call("join", {"room": room})
    native = await Client.connected(server.ws_url, server.token(native_user), rooms=[room])
    try:
        count = 20
        sends = []
        for index in range(count):
            if index % 2:
                sends.append(native.call("send", room=room, body={"n": index}))
            else:
                sends.append(sio.call("send", {"room": room, "body": {"n": index}}))
        await asyncio.gather(*sends)
        native_seen = [(await native.push("message")) for _ in range(count)]
        sio_seen = [await sio.event("message", room=room) for _ in range(count)]
        assert [m["seq"] for m in native_seen] == list(range(1, count + 1))
        strip = [{k: v for k, v in m.items() if k != "push"} for m in native_seen]
        assert sio_seen == strip
    finally:
        await native.close()


# Engine.IO over raw HTTP -----------------------------------------------------------------


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with http.get(url) as response:
        return response.status, await response.read()


async def _post(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, bytes]:
    async with http.post(url, data=body) as response:
        return response.status, await response.read()


async def test_engineio_errors(server: ServerProcess) -> None:
    base = f"{server.url}/socket.io/"
    async with aiohttp.ClientSession() as http:
        assert await _get(http, f"{base}?EIO=3&transport=polling") == (
            400,
            b'{"code":5,"message":"Unsupported protocol version"}',
        )
        assert (await _get(http, f"{base}?EIO=4&transport=carrier"))[1] == (
            b'{"code":0,"message":"Transport unknown"}'
        )
        assert await _get(http, f"{base}?EIO=4&transport=polling&sid=nope.c2VydmVy") == (
            400,
            b'{"code":1,"message":"Session ID unknown"}',
        )
        assert (await _post(http, f"{base}?EIO=4&transport=polling", b"40"))[1] == (
            b'{"code":2,"message":"Bad handshake method"}'
        )


async def open_polling(http: aiohttp.ClientSession, server: ServerProcess) -> str:
    """A polling session's URL (with its sid) after the open packet."""
    status, body = await _get(http, f"{server.url}/socket.io/?EIO=4&transport=polling")
    assert status == 200 and body.startswith(b"0")
    handshake = orjson.loads(body[1:])
    assert handshake["upgrades"] == ["websocket"] and handshake["maxPayload"] > 0
    return f"{server.url}/socket.io/?EIO=4&transport=polling&sid={handshake['sid']}"


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xfe", b"9", b"4x", b'42["connect"]', b"bnot-base64!", b'451-["send",{}]\x1e4junk'],
)
async def test_malformed_polling_packets_close_the_session_cleanly(
    server: ServerProcess, garbage: bytes
) -> None:
    async with aiohttp.ClientSession() as http:
        url = await open_polling(http, server)
        token = server.token(unique("eve"))
        assert await _post(http, url, b'40{"token":"%s"}' % token.encode()) == (200, b"ok")
        status, body = await _get(http, url)
        assert status == 200 and body.startswith(b"40{"), body
        status, _ = await _post(http, url, garbage)
        closing = b""
        while True:  # the session's last packets, then it is gone
            status, body = await _get(http, url)
            if status != 200:
                break
            closing += body
        assert b'42["closing",{"code":4000' in closing and closing.endswith(b"41\x1e1")
        assert body == b'{"code":1,"message":"Session ID unknown"}'


async def test_overlapping_gets_close_the_session(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        url = await open_polling(http, server)
        first = asyncio.ensure_future(_get(http, url))
        await asyncio.sleep(0.2)
        assert (await _get(http, url))[0] == 400
        status, body = await first
        assert status == 200 and body.endswith(b"1")


async def test_a_payload_over_max_payload_is_refused(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        url = await open_polling(http, server)
        huge = b'42["send",{"room":"wide:x","body":"' + b"x" * 300_000 + b'"}]'
        assert (await _post(http, url, huge))[0] == 413


async def test_malformed_websocket_packets_close_cleanly(server: ServerProcess) -> None:
    url = f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as http:
        garbage_frames: list[str | bytes] = [
            "7",
            '42["x"',
            "4" + "2" * 30 + '["x"]',
            b"\x00stray attachment",
        ]
        for garbage in garbage_frames:
            async with http.ws_connect(url) as ws:
                opened = await ws.receive_str(timeout=TIMEOUT)
                assert opened.startswith("0{")
                await ws.send_str(f'40{{"token":"{server.token(unique("m"))}"}}')
                assert (await ws.receive_str(timeout=TIMEOUT)).startswith("40{")
                if isinstance(garbage, bytes):
                    await ws.send_bytes(garbage)
                else:
                    await ws.send_str(garbage)
                texts = []
                async with asyncio.timeout(TIMEOUT):
                    async for frame in ws:
                        if frame.type is aiohttp.WSMsgType.TEXT:
                            texts.append(frame.data)
                assert any(t.startswith('42["closing",{"code":4000') for t in texts), texts
                assert texts[-1] == "41"
                assert ws.close_code == 4000


# Limits ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("sio-strict"),
        config_text=CONFIG,
        env={
            "REALTIME_SERVER_RATE_LIMIT": "2",
            "REALTIME_SERVER_RATE_BURST": "5",
            "REALTIME_SERVER_RATE_LIMIT_STRIKES": "3",
            "REALTIME_SERVER_MAX_CONNECTIONS_PER_USER": "2",
            "REALTIME_SERVER_SEND_BUFFER_BYTES": "65536",
            "REALTIME_SERVER_SEND_BUFFER_SOFT_BYTES": "65536",
            "REALTIME_SERVER_PING_INTERVAL": "0.5",
            "REALTIME_SERVER_PING_TIMEOUT": "2",
        },
    )
    process.start()
    yield process
    process.stop()
    assert "Traceback" not in process.log(), process.log()[-5000:]


async def test_the_rate_limit_closes_with_a_reason(
    strict_server: ServerProcess, transports: list[str], peers: list[Peer]
) -> None:
    peer = await connected(peers, strict_server, unique("flood"), transports)
    for _ in range(12):
        await peer.sio.emit("ping", {})
    closing = await peer.event("closing")
    assert closing["code"] == 4008 and "rate limit" in closing["reason"]
    await eventually(_disconnected(peer), timeout=TIMEOUT)


async def test_connections_per_user_are_limited(
    strict_server: ServerProcess, transports: list[str], peers: list[Peer]
) -> None:
    user = unique("many")
    for _ in range(2):
        await connected(peers, strict_server, user, transports)
    third = Peer()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await third.connect(strict_server, transports, auth={"token": strict_server.token(user)})
    assert third.refused["data"] == {"code": "forbidden"}
    assert "too many connections" in third.refused["message"]


async def test_a_polling_client_that_stops_reading_is_closed_with_a_reason(
    strict_server: ServerProcess,
) -> None:
    """The send buffer's limit (4009 natively): the closing event, then DISCONNECT."""
    room = f"wide:{unique('slow')}"
    async with aiohttp.ClientSession() as http:
        url = await open_polling(http, strict_server)
        token = strict_server.token(unique("slow"))
        await _post(http, url, b'40{"token":"%s"}' % token.encode())
        await _post(http, url, b'420["join",{"room":"%s"}]' % room.encode())
        await _get(http, url)  # the CONNECT answer and the join's ack
        body = {"pad": "x" * 4000}
        for _ in range(40):  # about 160 KB for a 64 KB buffer, never read
            status, _ = await strict_server.rest(
                "POST", f"/api/v1/rooms/{room}/messages", {"body": body}
            )
            assert status == 201
        data = b""
        while not data.endswith(b"\x1e1"):  # 16 packets a response: read to the end
            status, more = await _get(http, url)
            assert status == 200, more
            data += b"\x1e" + more
        assert b'42["closing",{"code":4009' in data and data.endswith(b"41\x1e1")
        assert data.count(b'42["message"') < 40


async def test_a_silent_client_is_dropped_after_the_ping_timeout(
    strict_server: ServerProcess,
) -> None:
    async def dropped() -> float:
        _, text = await strict_server.rest("GET", "/metrics")
        return metric(text, "realtime_disconnects_total", code="1001")

    before = await dropped()
    async with aiohttp.ClientSession() as http:
        url = await open_polling(http, strict_server)
        await _post(http, url, b'40{"token":"%s"}' % strict_server.token(unique("quiet")).encode())

        async def gone() -> bool:
            return await dropped() > before  # asking /metrics is no traffic of the session

        await eventually(gone, timeout=TIMEOUT)
        assert await _get(http, url) == (400, b'{"code":1,"message":"Session ID unknown"}')


def _disconnected(peer: Peer) -> Any:
    async def check() -> bool:
        return not peer.sio.connected

    return check


# Recovery -------------------------------------------------------------------------------------


async def test_a_connect_with_pid_and_offset_gets_what_it_missed(
    server: ServerProcess, peers: list[Peer]
) -> None:
    """What socket.io-client sends when it reconnects: the rooms are joined again and the
    messages after the offset arrive before anything newer."""
    user = unique("rec")
    room = f"wide:{unique('rec')}"
    first = await connected(peers, server, user, ["websocket"])
    await first.call("join", {"room": room})
    await first.call("send", {"room": room, "body": 1})
    offset = None
    while offset is None or f"{room}=1" not in offset:
        name, data = await asyncio.wait_for(first.events.get(), TIMEOUT)
        if name == "offset":
            offset = data
    await first.sio.disconnect()
    for body in (2, 3):
        await server.rest("POST", f"/api/v1/rooms/{room}/messages", {"body": body})
    again = Peer()
    peers.append(again)
    await again.connect(
        server, ["polling"], auth={"token": server.token(user), "pid": "p1", "offset": offset}
    )
    assert [(await again.event("message", room=room))["body"] for _ in range(2)] == [2, 3]
    sent = await again.call("send", {"room": room, "body": 4})
    assert sent["seq"] == 4 and (await again.event("message", room=room))["body"] == 4


# Closing ----------------------------------------------------------------------------------


class Watched(Peer):
    """A peer that also records why it was disconnected."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: asyncio.Queue[str] = asyncio.Queue()
        self.sio.on("disconnect", self._disconnected)

    async def _disconnected(self, reason: str) -> None:
        self.reasons.put_nowait(str(reason))


async def test_a_disconnect_over_rest_says_why_and_stops_reconnects(
    server: ServerProcess, transports: list[str], peers: list[Peer]
) -> None:
    user = unique("kick")
    peer = Watched()
    peers.append(peer)
    await peer.connect(server, transports, auth={"token": server.token(user)})
    status, _ = await server.rest(
        "POST", f"/api/v1/users/{user}/disconnect", {"reason": "account closed"}
    )
    assert status == 204
    assert await peer.event("closing") == {"code": 4004, "reason": "account closed"}
    reason = await asyncio.wait_for(peer.reasons.get(), TIMEOUT)
    assert reason == socketio.AsyncClient.reason.SERVER_DISCONNECT


async def test_a_restart_says_why_and_invites_a_reconnect(
    make_server: Any, transports: list[str], peers: list[Peer]
) -> None:
    server = make_server(config_text=CONFIG)
    peer = Watched()
    peers.append(peer)
    await peer.connect(server, transports, auth={"token": server.token(unique("r"))})
    stopping = asyncio.get_running_loop().run_in_executor(None, server.terminate)
    closing = await peer.event("closing")
    assert closing["code"] == 1012
    reason = await asyncio.wait_for(peer.reasons.get(), TIMEOUT)
    # A lost transport, not the server's DISCONNECT: clients reconnect by themselves.
    assert reason == socketio.AsyncClient.reason.TRANSPORT_ERROR
    assert await stopping == 0
