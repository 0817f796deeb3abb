"""The REST API of section 6 over real HTTP: every endpoint, its successes and its errors."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest

from tests.client import Client, CommandFailed, close_all
from tests.e2e.support import assert_error, metric
from tests.server import SERVICE_KEY, Http, ServerProcess, unique

API = "/api/v1"
MAX_REQUEST_BYTES = 1024 * 1024  # server.max_request_bytes default
MAX_BODY_BYTES = 65536  # namespaces.*.max_body_bytes default

# Room names that break `[a-z_]+:[A-Za-z0-9_.:-]{1,128}`, as they appear in a URL path.
BAD_ROOMS = [
    "swap",  # no colon
    "Swap:1",  # upper-case namespace
    "swap:",  # empty key
    ":1",  # empty namespace
    "swap:a%20b",  # space
    "swap:%C3%A9",  # é
    "swap:" + "k" * 129,  # key too long
]
BAD_USERS = ["a%20b", "%C3%A9t%C3%A9", "u" * 129, "a%2Cb"]


def endpoints(room: str, user: str, other: str) -> list[tuple[str, str, Any]]:
    """Every service endpoint of the contract, with a valid body."""
    return [
        ("POST", f"{API}/rooms/{room}/messages", {"body": "x", "user": user}),
        ("GET", f"{API}/rooms/{room}/messages", None),
        ("PUT", f"{API}/rooms/{room}/members/{user}", None),
        ("DELETE", f"{API}/rooms/{room}/members/{user}", None),
        ("GET", f"{API}/rooms/{room}/members", None),
        ("GET", f"{API}/rooms/{room}/presence", None),
        ("PUT", f"{API}/users/{user}/following/{other}", None),
        ("DELETE", f"{API}/users/{user}/following/{other}", None),
        ("POST", f"{API}/notifications", {"to": [user], "type": "like", "data": {}}),
        ("GET", f"{API}/users/{user}/notifications", None),
        ("POST", f"{API}/users/{user}/notifications/read", {"up_to": 1}),
        ("POST", f"{API}/users/{user}/disconnect", {"reason": "no"}),
    ]


# Service keys ---------------------------------------------------------------------------


async def test_every_endpoint_needs_the_service_key(server: ServerProcess) -> None:
    room, user, other = unique("swap:"), unique("u"), unique("t")
    client = await Client.connected(server.ws_url, server.token(user))
    refusals: list[tuple[str | None, dict[str, str]]] = [
        (None, {}),  # no Authorization header
        ("wrong-service-key-0123456789", {}),
        (None, {"Authorization": SERVICE_KEY}),  # no scheme
        (None, {"Authorization": f"Basic {SERVICE_KEY}"}),
        (None, {"Authorization": "Bearer"}),
        (None, {"Authorization": "Bearer "}),
        (None, {"Authorization": f"Bearer {SERVICE_KEY}x"}),
        (None, {"Authorization": f"Bearer {SERVICE_KEY[:-1]}"}),
        (None, {"Authorization": f"Token {SERVICE_KEY}"}),
    ]
    async with Http(server) as http:
        for method, path, body in endpoints(room, user, other):
            for key, headers in refusals:
                reply = await http.call(method, path, body, key=key, headers=headers)
                assert_error(reply, 401, "unauthorized")
        # None of it happened: no message, member, follow, notification or disconnect.
        status, page = await http.call("GET", f"{API}/rooms/{room}/messages")
        assert status == 200 and page["messages"] == []
        assert await http.call("GET", f"{API}/rooms/{room}/members") == (200, {"users": []})
        status, notes = await http.call("GET", f"{API}/users/{user}/notifications")
        assert status == 200 and notes["items"] == [] and notes["unread_count"] == 0
        followers = {"followers_of": other, "type": "t", "data": None}
        assert await http.call("POST", f"{API}/notifications", followers) == (
            202,
            {"recipients": 0},
        )
        # and the same calls with the key work
        for method, path, body in endpoints(room, user, other)[:-1]:
            status, reply = await http.call(method, path, body)
            assert status in (200, 201, 202, 204), (method, path, status, reply)
    assert await client.call("ping") == {}  # the refused disconnect did not close it
    await client.close()


async def test_the_bearer_scheme_is_case_insensitive(server: ServerProcess) -> None:
    async with Http(server) as http:
        status, _ = await http.call(
            "GET",
            f"{API}/rooms/{unique('swap:')}/members",
            key=None,
            headers={"Authorization": f"bearer {SERVICE_KEY}"},
        )
        assert status == 200


# Bodies -----------------------------------------------------------------------------------


async def test_bad_json_and_non_object_bodies_are_bad_requests(server: ServerProcess) -> None:
    room, user = unique("swap:"), unique("u")
    posts = [
        f"{API}/rooms/{room}/messages",
        f"{API}/notifications",
        f"{API}/users/{user}/notifications/read",
        f"{API}/users/{user}/disconnect",
    ]
    bad = [b"{not json", b'{"body": 1', b"\xff\xfe", b"[1, 2]", b'"text"', b"3", b"null", b"true"]
    async with Http(server) as http:
        for path in posts:
            for raw in bad:
                assert_error(await http.call("POST", path, raw=raw), 400, "bad_request")
        # a body is required where the contract has required fields
        for path in posts[:3]:
            assert_error(await http.call("POST", path, raw=b""), 400, "bad_request")
        status, page = await http.call("GET", f"{API}/rooms/{room}/messages")
        assert status == 200 and page["messages"] == []


async def test_a_request_body_over_max_request_bytes_is_413(server: ServerProcess) -> None:
    room, user = unique("swap:"), unique("u")
    huge = b'{"body": "' + b"x" * MAX_REQUEST_BYTES + b'"}'
    async with Http(server) as http:
        for path in (
            f"{API}/rooms/{room}/messages",
            f"{API}/notifications",
            f"{API}/users/{user}/notifications/read",
        ):
            assert_error(await http.call("POST", path, raw=huge), 413, "too_large")
        status, page = await http.call("GET", f"{API}/rooms/{room}/messages")
        assert status == 200 and page["messages"] == []


async def test_message_body_over_the_namespace_limit_is_413(server: ServerProcess) -> None:
    room = unique("swap:")
    async with Http(server) as http:
        # the limit is on the body's JSON: a string of n characters is n + 2 bytes
        too_big = {"body": "x" * (MAX_BODY_BYTES - 1)}
        assert_error(
            await http.call("POST", f"{API}/rooms/{room}/messages", too_big), 413, "too_large"
        )
        just_fits = {"body": "x" * (MAX_BODY_BYTES - 2)}
        status, reply = await http.call("POST", f"{API}/rooms/{room}/messages", just_fits)
        assert (status, reply["seq"]) == (201, 1)  # the refused one took no seq
        too_big_data = {"to": [unique("u")], "type": "t", "data": "x" * MAX_BODY_BYTES}
        assert_error(
            await http.call("POST", f"{API}/notifications", too_big_data), 413, "too_large"
        )


# Room and user names --------------------------------------------------------------------


async def test_unknown_namespace_is_404_on_every_room_endpoint(server: ServerProcess) -> None:
    room, user = "nowhere:1", unique("u")
    async with Http(server) as http:
        for method, path, body in endpoints(room, user, unique("t"))[:6]:
            assert_error(await http.call(method, path, body), 404, "not_found")


async def test_bad_room_names_are_400_on_every_room_endpoint(server: ServerProcess) -> None:
    user = unique("u")
    async with Http(server) as http:
        for room in BAD_ROOMS:
            for method, path, body in endpoints(room, user, unique("t"))[:6]:
                assert_error(await http.call(method, path, body), 400, "bad_request")


async def test_bad_user_ids_are_400(server: ServerProcess) -> None:
    room, good = unique("swap:"), unique("u")
    async with Http(server) as http:
        for bad in BAD_USERS:
            calls: list[tuple[str, str, Any]] = [
                ("PUT", f"{API}/rooms/{room}/members/{bad}", None),
                ("DELETE", f"{API}/rooms/{room}/members/{bad}", None),
                ("PUT", f"{API}/users/{bad}/following/{good}", None),
                ("PUT", f"{API}/users/{good}/following/{bad}", None),
                ("DELETE", f"{API}/users/{bad}/following/{good}", None),
                ("DELETE", f"{API}/users/{good}/following/{bad}", None),
                ("GET", f"{API}/users/{bad}/notifications", None),
                ("POST", f"{API}/users/{bad}/notifications/read", {"up_to": 1}),
                ("POST", f"{API}/users/{bad}/disconnect", {}),
            ]
            for method, path, body in calls:
                assert_error(await http.call(method, path, body), 400, "bad_request")
        assert await http.call("GET", f"{API}/rooms/{room}/members") == (200, {"users": []})


async def test_unknown_api_path_is_a_json_404(server: ServerProcess) -> None:
    async with Http(server) as http:
        assert_error(await http.call("GET", f"{API}/nothing/here"), 404, "not_found")
        status, body = await http.call("PATCH", f"{API}/rooms/swap:1/messages", {})
        assert status == 405 and isinstance(body["error"]["code"], str)


# POST /rooms/{room}/messages ------------------------------------------------------------


async def test_post_message_stores_pushes_and_answers_201(server: ServerProcess) -> None:
    room, member = unique("swap:"), unique("m")
    async with Http(server) as http:
        assert (await http.call("PUT", f"{API}/rooms/{room}/members/{member}"))[0] == 204
        client = await Client.connected(server.ws_url, server.token(member), rooms=[room])
        before = int(time.time() * 1000)
        status, first = await http.call("POST", f"{API}/rooms/{room}/messages", {"body": {"a": 1}})
        after = int(time.time() * 1000)
        assert status == 201
        assert set(first) >= {"room", "seq", "ts"}
        assert (first["room"], first["seq"]) == (room, 1)
        assert before - 1000 <= first["ts"] <= after + 1000
        status, second = await http.call(
            "POST",
            f"{API}/rooms/{room}/messages",
            {"body": [1, "two", None], "user": "backend", "client_id": "c-1"},
        )
        assert (status, second["seq"]) == (201, 2)
        status, third = await http.call("POST", f"{API}/rooms/{room}/messages", {"body": None})
        assert (status, third["seq"]) == (201, 3)  # null is a JSON value like any other
        pushes = await client.pushes_of("message", 3)
        assert pushes[0] == {
            "push": "message",
            "room": room,
            "seq": 1,
            "user": None,
            "body": {"a": 1},
            "ts": first["ts"],
        }
        assert pushes[1]["user"] == "backend" and pushes[1]["client_id"] == "c-1"
        assert pushes[1]["body"] == [1, "two", None]
        assert pushes[2]["body"] is None and pushes[2]["seq"] == 3
        await client.no_push("message")
        await client.close()


async def test_post_message_is_idempotent_by_client_id(server: ServerProcess) -> None:
    room = unique("swap:")
    path = f"{API}/rooms/{room}/messages"
    async with Http(server) as http:
        status, first = await http.call("POST", path, {"body": 1, "user": "bot", "client_id": "k"})
        assert status == 201
        status, again = await http.call("POST", path, {"body": 2, "user": "bot", "client_id": "k"})
        assert status == 201 and again["seq"] == first["seq"] and again.get("duplicate") is True
        status, other_user = await http.call(
            "POST", path, {"body": 3, "user": "bot2", "client_id": "k"}
        )
        assert status == 201 and other_user["seq"] == first["seq"] + 1
        status, system = await http.call("POST", path, {"body": 4, "client_id": "k"})
        assert status == 201 and system.get("duplicate") is not True
        status, system_again = await http.call("POST", path, {"body": 5, "client_id": "k"})
        assert status == 201 and system_again.get("duplicate") is True
        assert system_again["seq"] == system["seq"] == first["seq"] + 2
        assert first.get("duplicate") is not True
        status, page = await http.call("GET", path)
        assert status == 200 and [m["body"] for m in page["messages"]] == [1, 3, 4]


async def test_post_message_validates_its_fields(server: ServerProcess) -> None:
    room = unique("swap:")
    path = f"{API}/rooms/{room}/messages"
    async with Http(server) as http:
        for body in (
            {},  # no body
            {"text": "hi"},
            {"body": 1, "user": "bad user"},
            {"body": 1, "user": 7},
            {"body": 1, "user": ""},
            {"body": 1, "client_id": "c" * 65},
            {"body": 1, "client_id": 5},
            {"body": 1, "client_id": ""},
        ):
            assert_error(await http.call("POST", path, body), 400, "bad_request")
        status, reply = await http.call("POST", path, {"body": 1, "client_id": "c" * 64})
        assert (status, reply["seq"]) == (201, 1)


# GET /rooms/{room}/messages -------------------------------------------------------------


async def test_get_messages_pages_like_history(server: ServerProcess) -> None:
    room, member = unique("swap:"), unique("m")
    path = f"{API}/rooms/{room}/messages"
    async with Http(server) as http:
        for i in range(1, 8):
            await http.call("POST", path, {"body": i, "user": member, "client_id": f"c{i}"})

        async def page(query: str) -> tuple[list[int], bool]:
            status, body = await http.call("GET", f"{path}?{query}")
            assert status == 200, body
            assert set(body) >= {"messages", "more", "epoch"}
            return [m["seq"] for m in body["messages"]], body["more"]

        assert await page("") == ([1, 2, 3, 4, 5, 6, 7], False)
        assert await page("limit=3") == ([5, 6, 7], True)
        assert await page("before=5&limit=3") == ([2, 3, 4], True)
        assert await page("before=2&limit=3") == ([1], False)
        assert await page("before=1") == ([], False)
        assert await page("after=4&limit=2") == ([5, 6], True)
        assert await page("after=5&limit=10") == ([6, 7], False)
        assert await page("after=0&limit=7") == ([1, 2, 3, 4, 5, 6, 7], False)
        assert await page("after=7") == ([], False)
        assert await page("limit=1000") == ([1, 2, 3, 4, 5, 6, 7], False)  # capped, not refused
        status, body = await http.call("GET", f"{path}?after=5&limit=1")
        assert body["messages"] == [
            {
                "room": room,
                "seq": 6,
                "user": member,
                "body": 6,
                "ts": body["messages"][0]["ts"],
                "client_id": "c6",
            }
        ]
        # the same epoch the history op and join give
        client = await Client.connected(server.ws_url, server.token(member))
        await http.call("PUT", f"{API}/rooms/{room}/members/{member}")
        joined = await client.call("join", room=room)
        assert isinstance(body["epoch"], str) and body["epoch"]
        assert (
            body["epoch"] == joined["epoch"] == (await client.call("history", room=room))["epoch"]
        )
        assert joined["seq"] == 7
        await client.close()
        for query in (
            "before=3&after=1",
            "limit=0",
            "limit=-1",
            "limit=abc",
            "before=0",
            "after=-1",
            "before=x",
            "after=1.5",
        ):
            assert_error(await http.call("GET", f"{path}?{query}"), 400, "bad_request")
        # a room nobody wrote to is empty
        status, empty = await http.call("GET", f"{API}/rooms/{unique('swap:')}/messages")
        assert status == 200 and (empty["messages"], empty["more"]) == ([], False)


async def test_get_messages_default_limit_is_50_and_the_cap_is_200(
    server: ServerProcess,
) -> None:
    room = unique("swap:")
    path = f"{API}/rooms/{room}/messages"
    async with Http(server) as http:
        for start in range(0, 210, 30):
            replies = await asyncio.gather(
                *(http.call("POST", path, {"body": i}) for i in range(start, start + 30))
            )
            assert all(status == 201 for status, _ in replies)
        status, latest = await http.call("GET", path)
        assert status == 200
        assert [m["seq"] for m in latest["messages"]] == list(range(161, 211))
        assert latest["more"] is True
        status, capped = await http.call("GET", f"{path}?after=0&limit=500")
        assert status == 200
        assert [m["seq"] for m in capped["messages"]] == list(range(1, 201))
        assert capped["more"] is True


# Members, presence, follows -------------------------------------------------------------


async def test_members_put_get_delete(server: ServerProcess) -> None:
    room = unique("swap:")
    alice, bob = "a" + unique("alice"), "b" + unique("bob")
    async with Http(server) as http:
        for user in (bob, alice, bob):  # a repeated PUT is fine
            status, body = await http.call("PUT", f"{API}/rooms/{room}/members/{user}")
            assert (status, body) == (204, None)
        status, members = await http.call("GET", f"{API}/rooms/{room}/members")
        assert status == 200 and sorted(members["users"]) == [alice, bob]
        assert len(members["users"]) == 2
        # membership lets bob join and send over WS
        client = await Client.connected(server.ws_url, server.token(bob))
        await client.call("join", room=room)
        assert (await client.call("send", room=room, body="hi"))["seq"] == 1
        assert await http.call("DELETE", f"{API}/rooms/{room}/members/{bob}") == (204, None)
        assert (await client.push("left"))["room"] == room
        assert await http.call("DELETE", f"{API}/rooms/{room}/members/{bob}") == (204, None)
        assert await http.call("GET", f"{API}/rooms/{room}/members") == (200, {"users": [alice]})
        with pytest.raises(CommandFailed) as refused:
            await client.call("join", room=room)
        assert refused.value.code == "forbidden"
        await client.close()
        status, other = await http.call("GET", f"{API}/rooms/{unique('swap:')}/members")
        assert (status, other) == (200, {"users": []})


async def test_presence_lists_who_is_in_the_room(server: ServerProcess) -> None:
    room, alice, bob = unique("swap:"), unique("alice"), unique("bob")
    async with Http(server) as http:
        for user in (alice, bob):
            await http.call("PUT", f"{API}/rooms/{room}/members/{user}")
        assert await http.call("GET", f"{API}/rooms/{room}/presence") == (200, {"users": []})
        a = await Client.connected(server.ws_url, server.token(alice), rooms=[room])
        b = await Client.connected(server.ws_url, server.token(bob), rooms=[room])
        status, body = await http.call("GET", f"{API}/rooms/{room}/presence")
        assert status == 200 and sorted(body["users"]) == sorted([alice, bob])
        await b.call("leave", room=room)
        assert await http.call("GET", f"{API}/rooms/{room}/presence") == (200, {"users": [alice]})
        await close_all(a, b)


async def test_follow_and_unfollow_answer_204_and_change_who_may_join(
    server: ServerProcess,
) -> None:
    star, fan = unique("star"), unique("fan")
    room = f"followers:{star}"
    client = await Client.connected(server.ws_url, server.token(fan))
    async with Http(server) as http:
        with pytest.raises(CommandFailed):
            await client.call("join", room=room)
        for _ in range(2):  # idempotent
            assert await http.call("PUT", f"{API}/users/{fan}/following/{star}") == (204, None)
        await client.push("joined")
        assert (await client.call("join", room=room))["room"] == room
        for _ in range(2):
            assert await http.call("DELETE", f"{API}/users/{fan}/following/{star}") == (204, None)
        await client.push("left")
        with pytest.raises(CommandFailed) as refused:
            await client.call("join", room=room)
        assert refused.value.code == "forbidden"
    await client.close()


# POST /notifications validation ---------------------------------------------------------


async def test_notification_post_validation(server: ServerProcess) -> None:
    user = unique("u")
    path = f"{API}/notifications"
    async with Http(server) as http:
        for body in (
            {},
            {"type": "like", "data": {}},  # neither to nor followers_of
            {"to": [user], "followers_of": user, "type": "like"},  # both
            {"to": user, "type": "like"},  # not a list
            {"to": ["bad user"], "type": "like"},
            {"to": [user, 7], "type": "like"},
            {"followers_of": [user], "type": "like"},
            {"followers_of": "bad user", "type": "like"},
            {"to": [user]},  # no type
            {"to": [user], "type": None},
            {"to": [user], "type": 5},
            {"to": [user], "type": ""},
            {"to": [user], "type": ["like"]},
            {"to": [user], "type": "like", "actor": "bad actor"},
            {"to": [user], "type": "like", "actor": 3},
        ):
            assert_error(await http.call("POST", path, body), 400, "bad_request")
        status, stored = await http.call("GET", f"{API}/users/{user}/notifications")
        assert status == 200 and stored["items"] == []
        status, ok = await http.call("POST", path, {"to": [user], "type": "like"})
        assert (status, ok) == (202, {"recipients": 1})


# OpenAPI, health, readiness, metrics -----------------------------------------------------

CONTRACT_API = {
    ("post", "/api/v1/rooms/{}/messages"),
    ("get", "/api/v1/rooms/{}/messages"),
    ("put", "/api/v1/rooms/{}/members/{}"),
    ("delete", "/api/v1/rooms/{}/members/{}"),
    ("get", "/api/v1/rooms/{}/members"),
    ("get", "/api/v1/rooms/{}/presence"),
    ("put", "/api/v1/users/{}/following/{}"),
    ("delete", "/api/v1/users/{}/following/{}"),
    ("post", "/api/v1/notifications"),
    ("get", "/api/v1/users/{}/notifications"),
    ("post", "/api/v1/users/{}/disconnect"),
}
CONTRACT_OPERATIONS = {("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics")}


async def _operations(server: ServerProcess) -> set[tuple[str, str]]:
    async with Http(server) as http:
        status, headers, raw = await http.full("GET", f"{API}/openapi.json", key=None)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    document = json.loads(raw)  # the standard parser: plain, valid JSON
    assert isinstance(document["openapi"], str) and document["openapi"].startswith("3.")
    assert isinstance(document["paths"], dict)
    return {
        (method, re.sub(r"\{[^}]+\}", "{}", path))
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch"}
    }


async def test_openapi_document_covers_every_api_path(server: ServerProcess) -> None:
    operations = await _operations(server)
    assert operations >= CONTRACT_API, CONTRACT_API - operations


async def test_openapi_document_covers_health_readiness_and_metrics(
    server: ServerProcess,
) -> None:
    operations = await _operations(server)
    assert operations >= CONTRACT_OPERATIONS, CONTRACT_OPERATIONS - operations


async def test_healthz_and_readyz(server: ServerProcess) -> None:
    async with Http(server) as http:
        assert await http.call("GET", "/healthz", key=None) == (
            200,
            {"status": "ok", "instance": "server"},
        )
        status, ready = await http.call("GET", "/readyz", key=None)
        assert (status, ready) == (
            200,
            {"ready": True, "checks": {"storage": "ok", "broker": "ok"}},
        )


async def test_metrics_are_prometheus_text_and_counters_move(server: ServerProcess) -> None:
    room, user = unique("swap:"), unique("u")
    async with Http(server) as http:

        async def scrape() -> str:
            status, headers, raw = await http.full("GET", "/metrics", key=None)
            assert status == 200
            assert headers["Content-Type"].startswith("text/plain")
            # the Prometheus text format, 0.0.4 or its UTF-8 successor 1.0.0
            assert re.search(r"version=(0\.0\.4|1\.0\.0)", headers["Content-Type"])
            text = raw.decode()
            assert re.search(r"^# HELP realtime_\w+ \S", text, re.MULTILINE)
            assert re.search(r"^# TYPE realtime_\w+ counter$", text, re.MULTILINE)
            assert re.search(r"^# TYPE realtime_\w+ gauge$", text, re.MULTILINE)
            return text

        before = await scrape()
        await http.call("PUT", f"{API}/rooms/{room}/members/{user}")
        client = await Client.connected(server.ws_url, server.token(user), rooms=[room])
        for i in range(3):
            await client.call("send", room=room, body=i)
        await http.call("POST", f"{API}/rooms/{room}/messages", {"body": "rest"})
        await http.call("POST", f"{API}/notifications", {"to": [user, unique("v")], "type": "t"})
        during = await scrape()
        await client.close()
        await asyncio.sleep(0.2)
        after = await scrape()

    def moved(name: str, text: str = during, **labels: str) -> float:
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert moved("realtime_messages_stored_total") == 4
    assert moved("realtime_notifications_stored_total") == 2
    assert moved("realtime_connects_total") == 1
    assert moved("realtime_commands_total", op="send", result="ok") == 3
    assert moved("realtime_connections") == 1
    assert moved("realtime_connections", after) == 0
    assert moved("realtime_command_seconds_count", op="send") == 3
