"""The Python client (``realtime.client``) against real server processes.

What is checked is what the client promises an app: each room's messages come
once each, in seq order, with no hole, across kill -9, restarts and a lost
instance behind nginx; every send is acknowledged and stored once (REST history
has each client_id once); a gap larger than the recovery limit is filled from
history, with recovery events saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from realtime.client import (
    Ack,
    Backoff,
    ClientClosed,
    Event,
    MessageEvent,
    NotificationEvent,
    PresenceEvent,
    ReadEvent,
    RealtimeClient,
    RecoveryEvent,
    State,
    StateEvent,
    TypingEvent,
)
from tests.cluster.conftest import make_cluster
from tests.server import ROOT, SERVICE_KEY, ServerProcess, unique
from tests.services import MakeNginx, PostgresServer, RedisServer

FAST = Backoff(initial=0.05, maximum=0.5)
FAST_SERVER = {
    "REALTIME_SERVER_RATE_LIMIT": "10000",
    "REALTIME_SERVER_RATE_BURST": "10000",
    "REALTIME_SERVER_CLOSE_TIMEOUT": "0.5",
}


class Seen:
    """Consumes a client's events in the background and keeps them."""

    def __init__(self, client: RealtimeClient) -> None:
        self.client = client
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        async for event in self.client.events():
            self.events.append(event)
            self._changed.set()

    def messages(self, room: str) -> list[MessageEvent]:
        return [e for e in self.events if isinstance(e, MessageEvent) and e.room == room]

    def seqs(self, room: str) -> list[int | None]:
        return [e.message.seq for e in self.messages(room)]

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def until(self, condition: Callable[[], bool], timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                # Conditions may look at more than events: look again now and then.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.1)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@contextlib.asynccontextmanager
async def connected(url: str, token: str, **options: Any) -> AsyncIterator[tuple[Any, Seen]]:
    options.setdefault("backoff", FAST)
    client = RealtimeClient(url, token=token, **options)
    seen = Seen(client)
    try:
        await client.connect(timeout=30)
        yield client, seen
    finally:
        await client.close()
        await seen.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("pyclient"), env=FAST_SERVER)
    process.start()
    yield process
    process.kill()


async def members(server: ServerProcess, room: str, *users: str) -> None:
    for user in users:
        status, _ = await server.rest("PUT", f"/api/v1/rooms/{room}/members/{user}")
        assert status == 204


async def stored(server: ServerProcess, room: str) -> list[dict[str, Any]]:
    """Every stored message of ``room``, over REST, in seq order."""
    messages: list[dict[str, Any]] = []
    after = 0
    while True:
        status, page = await server.rest(
            "GET", f"/api/v1/rooms/{room}/messages?after={after}&limit=200"
        )
        assert status == 200, page
        messages += page["messages"]
        if not page["more"]:
            return messages
        after = messages[-1]["seq"]


# Basics ----------------------------------------------------------------------------------


async def test_two_clients_chat_type_read_and_page_history(server: ServerProcess) -> None:
    room_name = unique("swap:")
    alice, bob = unique("a"), unique("b")
    await members(server, room_name, alice, bob)
    async with (
        connected(server.ws_url, server.token(alice)) as (a, seen_a),
        connected(server.ws_url, server.token(bob), encoding="msgpack") as (b, seen_b),
    ):
        assert a.state is State.ONLINE and a.user == alice
        room_a = await a.join(room_name)
        room_b = await b.join(room_name)
        assert alice in (room_b.presence or [])
        await seen_a.until(lambda: any(e.user == bob for e in seen_a.of(PresenceEvent)))

        ack = await room_a.send({"text": "hi bob"})
        assert isinstance(ack, Ack) and ack.seq == 1 and not ack.duplicate
        await seen_b.until(lambda: seen_b.seqs(room_name) == [1])
        message = seen_b.messages(room_name)[0].message
        assert (message.user, message.body, message.client_id) == (
            alice,
            {"text": "hi bob"},
            ack.client_id,
        )
        reply = await room_b.send("hi alice", client_id="bob-1")
        again = await room_b.send("hi alice", client_id="bob-1")
        assert again.seq == reply.seq == 2 and again.duplicate
        await seen_a.until(lambda: seen_a.seqs(room_name) == [1, 2])  # own message too

        await room_a.typing(True)
        await room_a.typing(True)  # throttled: not sent again
        await seen_b.until(lambda: bool(seen_b.of(TypingEvent)))
        assert seen_b.of(TypingEvent)[0] == TypingEvent(room_name, alice, True)
        await room_a.typing(False)
        await seen_b.until(lambda: len(seen_b.of(TypingEvent)) == 2)
        assert not seen_a.of(TypingEvent)  # never sent back to the typist

        assert await room_b.read(2) == 2
        assert await room_b.read(1) == 2  # never moves back
        await seen_a.until(lambda: ReadEvent(room_name, bob, 2) in seen_a.of(ReadEvent))

        for i in range(3, 8):
            await room_a.send(i)
        page = await room_b.history(limit=3)
        assert [m.seq for m in page.messages] == [5, 6, 7] and page.more
        older = await room_b.history(before=5, limit=10)
        assert [m.seq for m in older.messages] == [1, 2, 3, 4] and not older.more
        assert page.epoch == room_b.epoch
        assert sorted(await room_a.users()) == sorted([alice, bob])
        await seen_b.until(lambda: seen_b.seqs(room_name) == list(range(1, 8)))


