"""The session in process: the connect-first rule, dispatch of every command to its
service, refused commands, and the rate limit charged at arrival (issue 8, defect 4)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest

from protocol.commands import OPS
from realtime.config import ServerSettings, Settings
from realtime.node import Node
from realtime.session import Session, TokenBucket
from tests.realtime.support import SECRET, FakeConnection, running_node, settings

ROOM = "swap:chat"
PUSH_SUBSCRIPTION = {
    "endpoint": "https://push.example/s/1",
    "keys": {"p256dh": "B" + "A" * 85 + "E", "auth": "A" * 21 + "Q"},
}


def token(user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256")


class Client:
    """A session on a fake connection, fed frames as ``ws.py`` would feed them."""

    def __init__(self, node: Node, name: str) -> None:
        self.conn = FakeConnection(node, name)
        node.hub.add_connection(self.conn)
        self.session = Session(node, self.conn)

    async def send(self, *commands: dict[str, Any], at: float | None = None) -> None:
        """One frame per command, all arrived at ``at`` (default: now)."""
        arrived = time.monotonic() if at is None else at
        await self.session.handle_frames([(arrived, orjson.dumps(c).decode()) for c in commands])

    def replies(self) -> dict[int, dict[str, Any]]:
        return {m["id"]: m for m in self.conn.messages() if "id" in m}

    async def connect(self, user: str) -> dict[str, Any]:
        await self.send({"id": 1, "op": "connect", "token": token(user)})
        reply = self.replies()[1]
        assert "ok" in reply, reply
        return dict(reply["ok"])


async def _client(node: Node, name: str = "c1") -> Client:
    client = Client(node, name)
    await client.session.open(None)  # no Authorization header: waits for connect
    return client


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with running_node(tmp_path) as running:
        yield running


async def test_a_command_before_connect_is_unauthorized_and_closes_4001(node: Node) -> None:
    client = await _client(node)
    await client.send({"id": 1, "op": "ping"})
    assert client.replies()[1]["error"]["code"] == "unauthorized"
    assert [code for code, _ in client.conn.closes] == [4001]
    await client.session.close()


async def test_an_invalid_connect_is_refused_and_closes_4001(node: Node) -> None:
    client = await _client(node)
    await client.send({"id": 1, "op": "connect", "token": token("alice"), "rooms": 5})
    assert "error" in client.replies()[1]
    assert not client.conn.authenticated
    assert [code for code, _ in client.conn.closes] == [4001]
    await client.session.close()


async def test_connect_authenticates_and_joins_the_user_room(node: Node) -> None:
    client = await _client(node)
    ok = await client.connect("alice")
    assert ok["user"] == "alice" and ok["session"] == "c1"
    assert [room["room"] for room in ok["rooms"]] == ["user:alice"]
    assert client.conn.in_room("user:alice") and client.conn.closes == []
    await client.session.close()
    assert node.hub.rooms == {} and node.hub.users == {}


async def test_every_command_reaches_its_service(node: Node) -> None:
    await node.membership.add_member(ROOM, "alice")
    await node.notices.notify(
        to=["alice"], followers_of=None, type="hello", data_json="{}", actor=None
    )
    client = await _client(node)
    await client.connect("alice")
    commands: list[dict[str, Any]] = [
        {"op": "join", "room": ROOM},
        {"op": "send", "room": ROOM, "body": {"n": 1}, "client_id": "k1"},
        {"op": "history", "room": ROOM},
        {"op": "typing", "room": ROOM, "active": True},
        {"op": "read", "room": ROOM, "seq": 99},
        {"op": "presence", "room": ROOM},
        {"op": "notifications"},
        {"op": "notifications.read", "up_to": 10**6},
        {"op": "notifications.seen", "up_to": 10**6},
        {"op": "notifications.archive", "ids": [10**6]},
        {"op": "notifications.read_all"},
        {"op": "preferences.set", "preferences": {"mute": True}},
        {"op": "preferences"},
        {"op": "refresh", "token": token("alice")},
        {"op": "ping"},
        {"op": "leave", "room": ROOM},
        {"op": "push.subscribe", "subscription": PUSH_SUBSCRIPTION},
        {"op": "push.unsubscribe", "endpoint": PUSH_SUBSCRIPTION["endpoint"]},
    ]
    await client.send(*({"id": i, **c} for i, c in enumerate(commands, start=2)))
    replies = client.replies()
    last = len(commands) + 2
    ok = {commands[i - 2]["op"]: replies[i].get("ok", replies[i]) for i in range(2, last)}
    assert ok["join"]["room"] == ROOM and ok["join"]["presence"] == ["alice"]
    assert ok["send"]["seq"] == 1
    assert [m["body"] for m in ok["history"]["messages"]] == [{"n": 1}]
    assert ok["typing"] == {} and ok["ping"] == {} and ok["leave"] == {}
    assert ok["read"] == {"room": ROOM, "seq": 1}  # clamped to the latest
    assert ok["presence"] == {"users": ["alice"]}
    assert [n["type"] for n in ok["notifications"]["items"]] == ["hello"]
    assert ok["notifications.read"] == {"unread_count": 0}
    assert ok["notifications.seen"] == {"unseen_count": 0}
    assert ok["notifications.archive"] == ok["notifications.read_all"] == {"unread_count": 0}
    assert ok["preferences.set"]["mute"] is True
    assert ok["preferences"] == ok["preferences.set"]
    assert ok["refresh"]["expires_at"] > time.time()
    assert ok["push.subscribe"] == {} and ok["push.unsubscribe"] == {}
    # Every op the session knows was carried out above (a new one needs a line here).
    assert set(ok) | {"connect"} == set(OPS)
    assert not client.conn.in_room(ROOM) and client.conn.closes == []
    await client.session.close()


async def test_refused_commands_are_answered_and_the_connection_stays(node: Node) -> None:
    client = await _client(node)
    await client.connect("alice")
    await client.send(
        {"id": 2, "op": "send", "room": ROOM},  # no body
        {"id": 3, "op": "no-such-op"},
        {"op": "send", "room": ROOM},  # no id: no answer
        {"id": 4, "op": "join", "room": ROOM},  # not a member
        {"id": 5, "op": "ping"},
    )
    replies = client.replies()
    assert [replies[i].get("error", {}).get("code") for i in (2, 3, 4, 5)] == [
        "bad_request",
        "bad_request",
        "forbidden",
        None,
    ]
    assert sorted(replies) == [1, 2, 3, 4, 5] and client.conn.closes == []
    await client.session.close()


def test_the_bucket_charges_each_command_at_its_arrival() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    start = time.monotonic() + 1
    # Arrived under the rate, however late they are carried out: all taken.
    assert all(bucket.take(start + k * 0.15) for k in range(100))
    # Arrived together, after a pause: the burst, then refusals.
    later = start + 100
    assert [bucket.take(later) for _ in range(5)] == [True, True, True, False, False]
    assert bucket.strikes == 2


async def test_a_backlog_that_arrived_under_the_rate_is_not_rate_limited(
    tmp_path: Path,
) -> None:
    """Commands that waited (say, behind a frozen store) are charged when they came."""
    config: Settings = dataclasses.replace(
        settings(), server=ServerSettings(rate_limit=10.0, rate_burst=3)
    )
    async with running_node(tmp_path, config) as node:
        client = await _client(node)
        await client.connect("alice")
        start = time.monotonic() + 1
        backlog = [(start + k * 0.15, {"id": 10 + k, "op": "ping"}) for k in range(30)]
        await client.session.handle_frames([(at, orjson.dumps(c).decode()) for at, c in backlog])
        replies = client.replies()
        assert all("ok" in replies[10 + k] for k in range(30)), replies
        # Truly too many at once are still refused.
        await client.send(*({"id": 100 + k, "op": "ping"} for k in range(5)), at=start + 60)
        codes = [client.replies()[100 + k].get("error", {}).get("code") for k in range(5)]
        assert codes == [None, None, None, "rate_limited", "rate_limited"]
        await client.session.close()
