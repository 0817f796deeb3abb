"""Notifications (contract section 5): live pushes, storage, reading and marking read."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.client import Client, CommandFailed, close_all
from tests.e2e.support import assert_error
from tests.server import Http, ServerProcess, unique

API = "/api/v1"
PUSH_FIELDS = {"push", "id", "type", "data", "actor", "ts", "read"}


async def notify(http: Http, **body: Any) -> int:
    status, reply = await http.call("POST", f"{API}/notifications", body)
    assert status == 202, reply
    recipients: int = reply["recipients"]
    return recipients


async def stored(http: Http, user: str, query: str = "") -> dict[str, Any]:
    status, page = await http.call("GET", f"{API}/users/{user}/notifications?{query}")
    assert status == 200, page
    assert set(page) >= {"items", "unread_count"}
    result: dict[str, Any] = page
    return result


async def test_listed_users_get_a_live_push_on_every_connection_and_it_is_stored(
    server: ServerProcess,
) -> None:
    a, b, c, d = unique("a"), unique("b"), unique("c"), unique("d")
    a1 = await Client.connected(server.ws_url, server.token(a))
    a2 = await Client.connected(server.ws_url, server.token(a), encoding="msgpack")
    b1 = await Client.connected(server.ws_url, server.token(b))
    bystander = await Client.connected(server.ws_url, server.token(d))
    async with Http(server) as http:
        started = int(time.time() * 1000)
        recipients = await notify(
            http, to=[a, b, c], type="like", data={"post": 7, "tags": ["x"]}, actor="zed"
        )
        assert recipients == 3
        pushes = {
            name: await client.push("notification")
            for name, client in (("a1", a1), ("a2", a2), ("b1", b1))
        }
        for push in pushes.values():
            assert set(push) >= PUSH_FIELDS
            assert (push["type"], push["data"], push["actor"], push["read"]) == (
                "like",
                {"post": 7, "tags": ["x"]},
                "zed",
                False,
            )
            assert isinstance(push["id"], int) and push["id"] > 0
            assert started - 1000 <= push["ts"] <= time.time() * 1000 + 1000
        assert pushes["a1"]["id"] == pushes["a2"]["id"]  # one notification, two sockets
        assert pushes["b1"]["id"] != pushes["a1"]["id"]  # stored per recipient
        await asyncio.gather(
            *(c.no_push("notification", wait=0.2) for c in (a1, a2, b1, bystander))
        )
        # stored for the online ones and for c, who was offline
        for user, push in ((a, pushes["a1"]), (b, pushes["b1"])):
            page = await stored(http, user)
            assert page["unread_count"] == 1
            assert page["items"] == [{k: v for k, v in push.items() if k != "push"}]
        c1 = await Client.connected(server.ws_url, server.token(c))
        page_c = await c1.call("notifications")
        assert page_c["unread_count"] == 1 and len(page_c["items"]) == 1
        item = page_c["items"][0]
        assert (item["type"], item["data"], item["actor"], item["read"]) == (
            "like",
            {"post": 7, "tags": ["x"]},
            "zed",
            False,
        )
        assert item["id"] not in (pushes["a1"]["id"], pushes["b1"]["id"])
        assert (await stored(http, d))["items"] == []
        # no actor: null; a user listed twice gets it once
        assert await notify(http, to=[c, c], type="ping", data=None) == 1
        push = await c1.push("notification")
        assert (push["type"], push["data"], push["actor"]) == ("ping", None, None)
        await c1.no_push("notification", wait=0.2)
        assert (await c1.call("notifications"))["unread_count"] == 2
    await close_all(a1, a2, b1, bystander, c1)


async def test_followers_of_reaches_every_follower_live_or_stored(server: ServerProcess) -> None:
    star = unique("star")
    followers = sorted(unique(f"f{i:02d}") for i in range(30))
    online = followers[::6]  # 5 of them
    ex_fan, stranger = unique("ex"), unique("stranger")
    async with Http(server) as http:
        replies = await asyncio.gather(
            *(http.call("PUT", f"{API}/users/{f}/following/{star}") for f in [*followers, ex_fan])
        )
        assert {status for status, _ in replies} == {204}
        assert (await http.call("DELETE", f"{API}/users/{ex_fan}/following/{star}"))[0] == 204
        clients = {f: await Client.connected(server.ws_url, server.token(f)) for f in online}
        second = await Client.connected(server.ws_url, server.token(online[0]))
        others = [
            await Client.connected(server.ws_url, server.token(u)) for u in (star, ex_fan, stranger)
        ]
        recipients = await notify(http, followers_of=star, type="post", data={"id": 99}, actor=star)
        assert recipients == 30
        ids = set()
        for client in [*clients.values(), second]:
            push = await client.push("notification")
            assert (push["type"], push["data"], push["actor"], push["read"]) == (
                "post",
                {"id": 99},
                star,
                False,
            )
            ids.add(push["id"])
        assert len(ids) == len(online)  # one per recipient; both of online[0]'s sockets
        await asyncio.gather(
            *(c.no_push("notification", wait=0.2) for c in [*clients.values(), second, *others])
        )
        pages = await asyncio.gather(*(stored(http, f) for f in followers))
        for follower, page in zip(followers, pages, strict=True):
            assert page["unread_count"] == 1, follower
            assert [(i["type"], i["data"]) for i in page["items"]] == [("post", {"id": 99})]
        assert len({page["items"][0]["id"] for page in pages}) == 30
        for user in (star, ex_fan, stranger):
            assert (await stored(http, user))["items"] == []
        assert await notify(http, followers_of=stranger, type="post") == 0
    await close_all(*clients.values(), second, *others)


async def _seven_notifications(http: Http, user: str, noise: str) -> list[int]:
    """Notifications n0..n6 for ``user`` (others' interleaved); returns their ids."""
    for i in range(7):
        await notify(http, to=[user], type=f"n{i}", data={"i": i}, actor="x")
        await notify(http, to=[noise], type="noise")
    page = await stored(http, user)
    ids = [item["id"] for item in page["items"]]
    assert [item["type"] for item in page["items"]] == [f"n{i}" for i in range(7)]
    assert ids == sorted(ids) and len(set(ids)) == 7
    return ids


async def test_notifications_op_pages_filters_and_marks_read(server: ServerProcess) -> None:
    user, noise = unique("u"), unique("v")
    async with Http(server) as http:
        ids = await _seven_notifications(http, user, noise)
        noise_ids = [item["id"] for item in (await stored(http, noise))["items"]]
        client = await Client.connected(server.ws_url, server.token(user))

        async def page(**args: Any) -> tuple[list[int], int]:
            reply = await client.call("notifications", **args)
            items = reply["items"]
            assert [i["id"] for i in items] == sorted(i["id"] for i in items)  # ascending
            return [ids.index(i["id"]) for i in items], reply["unread_count"]

        assert await page() == ([0, 1, 2, 3, 4, 5, 6], 7)
        assert await page(limit=3) == ([4, 5, 6], 7)  # the latest, ascending
        assert await page(after=ids[1], limit=2) == ([2, 3], 7)
        assert await page(after=ids[4]) == ([5, 6], 7)
        assert await page(after=ids[6]) == ([], 7)
        assert await page(after=0, limit=2) == ([0, 1], 7)
        assert await page(unread=True) == ([0, 1, 2, 3, 4, 5, 6], 7)
        full = (await client.call("notifications", limit=1))["items"][0]
        assert full == {
            "id": ids[6],
            "type": "n6",
            "data": {"i": 6},
            "actor": "x",
            "ts": full["ts"],
            "read": False,
        }

        assert await client.call("notifications.read", ids=[ids[0], ids[2]]) == {"unread_count": 5}
        reply = await client.call("notifications")
        assert [i["read"] for i in reply["items"]] == [
            True,
            False,
            True,
            False,
            False,
            False,
            False,
        ]
        assert await page(unread=True) == ([1, 3, 4, 5, 6], 5)
        assert await page(unread=True, limit=2) == ([5, 6], 5)
        assert await page(unread=True, after=ids[0], limit=2) == ([1, 3], 5)
        # marking again changes nothing
        assert await client.call("notifications.read", ids=[ids[0]]) == {"unread_count": 5}
        assert await client.call("notifications.read", up_to=ids[4]) == {"unread_count": 2}
        assert await page(unread=True) == ([5, 6], 2)
        assert await page(unread=False, limit=3) == ([4, 5, 6], 2)
        # another user's ids are not ours to mark
        assert await client.call("notifications.read", ids=noise_ids) == {"unread_count": 2}
        assert (await stored(http, noise))["unread_count"] == 7
        for bad in (
            {},
            {"ids": [ids[5]], "up_to": ids[5]},
            {"ids": ids[5]},
            {"ids": [0]},
            {"ids": ["1"]},
            {"up_to": -1},
            {"up_to": "3"},
        ):
            with pytest.raises(CommandFailed) as refused:
                await client.call("notifications.read", **bad)
            assert refused.value.code == "bad_request", bad
        for bad in ({"limit": 0}, {"after": -1}, {"unread": "yes"}, {"after": "1"}):
            with pytest.raises(CommandFailed) as refused:
                await client.call("notifications", **bad)
            assert refused.value.code == "bad_request", bad
        # a new one arrives live, unread, with a greater id
        await notify(http, to=[user], type="n7")
        push = await client.push("notification")
        assert push["id"] > ids[6] and push["read"] is False
        reply = await client.call("notifications", unread=True)
        assert [i["type"] for i in reply["items"]] == ["n5", "n6", "n7"]
        assert reply["unread_count"] == 3
        assert await client.call("notifications.read", up_to=push["id"]) == {"unread_count": 0}
        await client.close()


async def test_rest_notifications_page_filter_and_mark_read(server: ServerProcess) -> None:
    user, noise = unique("u"), unique("v")
    path = f"{API}/users/{user}/notifications"
    async with Http(server) as http:
        ids = await _seven_notifications(http, user, noise)

        async def page(query: str = "") -> tuple[list[int], int]:
            body = await stored(http, user, query)
            return [ids.index(i["id"]) for i in body["items"]], body["unread_count"]

        assert await page() == ([0, 1, 2, 3, 4, 5, 6], 7)
        assert await page("limit=3") == ([4, 5, 6], 7)
        assert await page(f"after={ids[1]}&limit=2") == ([2, 3], 7)
        assert await page(f"after={ids[6]}") == ([], 7)
        assert await page("unread=true") == ([0, 1, 2, 3, 4, 5, 6], 7)
        item = (await stored(http, user, "limit=1"))["items"][0]
        assert item == {
            "id": ids[6],
            "type": "n6",
            "data": {"i": 6},
            "actor": "x",
            "ts": item["ts"],
            "read": False,
        }
        client = await Client.connected(server.ws_url, server.token(user))
        # REST and WS read the same store
        assert (await client.call("notifications", limit=3))["items"] == (
            await stored(http, user, "limit=3")
        )["items"]
        # marking read over REST (an extension of the contract)
        status, reply = await http.call("POST", f"{path}/read", {"ids": [ids[1], ids[3]]})
        assert (status, reply) == (200, {"unread_count": 5})
        assert await page("unread=true") == ([0, 2, 4, 5, 6], 5)
        assert await page("unread=true&limit=2") == ([5, 6], 5)
        assert await page(f"unread=true&after={ids[0]}&limit=2") == ([2, 4], 5)
        status, reply = await http.call("POST", f"{path}/read", {"up_to": ids[5]})
        assert (status, reply) == (200, {"unread_count": 1})
        assert await page("unread=1") == ([6], 1)
        assert (await client.call("notifications", unread=True))["unread_count"] == 1
        assert (await stored(http, noise))["unread_count"] == 7
        for query in ("limit=0", "limit=x", "after=-1", "after=x", "unread=maybe"):
            assert_error(await http.call("GET", f"{path}?{query}"), 400, "bad_request")
        for body in ({}, {"ids": [1], "up_to": 1}, {"ids": "1"}, {"up_to": "x"}):
            assert_error(await http.call("POST", f"{path}/read", body), 400, "bad_request")
        await client.close()
