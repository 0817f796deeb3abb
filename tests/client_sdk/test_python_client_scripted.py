"""The Python client against a scripted WebSocket server (a real socket, in process),
for what a real server does only under load: a ``lagged`` stream, reconnect advice
in a close reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from realtime.client import (
    Backoff,
    MessageEvent,
    RealtimeClient,
    RecoveryEvent,
    State,
    StateEvent,
)
from tests.client_sdk.test_python_client import Seen
from tests.server import ServerProcess, unique

Script = Callable[[ServerConnection, int], Awaitable[None]]
EPOCH = "e1"


def joined(room: str, seq: int, missed: tuple[int, ...] = (), recovered: bool = False) -> Any:
    return {
        "room": room,
        "seq": seq,
        "epoch": EPOCH,
        "missed": [message(room, s) for s in missed],
        "recovered": recovered,
    }


def message(room: str, seq: int) -> dict[str, Any]:
    return {"room": room, "seq": seq, "user": "x", "body": seq, "ts": 1}


async def command(ws: ServerConnection, op: str) -> dict[str, Any]:
    received = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert received["op"] == op, received
    return dict(received)


async def answer_connect(ws: ServerConnection) -> dict[str, Any]:
    connect = await command(ws, "connect")
    rooms = [joined("user:u", 0)]
    for entry in connect["rooms"]:
        if entry["room"] != "user:u":
            rooms.append(joined(entry["room"], entry.get("since") or 0, recovered=True))
    ok = {"user": "u", "session": "s", "rooms": rooms, "ping_interval": 25, "expires_at": 2**40}
    await ws.send(json.dumps({"id": connect["id"], "ok": ok}))
    return connect


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[str]:
    """A server running ``script(ws, n)`` for its n-th connection (from 0)."""
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        number, connections = connections, connections + 1
        await script(ws, number)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


async def test_a_lagged_stream_is_rejoined_from_the_last_seq_and_resumes() -> None:
    room = "swap:1"

    async def script(ws: ServerConnection, number: int) -> None:
        await answer_connect(ws)
        join = await command(ws, "join")
        await ws.send(json.dumps({"id": join["id"], "ok": joined(room, 0)}))
        for seq in (1, 2):
            await ws.send(json.dumps({"push": "message", **message(room, seq)}))
        await ws.send(json.dumps({"push": "lagged", "room": room, "seq": 2}))
        rejoin = await command(ws, "join")
        assert (rejoin["since"], rejoin["epoch"]) == (2, EPOCH), rejoin
        ok = joined(room, 4, missed=(3, 4), recovered=True)
        # the live push that follows repeats one the rejoin returned: delivered once
        await ws.send(json.dumps({"id": rejoin["id"], "ok": ok}))
        for seq in (4, 5):
            await ws.send(json.dumps({"push": "message", **message(room, seq)}))
        await ws.wait_closed()

    async with scripted(script) as url:
        client = RealtimeClient(url, token="t", recover_notifications=False)
        seen = Seen(client)
        try:
            await client.connect(timeout=10)
            await client.join(room)
            await seen.until(lambda: seen.seqs(room)[-1:] == [5], timeout=30)
            assert seen.seqs(room) == [1, 2, 3, 4, 5]
            recovery = seen.of(RecoveryEvent)
            assert [(e.kind, e.since, e.lagged) for e in recovery] == [("recovered", 2, True)]
            assert client.reconnects == 0
        finally:
            await client.close()
            await seen.stop()


async def test_reconnect_advice_in_the_close_reason_replaces_the_backoff() -> None:
    async def script(ws: ServerConnection, number: int) -> None:
        await answer_connect(ws)
        if number == 0:
            await ws.close(1012, "server restarting: reconnect; retry_ms=200-300")
        else:
            await ws.wait_closed()

    async with scripted(script) as url:
        # Without the advice, the backoff could wait up to 10 minutes.
        slow = Backoff(initial=600, maximum=600)
        client = RealtimeClient(url, token="t", backoff=slow, recover_notifications=False)
        seen = Seen(client)
        try:
            await client.connect(timeout=10)
            await seen.until(lambda: client.reconnects == 1, timeout=30)
            waits = [e for e in seen.of(StateEvent) if e.state is State.RECONNECTING]
            assert len(waits) == 1 and waits[0].close_code == 1012
            assert waits[0].retry_in is not None and 0.2 <= waits[0].retry_in <= 0.3
            assert waits[0].close_reason == "server restarting: reconnect"
            assert client.state is State.RECOVERED
        finally:
            await client.close()
            await seen.stop()


async def test_an_app_behind_loses_no_message_and_the_client_keeps_answering(
    tmp_path: Any,
) -> None:
    server = ServerProcess(tmp_path)
    server.start()
    try:
        room_name, user = unique("swap:"), unique("q")
        await server.rest("PUT", f"/api/v1/rooms/{room_name}/members/{user}")
        client = RealtimeClient(server.ws_url, token=server.token(user), max_events=4)
        try:
            await client.connect(timeout=30)
            room = await client.join(room_name)
            for i in range(60):
                status, _ = await server.rest(
                    "POST", f"/api/v1/rooms/{room_name}/messages", {"body": i}
                )
                assert status == 201
            # Nobody reads the events, yet the client still answers requests.
            page = await room.history(limit=1)
            assert [m.seq for m in page.messages] == [60]
            assert len(client.queue) <= 4 + 2  # the bound, and the state/recovery events
            seqs: list[int | None] = []
            async with asyncio.timeout(60):
                async for event in client.events():
                    if isinstance(event, MessageEvent):
                        seqs.append(event.message.seq)
                        if event.message.seq == 60:
                            break
            assert seqs == list(range(1, 61))
        finally:
            await client.close()
    finally:
        server.kill()
