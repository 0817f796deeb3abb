"""Bounded history: a namespace's retention removes old messages, never the seq."""

from __future__ import annotations

import asyncio

from tests.client import Client
from tests.e2e.conftest import ServerFactory
from tests.server import unique

CONFIG = """
[storage]
retention_interval = 1.0

[namespaces.followers]
history_ttl = 1

[namespaces.swap]
history_max = 3
presence = true
typing = true
"""


async def test_retention_by_age_and_by_count(make_server: ServerFactory) -> None:
    server = make_server(config_text=CONFIG)
    owner = unique("star")
    room = f"followers:{owner}"
    for i in range(3):
        status, _ = await server.rest("POST", f"/api/v1/rooms/{room}/messages", {"body": i})
        assert status == 201
    swap = unique("swap:")
    for i in range(5):
        await server.rest("POST", f"/api/v1/rooms/{swap}/messages", {"body": i})
    await asyncio.sleep(3.5)  # older than 1 s, and at least two sweeps
    status, page = await server.rest("GET", f"/api/v1/rooms/{room}/messages")
    assert status == 200 and page["messages"] == []
    status, page = await server.rest("GET", f"/api/v1/rooms/{swap}/messages")
    assert [m["seq"] for m in page["messages"]] == [3, 4, 5] and page["more"] is False
    # seq and epoch carry on; a client that missed the pruned ones learns it
    status, sent = await server.rest("POST", f"/api/v1/rooms/{room}/messages", {"body": "new"})
    assert sent["seq"] == 4
    client = await Client.connected(server.ws_url, server.token(owner))
    joined = await client.call("join", room=room, since=1)
    assert joined["seq"] == 4 and joined["recovered"] is False
    assert [m["seq"] for m in joined["missed"]] == [4]
    await client.close()
