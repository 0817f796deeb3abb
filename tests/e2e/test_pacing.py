"""Server-paced reconnect over real sockets: the advice in paced closes (1012 at
SIGTERM, 1001 after the ping timeout), and 503 with Retry-After past
``server.max_handshake_rate`` and while the event loop is behind (``server.max_lag``;
the cap on connections opening is tested behind a frozen store, in
test_frozen_postgres.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
from typing import Any

import aiohttp
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from protocol.advice import ReconnectAdvice, parse_advice, reason_text
from tests.client import Client, close_all
from tests.e2e.helpers_auth import encode, raw_open, raw_reply
from tests.e2e.support import eventually
from tests.server import ServerProcess, unique

PACED = {"REALTIME_SERVER_RECONNECT_RATE": "10", "REALTIME_SERVER_RECONNECT_DELAY": "0.2"}


async def _drain_advice(server: ServerProcess, count: int) -> list[ReconnectAdvice]:
    clients = [
        await Client.connected(server.ws_url, server.token(unique("u"))) for _ in range(count)
    ]
    exit_code = asyncio.create_task(asyncio.to_thread(server.terminate))
    closes = await asyncio.gather(*(c.closed() for c in clients))
    assert await exit_code == 0
    await close_all(*clients)
    advice = []
    for code, reason in closes:
        assert code == 1012
        assert reason_text(reason) == "server restarting: reconnect"  # old clients' text
        parsed = parse_advice(reason)
        assert parsed is not None, reason
        advice.append(parsed)
    return advice


async def test_a_drain_advises_a_window_that_grows_with_the_clients_leaving(
    make_server: Any,
) -> None:
    few = await _drain_advice(make_server(env=PACED), 3)
    many = await _drain_advice(make_server(env=PACED), 30)
    # Every client waits the delay; 3 at 10/s spread over the 0.2 s floor, 30 over ~3 s.
    assert {a.after_ms for a in few + many} == {200}
    assert max(a.jitter_ms for a in few) <= 300
    assert min(a.jitter_ms for a in many) > 1500
    assert max(a.jitter_ms for a in many) <= 3000


async def test_the_ping_timeout_close_carries_advice(make_server: Any) -> None:
    server: ServerProcess = make_server(
        env={
            **PACED,
            "REALTIME_SERVER_PING_INTERVAL": "0.2",
            "REALTIME_SERVER_PING_TIMEOUT": "0.5",
        }
    )
    # A client that opens the WebSocket and then never sends a byte, not even a pong.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        async with asyncio.timeout(30):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            while True:
                first, length = await reader.readexactly(2)
                payload = await reader.readexactly(length & 0x7F)  # control frames: < 126
                if first & 0x0F == 0x8:
                    break
    finally:
        writer.close()
        await writer.wait_closed()
    assert int.from_bytes(payload[:2], "big") == 1001
    reason = payload[2:].decode()
    assert reason_text(reason) == "no traffic within the ping timeout"
    assert parse_advice(reason) == ReconnectAdvice(200, 200)


async def test_handshakes_past_the_rate_get_503_with_retry_after(make_server: Any) -> None:
    server: ServerProcess = make_server(env={"REALTIME_SERVER_MAX_HANDSHAKE_RATE": "2"})

    async def attempt() -> Any:
        try:
            async with connect(server.ws_url, open_timeout=30):
                return 101
        except InvalidStatus as error:
            return error.response

    outcomes = await asyncio.gather(*(attempt() for _ in range(20)))
    refused = [o for o in outcomes if o != 101]
    assert 101 in outcomes and refused
    for response in refused:
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) >= 1
        assert orjson.loads(response.body)["error"]["code"] == "unavailable"
    # Past the burst the refused are told later and later, not all the same second.
    waits = [int(r.headers["Retry-After"]) for r in refused]
    if len(refused) > 4:
        assert max(waits) > min(waits), waits

    # The same on an upgrade that comes on a kept-alive HTTP connection (aiohttp's route).
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        statuses = []
        for _ in range(10):
            async with session.get(f"{server.url}/healthz") as health:
                assert health.status == 200
            try:
                async with session.ws_connect(server.ws_url):
                    statuses.append(101)
            except aiohttp.WSServerHandshakeError as error:
                statuses.append(error.status)
                assert error.headers is not None and int(error.headers["Retry-After"]) >= 1
    assert 503 in statuses
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}/metrics") as metrics,
    ):
        text = await metrics.text()
    counted = [
        line for line in text.splitlines() if line.startswith("realtime_handshakes_refused_total ")
    ]
    assert counted and float(counted[0].split()[-1]) >= len(refused), counted


async def test_without_a_rate_no_handshake_is_refused(make_server: Any) -> None:
    server: ServerProcess = make_server(env={"REALTIME_SERVER_MAX_HANDSHAKE_RATE": "0"})
    clients = await asyncio.gather(
        *(Client.connected(server.ws_url, server.token(unique("u"))) for _ in range(30))
    )
    await close_all(*clients)


async def test_a_reader_too_slow_is_closed_4009_with_advice(make_server: Any) -> None:
    server: ServerProcess = make_server(env={**PACED, "REALTIME_SERVER_SEND_BUFFER_BYTES": "4096"})
    room = unique("swap:")
    sender_user, slow_user = unique("s"), unique("r")
    sender = await Client.connected(server.ws_url, server.token(sender_user))
    await sender.call("join", room=room, token=server.token(sender_user, room=room))
    # A reader that stops reading: a small receive buffer, and websockets stops taking
    # bytes off the socket once one frame waits unread.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    slow = await raw_open(server.ws_url, ["rt1.json"], sock=sock, max_queue=1)
    try:
        token = server.token(slow_user)
        await slow.send(encode("json", {"id": 1, "op": "connect", "token": token}))
        await raw_reply(slow, 1)
        room_token = server.token(slow_user, room=room)
        await slow.send(encode("json", {"id": 2, "op": "join", "room": room, "token": room_token}))
        await raw_reply(slow, 2)
        body = "z" * 60000
        for i in range(100):  # 6 MB: more than the kernel buffers hold
            await sender.call("send", room=room, body=body, client_id=str(i))
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(30):
                async for _ in slow:
                    pass
        received = slow.protocol.close_rcvd
    finally:
        await slow.close()
        await close_all(sender)
    assert received is not None and received.code == 4009, received
    assert reason_text(received.reason) == "send buffer full: reading too slowly"
    advice = parse_advice(received.reason)
    assert advice is not None and advice.after_ms == 200, received.reason


def _upgrade(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def test_an_instance_whose_loop_fell_behind_turns_new_websockets_away(
    make_server: Any,
) -> None:
    server: ServerProcess = make_server(env={"REALTIME_SERVER_MAX_LAG": "1"})
    assert server.process is not None
    pid = server.process.pid
    # Stopped, the instance runs behind by as long as it is stopped: an upgrade sent
    # meanwhile is read when it comes back, at least 2 s behind.
    os.kill(pid, signal.SIGSTOP)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(_upgrade(server.port))
        await writer.drain()
        await asyncio.sleep(3)
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        async with asyncio.timeout(30):
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.read()
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 503"), head
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line)
    assert int(headers["Retry-After"]) >= 1
    assert orjson.loads(body)["error"]["code"] == "unavailable"

    # Caught up, it takes new WebSockets again.
    async def admitted() -> bool:
        try:
            async with connect(server.ws_url, open_timeout=30):
                return True
        except InvalidStatus as error:
            assert error.response.status_code == 503
            return False

    await eventually(admitted, timeout=30, interval=0.2)
