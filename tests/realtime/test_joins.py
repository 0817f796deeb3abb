"""A join that races its connection's close leaves nothing behind (issue 8, defect 2).

The close runs ``Clients.disconnected``, which leaves the rooms the connection is in;
a join still waiting on the store or the presence is not in them yet. Gating that
wait lets the close land exactly there, every time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from protocol import CommandError, ErrorCode
from protocol.commands import RoomRequest
from realtime.connection import Connection
from realtime.events import MembershipChange
from realtime.node import Node
from tests.realtime.support import Gated, connected, running_node

ROOM = "swap:race"


async def _close(node: Node, conn: Connection) -> None:
    """What ``ws.py`` does when the TCP connection is gone."""
    conn.closing = True
    await node.clients.disconnected(conn)


async def test_a_join_waiting_for_the_store_when_its_connection_closes_is_undone(
    tmp_path: Path,
) -> None:
    gates: list[Gated] = []

    def wrap(store: object) -> Gated:
        gates.append(Gated(store, "recover"))
        return gates[0]

    async with running_node(tmp_path, wrap_store=wrap) as node:
        conn = await connected(node, "alice")
        store = gates[0]
        store.shut()
        join = asyncio.create_task(node.joins.join(conn, RoomRequest(ROOM), check=False))
        async with asyncio.timeout(30):
            await store.entered.wait()
        await _close(node, conn)
        store.open()
        with pytest.raises(CommandError) as failed:
            async with asyncio.timeout(30):
                await join
        assert failed.value.code is ErrorCode.UNAVAILABLE
        assert not conn.in_room(ROOM)
        assert ROOM not in node.hub.rooms
        assert node.hub.rooms == {}  # the user room went with the close
        assert await node.presence.users(ROOM) == []


async def test_a_join_adding_presence_when_its_connection_closes_takes_it_back(
    tmp_path: Path,
) -> None:
    gates: list[Gated] = []

    def wrap(presence: object) -> Gated:
        gates.append(Gated(presence, "add"))
        return gates[0]

    async with running_node(tmp_path, wrap_presence=wrap) as node:
        conn = await connected(node, "alice")
        watcher = await connected(node, "bob")
        await node.joins.join(watcher, RoomRequest(ROOM), check=False)
        presence = gates[0]
        presence.shut()
        join = asyncio.create_task(node.joins.join(conn, RoomRequest(ROOM), check=False))
        async with asyncio.timeout(30):
            await presence.entered.wait()
        await _close(node, conn)
        presence.open()
        with pytest.raises(CommandError):
            async with asyncio.timeout(30):
                await join
        assert await node.presence.users(ROOM) == ["bob"]
        room = node.hub.rooms[ROOM]
        assert watcher in room and len(room) == 1
        # Its join was never announced, so neither is a leave.
        assert [p["user"] for p in watcher.pushes("presence")] == ["bob"]


async def test_a_server_side_join_racing_the_close_sends_nothing_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    """A REST membership grant joins live connections; one closing meanwhile stays out."""
    gates: list[Gated] = []

    def wrap(store: object) -> Gated:
        gates.append(Gated(store, "recover"))
        return gates[0]

    async with running_node(tmp_path, wrap_store=wrap) as node:
        conn = await connected(node, "alice")
        store = gates[0]
        store.shut()
        node.on_event("user:alice", MembershipChange("alice", ROOM, True, "member_added"))
        async with asyncio.timeout(30):
            await store.entered.wait()
        await _close(node, conn)
        store.open()
        async with asyncio.timeout(30):
            while len(node.tasks):  # the server-side join ends
                await asyncio.sleep(0.01)
        assert conn.pushes("joined") == []
        assert node.hub.rooms == {}
        assert await node.presence.users(ROOM) == []
