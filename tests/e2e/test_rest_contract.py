"""The REST API does what its OpenAPI document says, over real HTTP.

Each test asks the server and reads the document it serves: every status answered is
documented for that operation, the rules across fields are in the schemas (``oneOf``,
``not``), the bounds the server enforces are the ones documented, and a request
aiohttp cannot parse is one log line. ``test_openapi_fuzz.py`` has a fuzzer look
for any other disagreement.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from protocol import ErrorCode
from protocol.commands import MAX_CLIENT_ID, MAX_ID
from protocol.rooms import MAX_ROOM_LENGTH, ROOM_PATTERN
from realtime.auth import USER_ID
from tests.e2e.helpers_auth import running, server_process
from tests.e2e.support import assert_error
from tests.server import Http, ServerProcess, unique

API = "/api/v1"
MAX_BODY_BYTES = 65536  # namespaces.*.max_body_bytes default


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = server_process(tmp_path_factory, "contract")
    with running(process):
        yield process


@pytest.fixture(scope="module")
def document(server: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url}{API}/openapi.json", timeout=30) as response:
        found: dict[str, Any] = orjson.loads(response.read())
    return found


def operation(document: dict[str, Any], method: str, template: str) -> dict[str, Any]:
    found: dict[str, Any] = document["paths"][template][method.lower()]
    return found


def component(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"][name]
    return found


def parameter(document: dict[str, Any], method: str, template: str, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        p for p in operation(document, method, template)["parameters"] if p["name"] == name
    ]
    (one,) = found
    return one


# Every status answered is documented ----------------------------------------------------


def calls(room: str, user: str) -> list[tuple[str, str, str, Any, int]]:
    """(method, path template, path, body, the status the server answers)."""
    other = unique("t")
    nowhere = "nowhere:1"
    return [
        ("POST", "/rooms/{room}/messages", f"/rooms/{nowhere}/messages", {"body": 1}, 404),
        ("GET", "/rooms/{room}/messages", f"/rooms/{nowhere}/messages", None, 404),
        ("PUT", "/rooms/{room}/members/{user}", f"/rooms/{nowhere}/members/{user}", None, 404),
        ("DELETE", "/rooms/{room}/members/{user}", f"/rooms/{nowhere}/members/{user}", None, 404),
        ("GET", "/rooms/{room}/members", f"/rooms/{nowhere}/members", None, 404),
        ("GET", "/rooms/{room}/presence", f"/rooms/{nowhere}/presence", None, 404),
        ("GET", "/rooms/{room}/presence", "/rooms/swap:a%20b/presence", None, 400),
        ("POST", "/rooms/{room}/messages", f"/rooms/{room}/messages", {"body": 1}, 201),
        (
            "POST",
            "/rooms/{room}/messages",
            f"/rooms/{room}/messages",
            {"body": "x" * MAX_BODY_BYTES},
            413,
        ),
        ("PUT", "/users/{user}/following/{target}", f"/users/{user}/following/{user}", None, 403),
        ("PUT", "/users/{user}/following/{target}", f"/users/{user}/following/{other}", None, 204),
        ("POST", "/notifications", "/notifications", {"to": [user], "type": "t"}, 202),
        (
            "POST",
            "/notifications",
            "/notifications",
            {"to": [user], "followers_of": other, "type": "t"},
            400,
        ),
        ("POST", "/users/{user}/notifications/read", f"/users/{user}/notifications/read", {}, 400),
        (
            "PUT",
            "/users/{user}/notifications/{id}/read",
            f"/users/{user}/notifications/7/read",
            None,
            404,
        ),
        (
            "PUT",
            "/users/{user}/notifications/{id}/read",
            f"/users/{user}/notifications/0/read",
            None,
            400,
        ),
        (
            "POST",
            "/users/{user}/notifications/read_all",
            f"/users/{user}/notifications/read_all",
            None,
            200,
        ),
        ("POST", "/users/{user}/notifications/seen", f"/users/{user}/notifications/seen", {}, 400),
        (
            "POST",
            "/users/{user}/notifications/archive",
            f"/users/{user}/notifications/archive",
            {"ids": [1]},
            200,
        ),
        ("GET", "/users/{user}/preferences", f"/users/{user}/preferences", None, 200),
        ("PUT", "/users/{user}/preferences", f"/users/{user}/preferences", {"mute": True}, 200),
        (
            "PUT",
            "/users/{user}/preferences",
            f"/users/{user}/preferences",
            {"timezone": "Nowhere"},
            400,
        ),
        ("POST", "/notifications", "/notifications", {"to": [user], "type": "not_declared"}, 400),
        ("POST", "/users/{user}/disconnect", f"/users/{user}/disconnect", None, 204),
    ]


async def test_every_status_the_api_answers_is_documented_for_its_operation(
    server: ServerProcess, document: dict[str, Any]
) -> None:
    async with Http(server) as http:
        for method, template, path, body, expected in calls(unique("swap:"), unique("u")):
            status, reply = await http.call(method, API + path, body)
            assert status == expected, (method, path, reply)
            responses = operation(document, method, API + template)["responses"]
            assert str(status) in responses, (method, template, status, sorted(responses))


async def test_a_user_following_themselves_is_forbidden(server: ServerProcess) -> None:
    user = unique("u")
    async with Http(server) as http:
        reply = await http.call("PUT", f"{API}/users/{user}/following/{user}")
    assert_error(reply, 403, "forbidden")


async def test_a_405_says_which_methods_the_path_takes(
    server: ServerProcess, document: dict[str, Any]
) -> None:
    room, user, other = unique("swap:"), unique("u"), unique("t")
    async with Http(server) as http:
        for template, item in document["paths"].items():
            path = template.format(room=room, user=user, target=other, id=1)
            status, headers, raw = await http.full("TRACE", path)
            assert status == 405, (template, raw)
            documented = {method.upper() for method in item}
            allowed = {method.strip() for method in headers["Allow"].split(",")}
            assert allowed - {"HEAD"} == documented, (template, headers["Allow"])
            if template.startswith(API):
                assert orjson.loads(raw)["error"]["code"] == "bad_request"


# Rules across fields ---------------------------------------------------------------------


def branches(schema: dict[str, Any]) -> list[list[str]]:
    return [branch["required"] for branch in schema["oneOf"]]


async def test_exactly_one_of_to_or_followers_of(
    server: ServerProcess, document: dict[str, Any]
) -> None:
    assert branches(component(document, "NotifyRequest")) == [["to"], ["followers_of"]]
    user, star = unique("u"), unique("star")
    path = f"{API}/notifications"
    bodies: list[dict[str, Any]] = [
        {"type": "t"},
        {"type": "t", "to": None, "followers_of": None},
        {"type": "t", "to": [user], "followers_of": star},
        {"type": "t", "to": [], "followers_of": None},
    ]
    async with Http(server) as http:
        for body in bodies:
            assert_error(await http.call("POST", path, body), 400, "bad_request")
        # null is absent: the other one counts
        reply = await http.call("POST", path, {"type": "t", "to": [user], "followers_of": None})
        assert reply == (202, {"recipients": 1})
        reply = await http.call("POST", path, {"type": "t", "to": None, "followers_of": star})
        assert reply == (202, {"recipients": 0})


async def test_exactly_one_of_ids_or_up_to(server: ServerProcess, document: dict[str, Any]) -> None:
    read = component(document, "ReadRequest")
    assert branches(read) == [["ids"], ["up_to"]]
    assert read["properties"]["ids"]["minItems"] == 1
    user = unique("u")
    path = f"{API}/users/{user}/notifications/read"
    bodies: list[dict[str, Any]] = [
        {"ids": [], "up_to": None},  # marked nothing, and answered 200
        {"ids": []},
        {"ids": [1], "up_to": 1},
        {"ids": None, "up_to": None},
        {},
    ]
    async with Http(server) as http:
        for body in bodies:
            assert_error(await http.call("POST", path, body), 400, "bad_request")
        assert await http.call("POST", path, {"ids": None, "up_to": 3}) == (
            200,
            {"unread_count": 0},
        )
        assert await http.call("POST", path, {"ids": [1, 2]}) == (200, {"unread_count": 0})


async def test_before_and_after_are_documented_and_refused_together(
    server: ServerProcess, document: dict[str, Any]
) -> None:
    page = parameter(document, "GET", f"{API}/rooms/{{room}}/messages", "page")
    assert (page["in"], page["style"], page["explode"]) == ("query", "form", True)
    assert sorted(page["schema"]["not"]["required"]) == ["after", "before"]
    assert set(page["schema"]["properties"]) == {"before", "after", "limit"}
    async with Http(server) as http:
        path = f"{API}/rooms/{unique('swap:')}/messages"
        assert_error(await http.call("GET", f"{path}?before=3&after=1"), 400, "bad_request")
        for query in ("before=3", "after=1", "limit=5&after=0"):
            assert (await http.call("GET", f"{path}?{query}"))[0] == 200


# Bounds: the ones enforced, documented -----------------------------------------------------


async def test_limit_has_the_bounds_the_server_enforces(
    server: ServerProcess, document: dict[str, Any]
) -> None:
    page = parameter(document, "GET", f"{API}/rooms/{{room}}/messages", "page")
    limits = [
        page["schema"]["properties"]["limit"],
        parameter(document, "GET", f"{API}/users/{{user}}/notifications", "limit")["schema"],
    ]
    for limit in limits:
        assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, MAX_ID, 50)
    paths = [f"{API}/rooms/{unique('swap:')}/messages", f"{API}/users/{unique('u')}/notifications"]
    async with Http(server) as http:
        for path in paths:
            assert (await http.call("GET", f"{path}?limit={MAX_ID}"))[0] == 200
            for bad in (MAX_ID + 1, 0):
                assert_error(await http.call("GET", f"{path}?limit={bad}"), 400, "bad_request")


async def test_client_id_has_the_bounds_the_server_enforces(
    server: ServerProcess, document: dict[str, Any]
) -> None:
    client_id = component(document, "PublishRequest")["properties"]["client_id"]
    assert (client_id["minLength"], client_id["maxLength"]) == (1, MAX_CLIENT_ID)
    path = f"{API}/rooms/{unique('swap:')}/messages"
    async with Http(server) as http:
        for bad in ("", "c" * (MAX_CLIENT_ID + 1)):
            reply = await http.call("POST", path, {"body": 1, "client_id": bad})
            assert_error(reply, 400, "bad_request")
        status, _ = await http.call("POST", path, {"body": 1, "client_id": "c" * MAX_CLIENT_ID})
        assert status == 201


async def test_names_and_codes_are_the_servers_own(document: dict[str, Any]) -> None:
    room = parameter(document, "GET", f"{API}/rooms/{{room}}/members", "room")["schema"]
    assert (room["pattern"], room["maxLength"]) == (f"^{ROOM_PATTERN}$", MAX_ROOM_LENGTH)
    user = parameter(document, "GET", f"{API}/users/{{user}}/notifications", "user")["schema"]
    assert user["pattern"] == f"^{USER_ID.pattern}$"
    code = component(document, "ErrorDetail")["properties"]["code"]
    assert code["enum"] == [str(c) for c in ErrorCode]
    assert all(re.compile(p).pattern for p in (room["pattern"], user["pattern"]))


async def test_an_integral_number_is_an_integer_as_the_schema_says(server: ServerProcess) -> None:
    path = f"{API}/users/{unique('u')}/notifications/read"
    async with Http(server) as http:
        assert await http.call("POST", path, raw=b'{"up_to": 5.0}') == (200, {"unread_count": 0})
        assert_error(await http.call("POST", path, raw=b'{"up_to": 5.5}'), 400, "bad_request")


async def test_an_empty_query_value_is_not_a_value(server: ServerProcess) -> None:
    async with Http(server) as http:
        for path in (
            f"{API}/users/{unique('u')}/notifications?limit=",
            f"{API}/users/{unique('u')}/notifications?unread=",
            f"{API}/rooms/{unique('swap:')}/messages?after=",
        ):
            assert_error(await http.call("GET", path), 400, "bad_request")


async def test_notification_data_is_limited_in_bytes_like_message_bodies(
    server: ServerProcess,
) -> None:
    # 2 bytes a character: within the limit in characters, beyond it in bytes.
    data = "é" * (MAX_BODY_BYTES // 2)
    async with Http(server) as http:
        body = {"to": [unique("u")], "type": "t", "data": data}
        assert_error(await http.call("POST", f"{API}/notifications", body), 413, "too_large")
        room = f"{API}/rooms/{unique('swap:')}/messages"
        assert_error(await http.call("POST", room, {"body": data}), 413, "too_large")


async def test_null_is_an_absent_optional_field(server: ServerProcess) -> None:
    room, user = unique("swap:"), unique("u")
    async with Http(server) as http:
        status, sent = await http.call(
            "POST", f"{API}/rooms/{room}/messages", {"body": None, "user": None, "client_id": None}
        )
        assert (status, sent["seq"]) == (201, 1)
        status, page = await http.call("GET", f"{API}/rooms/{room}/messages")
        (message,) = page["messages"]
        assert (message["body"], message["user"], "client_id" in message) == (None, None, False)
        assert await http.call("POST", f"{API}/users/{user}/disconnect", {"reason": None}) == (
            204,
            None,
        )
        assert_error(
            await http.call("POST", f"{API}/rooms/{room}/messages", {"user": "u"}),
            400,
            "bad_request",
        )


# What aiohttp cannot parse ------------------------------------------------------------------


async def exchange(server: ServerProcess, *requests: bytes) -> bytes:
    """Send requests on one connection, reading each answer but the last, which is
    read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        async with asyncio.timeout(10):
            for request in requests[:-1]:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                length = re.search(rb"(?i)content-length: (\d+)", head)
                assert length is not None
                await reader.readexactly(int(length[1]))
            writer.write(requests[-1])
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_nul_byte_in_a_header_is_answered_400_and_logged_on_one_line(
    server: ServerProcess,
) -> None:
    good = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    bad = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Probe: a\x00b\r\n\r\n"
    # The bad request first on a connection, and after a good one (as an HTTP client
    # library reuses a connection).
    for requests in ((bad,), (good, bad)):
        before = len(server.log())
        answer = await exchange(server, *requests)
        assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:80]
        async with asyncio.timeout(10):
            while "malformed HTTP request" not in server.log()[before:]:
                await asyncio.sleep(0.05)
        logged = server.log()[before:]
        assert "Traceback" not in logged and "ERROR" not in logged, logged
        (line,) = [line for line in logged.splitlines() if "malformed HTTP request" in line]
        assert "Invalid header value char" in line