async def test_notifications_live_list_unread_and_mark_read(server: ServerProcess) -> None:
    user = unique("n")
    async with connected(server.ws_url, server.token(user)) as (client, seen):
        for post in (1, 2, 3):
            status, _ = await server.rest(
                "POST",
                "/api/v1/notifications",
                {"to": [user], "type": "like", "data": {"post": post}, "actor": "zed"},
            )
            assert status == 202
        await seen.until(lambda: len(seen.of(NotificationEvent)) == 3)
        items = [e.notification for e in seen.of(NotificationEvent)]
        assert [n.data for n in items] == [{"post": 1}, {"post": 2}, {"post": 3}]
        assert all(n.type == "like" and n.actor == "zed" and not n.read for n in items)
        page = await client.notifications()
        assert [n.id for n in page.items] == [n.id for n in items]
        assert page.unread_count == 3 == await client.unread_count()
        assert await client.mark_read(ids=[items[0].id]) == 2
        assert await client.mark_read(up_to=items[-1].id) == 0
        assert (await client.notifications(unread=True)).items == []


async def test_a_bad_static_token_closes_the_client_for_good(server: ServerProcess) -> None:
    client = RealtimeClient(server.ws_url, token="not-a-token", backoff=FAST)
    try:
        with pytest.raises(ClientClosed):
            await client.connect(timeout=30)
        assert client.state is State.CLOSED
    finally:
        await client.close()


async def test_get_token_is_asked_for_each_connection_and_refreshes(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path, env=FAST_SERVER)
    server.start()
    try:
        user = unique("t")
        asked: list[str] = []

        async def get_token() -> str:
            token = server.token(user, ttl=3)  # refreshed long before it expires
            asked.append(token)
            return token

        client = RealtimeClient(server.ws_url, get_token=get_token, backoff=FAST)
        seen = Seen(client)
        try:
            await client.connect(timeout=30)
            await seen.until(lambda: len(asked) >= 3, timeout=60)  # 1 connect, refreshes
            assert client.state is State.ONLINE and client.reconnects == 0
        finally:
            await client.close()
            await seen.stop()
    finally:
        server.kill()


async def test_the_example_in_the_docs_works_as_written(server: ServerProcess) -> None:
    text = (ROOT / "docs" / "python-client.md").read_text()
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    user = unique("d")
    await members(server, "swap:1", user)
    environment = {**os.environ, "REALTIME_URL": server.ws_url, "TOKEN": server.token(user)}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", example],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("stored as seq ") and lines[1] == f"{user} said {{'text': 'hi'}}"


# Reconnects ------------------------------------------------------------------------------


async def publish(url: str, room: str, count: int, prefix: str) -> list[int]:
    """POST messages as the backend would, retrying with the same client_id."""
    seqs: list[int] = []
    headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for i in range(count):
            async with asyncio.timeout(60):
                while True:
                    try:
                        async with http.post(
                            f"{url}/api/v1/rooms/{room}/messages",
                            json={"body": {"rest": i}, "client_id": f"{prefix}{i}"},
                            headers=headers,
                        ) as response:
                            if response.status == 201:
                                seqs.append((await response.json())["seq"])
                                break
                            assert response.status in (502, 503, 504), await response.text()
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.01)
    return seqs


async def send_many(room: Any, count: int) -> list[Ack]:
    """Sends in flight together, as an app sending fast would have them."""
    acks: list[Ack] = []
    for start in range(0, count, 5):
        batch = [room.send({"own": i}) for i in range(start, min(start + 5, count))]
        acks += await asyncio.gather(*batch)
    return acks


def last_is(seen: Seen, room: str, seq: int) -> bool:
    return seen.seqs(room)[-1:] == [seq]


def check_stream(seen: Seen, room: str, acks: list[Ack], published: list[int]) -> None:
    seqs = seen.seqs(room)
    assert seqs == list(range(1, len(seqs) + 1)), "a seq twice, out of order or a hole"
    assert {a.seq for a in acks} | set(published) <= set(seqs)


async def check_stored_once(server: ServerProcess, room: str, acks: list[Ack]) -> None:
    messages = await stored(server, room)
    counts = Counter(m.get("client_id") for m in messages)
    assert all(counts[a.client_id] == 1 for a in acks)
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))


