"""Three instances behave as one: first checks."""

from __future__ import annotations

import asyncio

from tests.client import Client, close_all
from tests.cluster.conftest import Cluster
from tests.server import unique


async def test_a_message_sent_on_one_instance_reaches_members_on_the_others(
    cluster: Cluster,
) -> None:
    room = unique("swap:")
    users = [unique("u") for _ in cluster]
    for user in users:
        await cluster[0].rest("PUT", f"/api/v1/rooms/{room}/members/{user}")
    clients = [
        await Client.connected(instance.ws_url, instance.token(user))
        for instance, user in zip(cluster, users, strict=True)
    ]
    for client in clients:
        await client.call("join", room=room)
    await clients[1].call("send", room=room, body="hello")
    for client in clients:
        push = await client.push("message")
        assert push["body"] == "hello" and push["seq"] == 1
    await asyncio.sleep(0)
    await close_all(*clients)
