"""Bounds on what one connection may ask of a room (issue 8, defects 8 and 10).

- ``read`` with a seq past the room's latest is clamped to the latest: marks never
  move back, so a mark of 2^63-1 in a room whose latest is 7 could never be undone.
- ``server.max_rooms_per_connection`` caps the rooms one connection is in (its user
  room and server-side joins count); 20,000 joined on one connection before.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.client import Client, CommandFailed
from tests.server import ServerProcess, unique

API = "/api/v1"
MAX_ROOMS = 5
OPEN_ROOMS = """
[namespaces.open]
join = "anyone"
send = "anyone"
"""


async def test_a_read_mark_past_the_latest_seq_is_the_latest_and_later_marks_still_move(
    server: ServerProcess,
) -> None:
    room, reader = unique("swap:"), unique("reader")
    assert (await server.rest("PUT", f"{API}/rooms/{room}/members/{reader}"))[0] == 204
    client = await Client.connected(server.ws_url, server.token(reader), rooms=[room])
    for k in range(7):
        await client.call("send", room=room, body=k)
    assert (await client.call("read", room=room, seq=2**63 - 1)) == {"room": room, "seq": 7}
    read = await client.push("read")
    assert (read["user"], read["seq"]) == (reader, 7)
    # A lower mark does not move it back (PROTOCOL.md: the stored mark never moves back)...
    assert (await client.call("read", room=room, seq=3))["seq"] == 7
    # ...and once there is more to read, the mark moves on as it always did.
    for k in range(3):
        await client.call("send", room=room, body=k)
    assert (await client.call("read", room=room, seq=9))["seq"] == 9
    assert (await client.call("read", room=room, seq=10**6))["seq"] == 10
    await client.close()


async def test_a_read_mark_in_an_empty_room_stays_at_zero(server: ServerProcess) -> None:
    room, reader = unique("swap:"), unique("reader")
    assert (await server.rest("PUT", f"{API}/rooms/{room}/members/{reader}"))[0] == 204
    client = await Client.connected(server.ws_url, server.token(reader), rooms=[room])
    assert (await client.call("read", room=room, seq=5))["seq"] == 0
    await client.call("send", room=room, body="first")
    assert (await client.call("read", room=room, seq=1))["seq"] == 1
    await client.close()


@pytest.fixture
def capped(make_server: Any) -> ServerProcess:
    server: ServerProcess = make_server(
        env={"REALTIME_SERVER_MAX_ROOMS_PER_CONNECTION": str(MAX_ROOMS)},
        config_text=OPEN_ROOMS,
    )
    return server


async def test_a_join_past_max_rooms_per_connection_is_forbidden_and_says_why(
    capped: ServerProcess,
) -> None:
    user = unique("many")
    client = await Client.connected(capped.ws_url, capped.token(user))
    rooms = [unique("open:") for _ in range(MAX_ROOMS)]
    for room in rooms[:-1]:  # the user room is the first of the five
        await client.call("join", room=room)
    with pytest.raises(CommandFailed) as refused:
        await client.call("join", room=rooms[-1])
    assert refused.value.code == "forbidden"
    assert f"limit {MAX_ROOMS}" in refused.value.message
    # Joining a room it is already in is no new room: not refused.
    assert (await client.call("join", room=rooms[0]))["room"] == rooms[0]
    # Leaving one makes room for another.
    await client.call("leave", room=rooms[0])
    assert (await client.call("join", room=rooms[-1]))["room"] == rooms[-1]
    await client.close()


async def test_connect_with_more_rooms_than_the_cap_joins_up_to_it(capped: ServerProcess) -> None:
    user = unique("many")
    rooms = [unique("open:") for _ in range(MAX_ROOMS + 2)]
    client = await Client.connected(
        capped.ws_url, capped.token(user), rooms=[{"room": room} for room in rooms]
    )
    results = client.session["rooms"]
    assert [r["room"] for r in results] == [f"user:{user}", *rooms]
    failed = [r for r in results if "error" in r]
    assert len(results) - len(failed) == MAX_ROOMS
    assert [r["room"] for r in failed] == rooms[MAX_ROOMS - 1 :]
    assert {r["error"]["code"] for r in failed} == {"forbidden"}
    await client.close()


async def test_a_server_side_join_at_the_cap_does_not_happen(capped: ServerProcess) -> None:
    user = unique("many")
    client = await Client.connected(capped.ws_url, capped.token(user))
    for _ in range(MAX_ROOMS - 1):
        await client.call("join", room=unique("open:"))
    granted = unique("swap:")
    assert (await capped.rest("PUT", f"{API}/rooms/{granted}/members/{user}"))[0] == 204
    await client.no_push("joined", wait=1.0)
    await client.call("leave", room=f"user:{user}")
    await client.call("join", room=granted)  # the membership holds: room to join now
    await client.close()