async def test_kill_and_restart_during_sends_and_publishes(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, env=FAST_SERVER)
    server.start()
    try:
        room_name, user = unique("swap:"), unique("k")
        await members(server, room_name, user)
        async with connected(server.ws_url, server.token(user)) as (client, seen):
            room = await client.join(room_name)
            sending = asyncio.create_task(send_many(room, 60))
            publishing = asyncio.create_task(publish(server.url, room_name, 60, "p"))
            await seen.until(lambda: len(seen.seqs(room_name)) >= 30)
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(0.5)  # sends and publishes fail meanwhile and wait
            await asyncio.to_thread(server.start)
            acks = await asyncio.wait_for(sending, 90)
            published = await asyncio.wait_for(publishing, 90)
            total = max(published + [a.seq or 0 for a in acks])
            await seen.until(lambda: seen.seqs(room_name)[-1:] == [total])
            check_stream(seen, room_name, acks, published)
            assert total == 120 == len(seen.seqs(room_name))
            assert client.reconnects >= 1
            states = [e.state for e in seen.of(StateEvent)]
            assert State.RECONNECTING in states and states[-1] is State.RECOVERED
            assert any(e.kind == "recovered" for e in seen.of(RecoveryEvent))
        await check_stored_once(server, room_name, acks)
    finally:
        server.kill()


async def test_a_gap_beyond_the_recovery_limit_is_filled_from_history(
    tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    # Two instances on one database: the client's instance is down while the other
    # takes 40 messages, far more than a rejoin returns (5).
    pair = make_cluster(
        tmp_path, postgres_server, redis_server.url, size=2, REALTIME_DELIVERY_RECOVERY_LIMIT="5"
    )
    try:
        near, far = pair[0], pair[1]
        room_name, user = unique("swap:"), unique("g")
        await members(far, room_name, user)
        async with connected(near.ws_url, near.token(user)) as (client, seen):
            await client.join(room_name)
            before = await publish(far.url, room_name, 3, "a")
            await seen.until(lambda: seen.seqs(room_name) == before)
            await asyncio.to_thread(near.kill)
            await seen.until(lambda: client.state is State.RECONNECTING)
            await publish(far.url, room_name, 40, "b")
            await asyncio.to_thread(near.start)
            after = asyncio.create_task(publish(far.url, room_name, 10, "c"))  # live meanwhile
            await after
            await seen.until(lambda: seen.seqs(room_name)[-1:] == [53])
            assert seen.seqs(room_name) == list(range(1, 54))
            kinds = [(e.kind, e.since) for e in seen.of(RecoveryEvent) if e.room == room_name]
            assert kinds[:2] == [("gap", 3), ("filled", 3)], kinds
            filled = next(e for e in seen.of(RecoveryEvent) if e.kind == "filled")
            assert filled.count >= 40 - 5  # what the rejoin did not return came from history
            # the gap event comes before the messages it announces, "filled" after them
            order = [e for e in seen.events if isinstance(e, MessageEvent | RecoveryEvent)]
            gap_at = next(i for i, e in enumerate(order) if isinstance(e, RecoveryEvent))
            assert all(
                isinstance(e, MessageEvent) and (e.message.seq or 0) <= 3 for e in order[:gap_at]
            )
            await seen.until(lambda: seen.of(StateEvent)[-1].state is State.RECOVERED)
    finally:
        pair.stop()


async def test_three_instances_behind_nginx_lose_one(
    tmp_path: Path, postgres_server: PostgresServer, make_nginx: MakeNginx
) -> None:
    with RedisServer() as redis:
        trio = make_cluster(tmp_path, postgres_server, redis.url)
        try:
            nginx = make_nginx([instance.port for instance in trio])
            room_name = unique("swap:")
            users = [unique("c") for _ in range(3)]
            await members(trio[0], room_name, *users)
            async with contextlib.AsyncExitStack() as stack:
                pairs = [
                    await stack.enter_async_context(connected(nginx.ws_url, trio[0].token(u)))
                    for u in users
                ]
                rooms = [await client.join(room_name) for client, _ in pairs]
                sending = [asyncio.create_task(send_many(room, 30)) for room in rooms]
                publishing = asyncio.create_task(publish(nginx.url, room_name, 60, "p"))
                await pairs[0][1].until(lambda: len(pairs[0][1].seqs(room_name)) >= 40)
                await asyncio.to_thread(trio[1].kill)
                acks = [await asyncio.wait_for(task, 90) for task in sending]
                published = await asyncio.wait_for(publishing, 90)
                total = 3 * 30 + 60
                for (_, seen), own in zip(pairs, acks, strict=True):
                    await seen.until(partial(last_is, seen, room_name, total))
                    check_stream(seen, room_name, [a for mine in acks for a in mine], published)
                    assert len(seen.seqs(room_name)) == total
                    assert all(a.seq for a in own)
                # round robin put one of the three on the instance that died
                assert sum(client.reconnects for client, _ in pairs) >= 1
            await check_stored_once(trio[0], room_name, [a for mine in acks for a in mine])
        finally:
            trio.stop()
