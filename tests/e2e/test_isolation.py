"""One connection's end never reaches another's (issue 8, defect 1), over real sockets.

A client that starts the closing handshake is answered and half-closed at once,
but stays in its rooms until its TCP connection is gone. Pushes meant for it in
that time must neither fail the shared write of everyone else's frames nor leave
them unwritten.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.client import Client, close_all
from tests.e2e.helpers_auth import running, server_process
from tests.e2e.raw_peer import RawPeer
from tests.server import ServerProcess, unique

CONFIG = """
[namespaces.open]
join = "anyone"
send = "anyone"
presence = true
typing = true
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = server_process(
        tmp_path_factory,
        "isolation",
        # a client that sent Close may keep its TCP connection this long
        env={"REALTIME_SERVER_CLOSE_TIMEOUT": "20"},
        config_text=CONFIG,
    )
    with running(process):
        yield process


async def test_a_member_that_sent_close_and_keeps_its_socket_mutes_nobody(
    server: ServerProcess,
) -> None:
    room = unique("open:")
    members = [
        await Client.connected(server.ws_url, server.token(unique("m")), rooms=[room])
        for _ in range(9)
    ]
    closer = await RawPeer.open(server.ws_url)
    try:
        await closer.call(1, "connect", token=server.token(unique("closer")), rooms=[room])
        closer.send_close()
        assert await closer.until_closed() == 1000
        # The server has answered and half-closed; the closer keeps its end open,
        # still a member of the room, while messages are published there.
        sender = members[0]
        count = 20
        for i in range(count):
            sent = await sender.call("send", room=room, body={"n": i})
            assert sent["seq"] == i + 1
        for member in members:
            pushes = await member.pushes_of("message", count)
            assert [p["seq"] for p in pushes] == list(range(1, count + 1))
            assert await member.call("ping") == {}
    finally:
        await closer.abort()
        await close_all(*members)


async def test_connect_close_churn_in_a_shared_room_answers_every_connect(
    server: ServerProcess,
) -> None:
    room = unique("open:")
    watchers = [
        await Client.connected(server.ws_url, server.token(unique("w")), rooms=[room])
        for _ in range(3)
    ]

    async def churn(rounds: int) -> None:
        for _ in range(rounds):
            client = await Client.open(server.ws_url)
            try:
                session = await client.call(
                    "connect", token=server.token(unique("c")), rooms=[room]
                )
                assert session["rooms"][-1]["room"] == room
            finally:
                await client.close()

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(8):
                group.create_task(churn(25))
        for watcher in watchers:
            assert await watcher.call("ping") == {}
    finally:
        await close_all(*watchers)
