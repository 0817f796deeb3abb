"""The inbox over real sockets and REST, on both stores: notification types,
preferences, what a muted channel changes, inbox states, and dedupe keys.

No transport is configured here ([webpush], [webhook] and [email] are off): the
delivery jobs' shapes are covered in process (tests/realtime/test_notices.py) and by
the store contract; here they must not appear at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from storage import create_store
from tests.client import Client, CommandFailed, close_all
from tests.e2e.support import assert_error, metric
from tests.server import Http, ServerProcess, unique

API = "/api/v1"
CONFIG = """
[notifications.types.security]
channels = ["in_app", "email"]
critical = true
"""
DEFAULTS = {"mute": False, "timezone": "UTC", "quiet_hours": None, "email": None, "types": {}}


@pytest.fixture(scope="module")
def server(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    dsn = ""
    if backend == "postgres":
        dsn = str(request.getfixturevalue("postgres_server").create_database(unique("db_")))
    process = ServerProcess(tmp_path_factory.mktemp("inbox"), dsn=dsn, config_text=CONFIG)
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[Http]:
    async with Http(server) as session:
        yield session


async def notify(http: Http, **body: Any) -> int:
    status, reply = await http.call("POST", f"{API}/notifications", body)
    assert status == 202, reply
    recipients: int = reply["recipients"]
    return recipients


async def listed(http: Http, user: str, query: str = "") -> dict[str, Any]:
    status, page = await http.call("GET", f"{API}/users/{user}/notifications?{query}")
    assert status == 200, page
    found: dict[str, Any] = page
    return found


async def put_preferences(http: Http, user: str, doc: dict[str, Any]) -> tuple[int, Any]:
    return await http.call("PUT", f"{API}/users/{user}/preferences", doc)


# Types --------------------------------------------------------------------------------


async def test_an_unknown_type_is_refused_naming_it(server: ServerProcess, http: Http) -> None:
    user = unique("u")
    client = await Client.connected(server.ws_url, server.token(user))
    status, reply = await http.call(
        "POST", f"{API}/notifications", {"to": [user], "type": "post_likd"}
    )
    assert_error((status, reply), 400, "bad_request")
    message = reply["error"]["message"]
    assert "'post_likd'" in message and "post_liked" in message and "free_types" in message
    assert (await listed(http, user))["items"] == []
    await client.no_push("notification", wait=0.2)
    # Each of the six default types is there.
    for kind in (
        "post_liked",
        "post_commented",
        "user_followed",
        "user_mentioned",
        "friend_request",
        "direct_message",
    ):
        assert await notify(http, to=[user], type=kind, data={"post_id": 1}) == 1
        assert (await client.push("notification"))["type"] == kind
    await client.close()


# Preferences --------------------------------------------------------------------------


async def test_preferences_over_rest_are_replaced_whole_and_checked(http: Http) -> None:
    user = unique("u")
    path = f"{API}/users/{user}/preferences"
    assert await http.call("GET", path) == (200, DEFAULTS)
    doc = {
        "mute": False,
        "timezone": "Europe/Paris",
        "quiet_hours": {"start": "22:00", "end": "07:00"},
        "email": "bob@example.com",
        "types": {"post_liked": {"push": False}, "security": {"in_app": False}},
    }
    assert await put_preferences(http, user, doc) == (200, doc)
    assert await http.call("GET", path) == (200, doc)
    # PUT replaces the document: what is left out goes back to its default.
    assert await put_preferences(http, user, {"mute": True}) == (200, {**DEFAULTS, "mute": True})
    assert await http.call("GET", path) == (200, {**DEFAULTS, "mute": True})
    for bad, fragment in (
        ({"timezone": "Mars/Olympus"}, "IANA time zone"),
        ({"quiet_hours": {"start": "22:00", "end": "7"}}, "HH:MM"),
        ({"types": {"post_liked": {"sms": False}}}, "in_app"),
        ({"types": {"not_a_type": {"push": False}}}, "unknown notification type 'not_a_type'"),
        ({"email": "nobody"}, "email address"),
        ({"mute": 1}, "'mute'"),
    ):
        status, reply = await put_preferences(http, user, bad)
        assert_error((status, reply), 400, "bad_request")
        assert fragment in reply["error"]["message"], (bad, reply)
    assert await http.call("GET", path) == (200, {**DEFAULTS, "mute": True})  # unchanged


async def test_the_socket_reads_and_sets_its_own_preferences_but_not_the_email(
    server: ServerProcess, http: Http
) -> None:
    user = unique("u")
    await put_preferences(http, user, {"email": "me@example.com", "mute": True})
    client = await Client.connected(server.ws_url, server.token(user))
    assert await client.call("preferences") == {
        **DEFAULTS,
        "mute": True,
        "email": "me@example.com",
    }
    wanted = {"timezone": "Asia/Tokyo", "types": {"post_commented": {"email": False}}}
    kept = await client.call("preferences.set", preferences=wanted)
    assert kept == {**DEFAULTS, **wanted, "email": "me@example.com"}  # the address stays
    assert await http.call("GET", f"{API}/users/{user}/preferences") == (200, kept)
    with pytest.raises(CommandFailed) as refused:
        await client.call("preferences.set", preferences={"email": "other@example.com"})
    assert refused.value.code == "forbidden"
    bad_docs: list[dict[str, Any]] = [
        {"timezone": "Nowhere"},
        {"types": {"made_up": {}}},
        {"quiet_hours": 5},
    ]
    for bad in bad_docs:
        with pytest.raises(CommandFailed) as refused:
            await client.call("preferences.set", preferences=bad)
        assert refused.value.code == "bad_request", bad
    assert await client.call("preferences") == kept
    await client.close()


async def test_a_muted_channel_is_not_used_and_only_those_reached_count(
    server: ServerProcess, http: Http
) -> None:
    off, muted, plain = unique("off"), unique("muted"), unique("plain")
    await put_preferences(http, off, {"types": {"post_liked": {"in_app": False}}})
    await put_preferences(http, muted, {"mute": True, "email": "m@example.com"})
    clients = {u: await Client.connected(server.ws_url, server.token(u)) for u in (off, muted)}
    clients[plain] = await Client.connected(server.ws_url, server.token(plain))
    # in_app off (and no push or email transport here): neither stored nor pushed.
    assert await notify(http, to=[off, muted, plain], type="post_liked", data={"post_id": 3}) == 1
    assert (await clients[plain].push("notification"))["type"] == "post_liked"
    await asyncio.gather(*(clients[u].no_push("notification", wait=0.2) for u in (off, muted)))
    assert (await listed(http, off))["items"] == [] and (await listed(http, muted))["items"] == []
    # Another type is not muted for `off`; a critical one ignores the mute.
    assert await notify(http, to=[off, muted], type="post_commented") == 1
    assert (await clients[off].push("notification"))["type"] == "post_commented"
    assert await notify(http, to=[off, muted, plain], type="security") == 3
    for client in clients.values():
        assert (await client.push("notification"))["type"] == "security"
    # Followers too: only the ones reached are counted.
    star = unique("star")
    for user in (off, muted, plain):
        assert (await http.call("PUT", f"{API}/users/{user}/following/{star}"))[0] == 204
    assert await notify(http, followers_of=star, type="post_liked", actor=star) == 1
    assert (await clients[plain].push("notification"))["actor"] == star
    await asyncio.gather(*(clients[u].no_push("notification", wait=0.2) for u in (off, muted)))
    await close_all(*clients.values())


async def test_without_a_transport_no_delivery_job_is_queued(
    server: ServerProcess, http: Http
) -> None:
    user = unique("u")
    await put_preferences(http, user, {"email": "u@example.com"})
    assert await notify(http, to=[user], type="post_liked") == 1
    store = create_store(server.dsn)
    await store.open()
    try:
        assert await store.deliveries(user=user, limit=10) == []
    finally:
        await store.close()


# Inbox states -------------------------------------------------------------------------


async def test_seen_archived_read_all_and_counts_per_type_over_the_socket(
    server: ServerProcess, http: Http
) -> None:
    user = unique("u")
    for kind in ("post_liked", "post_liked", "user_followed", "direct_message"):
        await notify(http, to=[user], type=kind)
    client = await Client.connected(server.ws_url, server.token(user))
    page = await client.call("notifications")
    ids = [item["id"] for item in page["items"]]
    assert (page["unread_count"], page["unseen_count"]) == (4, 4)
    assert page["unread_by_type"] == {"post_liked": 2, "user_followed": 1, "direct_message": 1}
    assert not any("seen" in item or "archived" in item for item in page["items"])

    assert await client.call("notifications.seen", up_to=ids[2]) == {"unseen_count": 1}
    page = await client.call("notifications")
    assert [item.get("seen", False) for item in page["items"]] == [True, True, True, False]
    assert (page["unread_count"], page["unseen_count"]) == (4, 1)

    assert await client.call("notifications.archive", ids=[ids[0], ids[3]]) == {"unread_count": 2}
    page = await client.call("notifications")
    assert [item["id"] for item in page["items"]] == ids[1:3]
    assert page["unread_by_type"] == {"post_liked": 1, "user_followed": 1}
    assert page["unseen_count"] == 0
    archive = await client.call("notifications", archived=True)
    assert [(item["id"], item["archived"]) for item in archive["items"]] == [
        (ids[0], True),
        (ids[3], True),
    ]
    assert await client.call("notifications.archive", ids=[ids[3]], archived=False) == {
        "unread_count": 3
    }
    assert await client.call("notifications.read_all") == {"unread_count": 0}
    page = await client.call("notifications")
    assert [(item["read"], item["seen"]) for item in page["items"]] == [(True, True)] * 3
    assert (page["unread_by_type"], page["unseen_count"]) == ({}, 0)
    # A new one is unread and unseen again, and pushed without either mark.
    await notify(http, to=[user], type="post_liked")
    push = await client.push("notification")
    assert "seen" not in push and "archived" not in push and push["read"] is False
    page = await client.call("notifications", unread=True)
    assert [item["id"] for item in page["items"]] == [push["id"]]
    assert page["unread_by_type"] == {"post_liked": 1}
    for op, args in (
        ("notifications.seen", {}),
        ("notifications.archive", {"ids": "1"}),
        ("notifications.archive", {}),
        ("notifications", {"archived": "no"}),
    ):
        with pytest.raises(CommandFailed) as refused:
            await client.call(op, **args)
        assert refused.value.code == "bad_request", (op, args)
    await client.close()


async def test_inbox_states_over_rest(http: Http) -> None:
    user, other = unique("u"), unique("v")
    base = f"{API}/users/{user}/notifications"
    for kind in ("post_liked", "user_followed", "post_liked"):
        await notify(http, to=[user], type=kind)
    await notify(http, to=[other], type="post_liked")
    ids = [item["id"] for item in (await listed(http, user))["items"]]
    theirs = (await listed(http, other))["items"][0]["id"]
    assert await http.call("PUT", f"{base}/{ids[1]}/read") == (204, None)
    assert await http.call("PUT", f"{base}/{ids[1]}/read") == (204, None)  # again: still 204
    assert_error(await http.call("PUT", f"{base}/{theirs}/read"), 404, "not_found")
    assert_error(await http.call("PUT", f"{base}/{ids[2] + 10**6}/read"), 404, "not_found")
    assert_error(await http.call("PUT", f"{base}/0/read"), 400, "bad_request")
    assert_error(await http.call("PUT", f"{base}/x/read"), 400, "bad_request")
    page = await listed(http, user)
    assert [item["read"] for item in page["items"]] == [False, True, False]
    assert page["items"][1]["seen"] is True  # reading it is seeing it
    assert (page["unread_count"], page["unread_by_type"], page["unseen_count"]) == (
        2,
        {"post_liked": 2},
        2,
    )
    assert (await listed(http, other))["unread_count"] == 1  # theirs untouched

    assert await http.call("POST", f"{base}/seen", {"up_to": ids[0]}) == (
        200,
        {"unseen_count": 1},
    )
    assert await http.call("POST", f"{base}/archive", {"ids": [ids[2], theirs]}) == (
        200,
        {"unread_count": 1},
    )
    assert [item["id"] for item in (await listed(http, user))["items"]] == ids[:2]
    archived = await listed(http, user, "archived=true")
    assert [item["id"] for item in archived["items"]] == [ids[2]]
    assert await http.call("POST", f"{base}/read_all") == (200, {"unread_count": 0})
    assert (await listed(http, other))["unread_count"] == 1
    for path, body in (
        ("seen", {}),
        ("seen", {"up_to": -1}),
        ("archive", {"ids": []}),
        ("archive", {"ids": [1], "archived": "yes"}),
    ):
        assert_error(await http.call("POST", f"{base}/{path}", body), 400, "bad_request")
    assert_error(await http.call("GET", f"{base}?archived=maybe"), 400, "bad_request")


# Dedupe keys --------------------------------------------------------------------------


async def deduplicated(http: Http) -> float:
    status, _, raw = await http.full("GET", "/metrics", key=None)
    assert status == 200
    return metric(raw.decode(), "realtime_notifications_deduplicated_total")


async def test_a_repeated_dedupe_key_creates_nothing_new_for_the_same_recipient(
    server: ServerProcess, http: Http
) -> None:
    a, b, c = unique("a"), unique("b"), unique("c")
    client = await Client.connected(server.ws_url, server.token(a))
    body: dict[str, Any] = {"type": "post_liked", "data": {"post_id": 5}, "dedupe_key": "ev-9"}
    assert await notify(http, to=[a, b], **body) == 2
    first = await client.push("notification")
    before = await deduplicated(http)
    assert await notify(http, to=[a, b, c], **body) == 1  # only c is new
    assert await deduplicated(http) == before + 2
    await client.no_push("notification", wait=0.2)
    assert [i["id"] for i in (await listed(http, a))["items"]] == [first["id"]]
    assert len((await listed(http, c))["items"]) == 1
    # Another key, or none, is another notification.
    assert await notify(http, to=[a], type="post_liked", dedupe_key="ev-10") == 1
    assert await notify(http, to=[a], type="post_liked") == 1
    # Retries racing each other: the database lets one through per recipient.
    d, e = unique("d"), unique("e")
    race = {"to": [d, e], "type": "user_followed", "dedupe_key": "follow-1"}
    counts = await asyncio.gather(*(notify(http, **race) for _ in range(6)))
    assert sum(counts) == 2
    for user in (d, e):
        assert len((await listed(http, user))["items"]) == 1
    for bad in ("", "k" * 129, 7):
        status, reply = await http.call(
            "POST", f"{API}/notifications", {"to": [a], "type": "t", "dedupe_key": bad}
        )
        assert_error((status, reply), 400, "bad_request")
    await client.close()
