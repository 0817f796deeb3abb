"""During a broker outage a control event is either certain or refused, never dropped.

``204`` means it happened, ``unavailable`` means nothing was done: a disconnect or
a message of a room without history (stored nowhere) is refused while Redis is
down; a membership removal is stored, and every instance applies it once the
broker is back, even though its event was lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client import Client, CommandFailed, close_all
from tests.server import ServerProcess, unique
from tests.services import PostgresServer, RedisServer

LIVE_ROOMS = """
[namespaces.live]
join = "anyone"
send = "anyone"
history = false
"""


@pytest.fixture
def pair(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[tuple[Any, ...]]:
    """Two instances on one PostgreSQL and a Redis of their own (tests stop it)."""
    with RedisServer() as redis:
        dsn = postgres_server.create_database(unique("db_"))
        instances = [
            ServerProcess(
                tmp_path / f"i{index}",
                dsn=dsn,
                broker_url=redis.url,
                name=f"i{index}",
                config_text=LIVE_ROOMS,
                env={
                    "REALTIME_BROKER_TIMEOUT": "1",
                    "REALTIME_BROKER_CANARY_INTERVAL": "0.5",
                    "REALTIME_BROKER_CANARY_TIMEOUT": "2",
                    "REALTIME_PRESENCE_TTL": "2",
                },
            )
            for index in range(2)
        ]
        for instance in instances:
            instance.start()
        try:
            yield redis, instances[0], instances[1]
        finally:
            for instance in instances:
                instance.kill()


async def _ready(instance: ServerProcess, deadline: float = 60) -> None:
    """Wait until the instance reports its broker healthy again."""
    async with asyncio.timeout(deadline):
        while True:
            status, _ = await instance.rest("GET", "/readyz")
            if status == 200:
                return
            await asyncio.sleep(0.2)


async def test_disconnect_during_an_outage_is_refused_and_closes_nobody(
    pair: tuple[Any, ...],
) -> None:
    redis, one, two = pair
    user = unique("u")
    clients = [await Client.connected(i.ws_url, i.token(user)) for i in (one, two)]
    redis.stop()
    try:
        status, body = await one.rest("POST", f"/api/v1/users/{user}/disconnect", {"reason": "x"})
        assert status == 503 and body["error"]["code"] == "unavailable", body
        for client in clients:  # nothing was done: both are still served
            assert await client.call("ping") == {}
    finally:
        redis.start()
    await _ready(one)
    await _ready(two)
    status, _ = await one.rest("POST", f"/api/v1/users/{user}/disconnect", {"reason": "bye"})
    assert status == 204
    for client in clients:
        assert await client.closed(timeout=30) == (4004, "bye")


async def test_a_message_of_a_room_without_history_is_refused_during_an_outage(
    pair: tuple[Any, ...],
) -> None:
    redis, one, two = pair
    room = unique("live:")
    sender = await Client.connected(one.ws_url, one.token(unique("s")))
    receiver = await Client.connected(two.ws_url, two.token(unique("r")))
    try:
        await sender.call("join", room=room)
        await receiver.call("join", room=room)
        redis.stop()
        try:
            with pytest.raises(CommandFailed) as refused:
                await sender.call("send", room=room, body="lost?")
            assert refused.value.code == "unavailable"
        finally:
            redis.start()
        await _ready(one)
        await _ready(two)
        # The refused message went nowhere, not even to this instance's members.
        await sender.call("send", room=room, body="after")
        push = await receiver.push("message", timeout=30)
        assert push["body"] == "after"
    finally:
        await close_all(sender, receiver)


async def test_a_removal_whose_event_was_lost_is_applied_after_the_outage(
    pair: tuple[Any, ...],
) -> None:
    redis, one, two = pair
    room = unique("swap:")
    user, stays = unique("gone"), unique("stays")
    for member in (user, stays):
        status, _ = await one.rest("PUT", f"/api/v1/rooms/{room}/members/{member}")
        assert status == 204
    removed = await Client.connected(two.ws_url, two.token(user))
    kept = await Client.connected(two.ws_url, two.token(stays))
    try:
        for client in (removed, kept):
            await client.call("join", room=room)
        redis.stop()
        try:
            # Stored, so it happened; its event to the other instance is lost.
            status, _ = await one.rest("DELETE", f"/api/v1/rooms/{room}/members/{user}")
            assert status == 204
            await asyncio.sleep(1)
        finally:
            redis.start()
        left = await removed.push("left", timeout=60)
        assert left == {"push": "left", "room": room, "reason": "member_removed"}
        with pytest.raises(CommandFailed) as refused:
            await removed.call("send", room=room, body="still here?")
        assert refused.value.code == "forbidden"
        await kept.call("send", room=room, body="still a member")
        await kept.no_push("left", wait=1)
    finally:
        await close_all(removed, kept)
