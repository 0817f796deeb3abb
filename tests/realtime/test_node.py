"""The node's services in process: a real SQLite store, the in-memory broker and
presence, fake transports. What a socket test cannot do on cue: a store that never
answers, a typing timeout that passes."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from protocol import CommandError, ErrorCode
from protocol.commands import RoomRequest
from realtime.config import StorageSettings
from realtime.node import Node
from storage import NewMessage
from tests.realtime.support import FakeConnection, Gated, connected, running_node, settings

ROOM = "swap:chat"


async def _members(node: Node, *users: str) -> None:
    """Grant the room over the membership service; the users' live connections join."""
    for user in users:
        await node.membership.add_member(ROOM, user)
    async with asyncio.timeout(30):
        while len(node.tasks):  # the server-side joins
            await asyncio.sleep(0.01)


async def test_send_stores_fans_out_and_history_returns_it(tmp_path: Path) -> None:
    async with running_node(tmp_path) as node:
        alice, bob = await connected(node, "alice"), await connected(node, "bob")
        await _members(node, "alice", "bob")
        assert [p["room"] for p in bob.pushes("joined")] == [ROOM]
        sent = await node.messages.send(alice, ROOM, '{"t":"hi"}', "c1")
        assert (sent.seq, sent.duplicate) == (1, False)
        again = await node.messages.send(alice, ROOM, '{"t":"hi"}', "c1")
        assert (again.seq, again.duplicate) == (1, True)
        system = await node.messages.publish(ROOM, None, '"notice"', None)
        assert system.seq == 2
        await asyncio.sleep(0)  # the hub writes this iteration's pushes
        pushes = bob.pushes("message")
        assert [(p["seq"], p["user"], p["body"]) for p in pushes] == [
            (1, "alice", {"t": "hi"}),
            (2, None, "notice"),
        ]
        page = await node.messages.history(None, ROOM, before=None, after=None, limit=50)
        assert [(m.seq, m.user) for m in page.messages] == [(1, "alice"), (2, None)]
        # Outsiders may neither send nor read.
        carol = await connected(node, "carol")
        with pytest.raises(CommandError) as refused:
            await node.messages.send(carol, ROOM, '"x"', None)
        assert refused.value.code is ErrorCode.FORBIDDEN
        with pytest.raises(CommandError):
            await node.messages.history("carol", ROOM, before=None, after=None, limit=50)


async def test_a_publish_whose_append_never_returns_is_unavailable_within_the_timeout(
    tmp_path: Path,
) -> None:
    """storage.timeout bounds the whole store call (issue 8, defect 5)."""
    gates: list[Gated] = []

    def wrap(store: object) -> Gated:
        gates.append(Gated(store, "append"))
        gates[0].shut()  # never opened: the append hangs
        return gates[0]

    config = dataclasses.replace(settings(), storage=StorageSettings(timeout=0.5))
    async with running_node(tmp_path, config, wrap_store=wrap) as node:
        with pytest.raises(CommandError) as failed:
            async with asyncio.timeout(30):  # the generous outer bound: no hang
                await node.messages.publish(ROOM, None, '"x"', None)
        assert failed.value.code is ErrorCode.UNAVAILABLE
        assert "0.5" in failed.value.message
        assert gates[0].entered.is_set()


async def test_ready_names_the_reason_when_the_store_does_not_answer(tmp_path: Path) -> None:
    gates: list[Gated] = []

    def wrap(store: object) -> Gated:
        gates.append(Gated(store, "ping"))
        return gates[0]

    config = dataclasses.replace(settings(), storage=StorageSettings(timeout=0.2))
    async with running_node(tmp_path, config, wrap_store=wrap) as node:
        assert await node.ready() == {"storage": "ok", "broker": "ok"}
        gates[0].shut()
        status = await node.ready()
        assert status["storage"] == "unavailable: timed out after 0.2s"
        gates[0].open()


def _typing(*connections: FakeConnection) -> list[list[tuple[str, bool]]]:
    return [[(p["user"], p["active"]) for p in c.pushes("typing")] for c in connections]


async def test_typing_start_and_stop_publish_once_each_and_skip_the_typist(
    tmp_path: Path,
) -> None:
    async with running_node(tmp_path) as node:
        alice, bob = await connected(node, "alice"), await connected(node, "bob")
        await _members(node, "alice", "bob")
        await node.typing.set(alice, ROOM, True)
        await node.typing.set(alice, ROOM, False)
        await node.typing.left(ROOM, "alice")  # not typing any more: nothing to say
        await asyncio.sleep(0)
        assert _typing(alice, bob) == [[], [("alice", True), ("alice", False)]]
        with pytest.raises(CommandError):
            await node.typing.set(await connected(node, "carol"), ROOM, True)


async def test_typing_turns_itself_off_once_and_a_leave_stops_it(tmp_path: Path) -> None:
    async with running_node(tmp_path, settings(typing_timeout=0.2)) as node:
        alice, bob = await connected(node, "alice"), await connected(node, "bob")
        await _members(node, "alice", "bob")
        await node.typing.set(alice, ROOM, True)
        async with asyncio.timeout(30):
            while len(bob.pushes("typing")) < 2:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # more expiry rounds: no second "off"
        assert _typing(bob) == [[("alice", True), ("alice", False)]]
        # Typing, then leaving the room: one "off", from the leave.
        await node.typing.set(bob, ROOM, True)
        await node.joins.leave(bob, ROOM)
        await asyncio.sleep(0.5)
        assert _typing(alice) == [[("bob", True), ("bob", False)]]


async def test_a_closed_connection_leaves_its_rooms_and_presence(tmp_path: Path) -> None:
    async with running_node(tmp_path) as node:
        alice, bob = await connected(node, "alice"), await connected(node, "bob")
        await _members(node, "alice", "bob")
        assert await node.presence.users(ROOM) == ["alice", "bob"]
        alice.closing = True
        await node.clients.disconnected(alice)
        assert await node.presence.users(ROOM) == ["bob"]
        assert [(p["user"], p["event"]) for p in bob.pushes("presence")][-1] == ("alice", "leave")
        assert set(node.hub.rooms) == {ROOM, "user:bob"}
        with pytest.raises(CommandError):  # a rejoin after the close is refused
            await node.joins.join(alice, RoomRequest(ROOM))


class _CountedReads:
    """A store whose ``messages_after`` calls are counted per room."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.reads: list[str] = []

    async def messages_after(self, room: str, after: int, limit: int) -> Any:
        self.reads.append(room)
        return await self._inner.messages_after(room, after, limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_resync_reads_only_the_rooms_the_store_says_are_behind(tmp_path: Path) -> None:
    counted: list[_CountedReads] = []

    def wrap(store: Any) -> _CountedReads:
        counted.append(_CountedReads(store))
        return counted[0]

    async with running_node(tmp_path, wrap_store=wrap) as node:
        users = [f"u{i}" for i in range(5)]
        conns = [await connected(node, user) for user in users]
        # Stored while the broker was away: the room's push never came.
        await node.store.append(NewMessage("user:u3", None, '"missed"'))
        node.on_resync()
        async with asyncio.timeout(30):
            while len(node.tasks):
                await asyncio.sleep(0.01)
            while not conns[3].pushes("message"):
                await asyncio.sleep(0.01)
        assert [p["body"] for p in conns[3].pushes("message")] == ["missed"]
        # One latest-seq query for the five rooms, one read for the one behind.
        assert counted[0].reads == ["user:u3"]
