"""Three instances on one PostgreSQL and one Redis behave, to clients and REST, as one."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import pytest

from tests.client import Client, CommandFailed, close_all
from tests.cluster.conftest import Cluster, make_cluster
from tests.server import ServerProcess, unique
from tests.services import RedisServer


async def members(instance: ServerProcess, room: str, users: list[str]) -> None:
    for user in users:
        status, _ = await instance.rest("PUT", f"/api/v1/rooms/{room}/members/{user}")
        assert status == 204


async def joined_clients(cluster: Cluster, room: str, per_instance: int) -> list[Client]:
    """``per_instance`` members connected to each instance, joined to ``room``."""
    users = [unique("u") for _ in range(per_instance * len(cluster))]
    await members(cluster[0], room, users)
    clients = []
    for index, user in enumerate(users):
        instance = cluster[index % len(cluster)]
        client = await Client.connected(instance.ws_url, instance.token(user))
        await client.call("join", room=room)
        clients.append(client)
    return clients


async def seqs_received(client: Client, count: int, timeout: float = 20) -> list[int]:
    pushes = await client.pushes_of("message", count, timeout=timeout)
    return [p["seq"] for p in pushes]


async def test_three_senders_on_three_instances_everyone_sees_1_to_600_in_order(
    cluster: Cluster,
) -> None:
    room = unique("swap:")
    receivers = await joined_clients(cluster, room, per_instance=2)
    senders = receivers[:3]  # one on each instance

    async def send_200(client: Client, tag: int) -> list[int]:
        seqs = []
        for i in range(200):
            seqs.append((await client.call("send", room=room, body=[tag, i]))["seq"])
        return seqs

    sent = await asyncio.gather(*(send_200(c, n) for n, c in enumerate(senders)))
    assert sorted(s for seqs in sent for s in seqs) == list(range(1, 601))
    for client in receivers:
        assert await seqs_received(client, 600) == list(range(1, 601))
        await client.no_push("message", wait=0.2)
    await close_all(*receivers)


async def test_presence_reaches_every_instance_and_lists_the_whole_room(
    cluster: Cluster,
) -> None:
    room = unique("swap:")
    users = [unique("p") for _ in range(3)]
    await members(cluster[0], room, users)
    clients = []
    for instance, user in zip(cluster, users, strict=True):
        client = await Client.connected(instance.ws_url, instance.token(user))
        await client.call("join", room=room)
        clients.append(client)
    await clients[0].push_where("presence", user=users[2], event="join")
    for client in clients:
        assert sorted((await client.call("presence", room=room))["users"]) == sorted(users)
    status, body = await cluster[1].rest("GET", f"/api/v1/rooms/{room}/presence")
    assert status == 200 and sorted(body["users"]) == sorted(users)
    await clients[2].close()
    left = await clients[0].push_where("presence", user=users[2], event="leave")
    assert left["room"] == room
    await close_all(*clients[:2])


async def test_notifications_to_followers_spread_over_instances(cluster: Cluster) -> None:
    star = unique("star")
    followers = [unique("f") for _ in range(30)]
    for follower in followers:
        status, _ = await cluster[0].rest("PUT", f"/api/v1/users/{follower}/following/{star}")
        assert status == 204
    online = [
        await Client.connected(cluster[i % 3].ws_url, cluster[i % 3].token(follower))
        for i, follower in enumerate(followers[:9])
    ]
    status, body = await cluster[2].rest(
        "POST",
        "/api/v1/notifications",
        {"followers_of": star, "type": "post", "data": {"id": 7}, "actor": star},
    )
    assert status == 202 and body == {"recipients": 30}
    for client in online:
        push = await client.push("notification")
        assert push["type"] == "post" and push["data"] == {"id": 7} and push["actor"] == star
    status, page = await cluster[1].rest("GET", f"/api/v1/users/{followers[-1]}/notifications")
    assert status == 200 and [i["type"] for i in page["items"]] == ["post"]
    await close_all(*online)


async def test_notifications_to_thousands_of_followers_go_out_in_batches(
    cluster: Cluster,
) -> None:
    star = unique("big")
    followers = [f"{star}-f{i:05d}" for i in range(12_000)]
    # Setting up 12,000 follows through REST would take most of the test's time;
    # the graph goes straight into the shared database instead.
    connection = await asyncpg.connect(cluster.dsn)
    try:
        await connection.copy_records_to_table(
            "follows",
            records=[(star, follower, 0) for follower in followers],
            columns=["target", "follower", "created_at"],
        )
    finally:
        await connection.close()
    watched = [followers[0], followers[5_000], followers[11_999]]  # in all three batches
    online = [
        await Client.connected(cluster[i].ws_url, cluster[i].token(user))
        for i, user in enumerate(watched)
    ]
    status, body = await cluster[0].rest(
        "POST", "/api/v1/notifications", {"followers_of": star, "type": "live", "data": 1}
    )
    assert status == 202 and body == {"recipients": 12_000}
    for client in online:
        assert (await client.push("notification", timeout=30))["type"] == "live"
    for user in (followers[1], followers[9_999]):
        status, page = await cluster[2].rest("GET", f"/api/v1/users/{user}/notifications")
        assert [item["type"] for item in page["items"]] == ["live"]
    await close_all(*online)


async def test_disconnect_and_membership_removal_reach_every_instance(
    cluster: Cluster,
) -> None:
    room = unique("swap:")
    user = unique("m")
    await members(cluster[0], room, [user])
    clients = [await Client.connected(i.ws_url, i.token(user)) for i in cluster]
    for client in clients:
        await client.call("join", room=room)
    status, _ = await cluster[2].rest("DELETE", f"/api/v1/rooms/{room}/members/{user}")
    assert status == 204
    for client in clients:
        assert await client.push("left") == {
            "push": "left",
            "room": room,
            "reason": "member_removed",
        }
    status, _ = await cluster[1].rest(
        "POST", f"/api/v1/users/{user}/disconnect", {"reason": "banned"}
    )
    assert status == 204
    for client in clients:
        assert await client.closed() == (4004, "banned")


async def test_the_connection_limit_counts_every_instance(
    tmp_path: Any, postgres_server: Any, redis_server_module: RedisServer
) -> None:
    from tests.cluster.conftest import make_cluster

    small = make_cluster(
        tmp_path,
        postgres_server,
        redis_server_module.url,
        size=2,
        REALTIME_SERVER_MAX_CONNECTIONS_PER_USER="2",
    )
    try:
        user = unique("c")
        first = await Client.connected(small[0].ws_url, small[0].token(user))
        second = await Client.connected(small[1].ws_url, small[1].token(user))
        third = await Client.open(small[0].ws_url)
        reply = await third.request("connect", token=small[0].token(user))
        assert reply["error"]["code"] == "forbidden"
        assert (await third.closed())[0] == 4029
        await second.close()
        fourth = await Client.connected(small[0].ws_url, small[0].token(user))
        await close_all(first, fourth)
    finally:
        small.stop()


async def test_a_killed_instance_leaves_presence_within_the_ttl(
    tmp_path: Any, postgres_server: Any, broker_url: str
) -> None:
    pair = make_cluster(tmp_path, postgres_server, broker_url, size=2)
    try:
        room = unique("swap:")
        alice, bob = unique("a"), unique("b")
        await members(pair[0], room, [alice, bob])
        a = await Client.connected(pair[0].ws_url, pair[0].token(alice))
        b = await Client.connected(pair[1].ws_url, pair[1].token(bob))
        await a.call("join", room=room)
        await b.call("join", room=room)
        await a.push_where("presence", user=bob, event="join")
        pair[1].kill()
        # presence.ttl is 2 s; the sweep runs every ttl/3.
        left = await a.push_where("presence", user=bob, event="leave")
        assert left["room"] == room
        assert (await a.call("presence", room=room))["users"] == [alice]
        await close_all(a, b)
    finally:
        pair.stop()


async def test_a_redis_outage_loses_no_acknowledged_message(
    tmp_path: Any, postgres_server: Any
) -> None:
    with RedisServer() as redis:
        trio = make_cluster(tmp_path, postgres_server, redis.url)
        try:
            room = unique("swap:")
            receivers = await joined_clients(trio, room, per_instance=1)
            acknowledged: list[int] = []
            refused = 0

            async def send_for(seconds: float, sender: Client) -> None:
                nonlocal refused
                deadline = asyncio.get_running_loop().time() + seconds
                while asyncio.get_running_loop().time() < deadline:
                    try:
                        reply = await sender.call("send", room=room, body="x")
                        acknowledged.append(reply["seq"])
                    except CommandFailed as failure:
                        assert failure.code == "unavailable", failure
                        refused += 1
                    await asyncio.sleep(0.02)

            sending = asyncio.gather(*(send_for(6, c) for c in receivers))
            await asyncio.sleep(1)
            redis.stop()
            await asyncio.sleep(2)
            redis.start()
            await sending
            assert acknowledged, "nothing was sent"
            expected = sorted(acknowledged)
            assert expected == list(range(1, len(expected) + 1))
            for client in receivers:
                got = await seqs_received(client, len(expected), timeout=30)
                assert got == expected
            await close_all(*receivers)
        finally:
            trio.stop()


@pytest.mark.parametrize("signal", ["sigterm", "kill"])
async def test_clients_of_a_lost_instance_reconnect_and_miss_nothing(
    tmp_path: Any, postgres_server: Any, broker_url: str, signal: str
) -> None:
    """Without a load balancer: a client reconnects to another instance by itself."""
    trio = make_cluster(tmp_path, postgres_server, broker_url)
    try:
        room = unique("swap:")
        user = unique("r")
        await members(trio[0], room, [user])
        sender = await Client.connected(trio[0].ws_url, trio[0].token(unique("s")))
        await members(trio[0], room, [sender.session["user"]])
        await sender.call("join", room=room)
        victim = await Client.connected(trio[2].ws_url, trio[2].token(user))
        joined = await victim.call("join", room=room)
        last = joined["seq"]

        async def send(count: int) -> None:
            for i in range(count):
                await sender.call("send", room=room, body=i)

        await send(20)
        seen = await seqs_received(victim, 20)
        if signal == "kill":
            trio[2].kill()
        else:
            assert trio[2].terminate() == 0
            assert (await victim.closed())[0] == 1012
        await send(30)  # while the victim is away
        back = await Client.connected(trio[1].ws_url, trio[1].token(user))
        rejoined = await back.call("join", room=room, since=seen[-1], epoch=joined["epoch"])
        assert rejoined["recovered"] is True
        seen += [m["seq"] for m in rejoined["missed"]]
        await send(10)
        seen += await seqs_received(back, 10)
        assert seen == list(range(last + 1, last + 61))
        with contextlib.suppress(Exception):
            await victim.close()
        await close_all(sender, back)
    finally:
        trio.stop()
