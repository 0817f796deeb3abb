"""A REST membership grant racing the connection's close (issue 8, defect 2).

``PUT /api/v1/rooms/{room}/members/{user}`` joins the user's live connections on the
server side (a ``joined`` push). When the connection closes while that join waits on
the store, the close has already left every room the connection was in; the join
must not land afterwards, or the room keeps a ghost (in its presence, and in
``realtime_rooms``) that nothing will ever remove. Seen before the fix: 97 of 300.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.client import Client
from tests.e2e.support import eventually, metric
from tests.server import Http, ServerProcess, unique

API = "/api/v1"
ROOMS = 10
USERS = 200


async def rooms_gauge(http: Http) -> float:
    status, text = await http.call("GET", "/metrics")
    assert status == 200
    return metric(text, "realtime_rooms")


async def _grant_and_go(http: Http, client: Client, room: str, user: str, way: int) -> None:
    """Grant ``user`` the room and close its connection at once, one of three ways."""
    grant = asyncio.create_task(http.call("PUT", f"{API}/rooms/{room}/members/{user}"))
    if way == 0:  # the TCP connection vanishes while the grant is on its way
        await asyncio.sleep(0)
        client.ws.transport.abort()
        assert (await grant)[0] == 204
    else:  # right after the grant was answered: without a close handshake, or with one
        assert (await grant)[0] == 204
        if way == 1:
            client.ws.transport.abort()
    await client.close()


async def grant_while_closing(
    servers: list[ServerProcess], https: list[Http], users: int, rooms: list[str]
) -> None:
    """``users`` users, each on one connection (spread over ``servers``), each granted
    one of ``rooms`` as the connection closes (through the next server, when several:
    the grant reaches the connection's instance through the broker)."""
    names = [unique("ghost") for _ in range(users)]
    clients = [
        await Client.connected(servers[i % len(servers)].ws_url, servers[0].token(name))
        for i, name in enumerate(names)
    ]
    wave = 25
    for start in range(0, users, wave):
        await asyncio.gather(
            *(
                _grant_and_go(
                    https[(i + 1) % len(https)], clients[i], rooms[i % len(rooms)], names[i], i % 3
                )
                for i in range(start, min(start + wave, users))
            )
        )


async def ghosts(http: Http, rooms: list[str]) -> int:
    """Users still present in ``rooms`` (every connection of theirs is closed)."""
    count = 0
    for room in rooms:
        status, body = await http.call("GET", f"{API}/rooms/{room}/presence")
        assert status == 200, body
        count += len(body["users"])
    return count


async def assert_no_ghosts(
    https: list[Http], rooms: list[str], baselines: list[float], timeout: float = 30
) -> None:
    """Presence of every room empties, and every instance's room count goes back."""

    async def gone() -> bool:
        counts = [await rooms_gauge(http) for http in https]
        return counts == baselines and await ghosts(https[0], rooms) == 0

    try:
        await eventually(gone, timeout=timeout, interval=0.2)
    except AssertionError:
        counts = [await rooms_gauge(http) for http in https]
        left = await ghosts(https[0], rooms)
        raise AssertionError(
            f"{left} users still present; realtime_rooms {counts}, was {baselines}"
        ) from None


async def test_a_grant_racing_the_close_leaves_no_ghost_presence_or_room(
    make_server: Any,
) -> None:
    server: ServerProcess = make_server()
    rooms = [unique("swap:") for _ in range(ROOMS)]
    async with Http(server) as http:
        baseline = await rooms_gauge(http)
        await grant_while_closing([server], [http], USERS, rooms)
        await assert_no_ghosts([http], rooms, [baseline])
        # The server still works: a fresh member joins one of the rooms and is alone.
        user = unique("alive")
        await http.call("PUT", f"{API}/rooms/{rooms[0]}/members/{user}")
        client = await Client.connected(server.ws_url, server.token(user), rooms=[rooms[0]])
        assert client.session["rooms"][1]["presence"] == [user]
        await client.close()
