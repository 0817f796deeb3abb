"""Input a careless or hostile client sends, over real sockets: integers beyond 64 bits,
NaN, and tokens over the size limit. Nothing a client sent is changed: it is kept
exactly or refused, and a refusal says what was wrong.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from tests.client import Client, close_all
from tests.e2e.helpers_auth import (
    UNAUTHORIZED,
    expect_close,
    running,
    server_process,
    still_open,
)
from tests.server import ServerProcess, unique

MAX_TOKEN = 16 * 1024
HUGE_INTEGERS = [
    "1180591620717411303424",  # 2**70
    "18446744073709551616",  # 2**64
    "-9223372036854775809",  # -2**63 - 1
    "123456789012345678901234567890123456789",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = server_process(tmp_path_factory, "hostile")
    with running(process):
        yield process


async def room_of(server: ServerProcess, *users: str) -> str:
    room = unique("swap:")
    for user in users:
        status, _ = await server.rest("PUT", f"/api/v1/rooms/{room}/members/{user}")
        assert status == 204
    return room


async def reply_to_raw(client: Client, frame: str | bytes, command_id: int) -> dict[str, Any]:
    """Send a frame made by hand and return the reply to ``command_id`` in it."""
    await client.send_raw(frame)
    async with asyncio.timeout(10):
        while not client.violations:
            await asyncio.sleep(0.01)
    (reply,) = client.violations
    client.violations.clear()
    assert reply["id"] == command_id, reply
    return reply


# Integers beyond 64 bits, NaN ---------------------------------------------------------------


@pytest.mark.parametrize("literal", HUGE_INTEGERS)
async def test_a_send_with_an_integer_beyond_64_bits_is_refused_not_rounded(
    server: ServerProcess, literal: str
) -> None:
    alice, bob = unique("alice"), unique("bob")
    room = await room_of(server, alice, bob)
    a = await Client.connected(server.ws_url, server.token(alice), rooms=[room])
    b = await Client.connected(server.ws_url, server.token(bob), rooms=[room])
    try:
        frame = f'{{"id":1000,"op":"send","room":"{room}","body":{{"n":{literal}}}}}'
        reply = await reply_to_raw(a, frame, 1000)
        assert reply.get("error", {}).get("code") == "bad_request", reply
        assert "64 bits" in reply["error"]["message"]
        await still_open(a)
        await b.no_push("message")
        assert (await b.call("history", room=room))["messages"] == []
    finally:
        await close_all(a, b)


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_the_64_bit_edges_and_long_digit_strings_are_kept_exactly(
    server: ServerProcess, encoding: str
) -> None:
    alice, bob = unique("alice"), unique("bob")
    room = await room_of(server, alice, bob)
    a = await Client.connected(server.ws_url, server.token(alice), rooms=[room], encoding=encoding)
    b = await Client.connected(server.ws_url, server.token(bob), rooms=[room], encoding=encoding)
    try:
        body = {"max": 2**64 - 1, "min": -(2**63), "text": "1180591620717411303424", "f": 0.1}
        await a.call("send", room=room, body=body)
        assert (await b.push("message"))["body"] == body
        (stored,) = (await b.call("history", room=room))["messages"]
        assert stored["body"] == body
        assert type(stored["body"]["max"]) is int
    finally:
        await close_all(a, b)


async def test_a_msgpack_body_with_nan_or_infinity_is_refused_not_turned_into_null(
    server: ServerProcess,
) -> None:
    alice = unique("alice")
    room = await room_of(server, alice)
    a = await Client.connected(server.ws_url, server.token(alice), rooms=[room], encoding="msgpack")
    try:
        for number in (math.nan, math.inf, -math.inf):
            frame = msgpack.packb(
                {"id": 1000, "op": "send", "room": room, "body": {"x": [1, number]}}
            )
            reply = await reply_to_raw(a, frame, 1000)
            assert reply.get("error", {}).get("code") == "bad_request", reply
            assert "NaN and infinity" in reply["error"]["message"]
        assert (await a.call("history", room=room))["messages"] == []
    finally:
        await a.close()


@pytest.mark.parametrize("literal", HUGE_INTEGERS[:2])
async def test_a_rest_publish_with_an_integer_beyond_64_bits_is_refused(
    server: ServerProcess, literal: str
) -> None:
    room = unique("swap:")
    raw = f'{{"body":{{"n":{literal}}},"user":"alice"}}'.encode()
    status, reply = await server.rest("POST", f"/api/v1/rooms/{room}/messages", raw=raw)
    assert (status, reply["error"]["code"]) == (400, "bad_request"), reply
    assert "64 bits" in reply["error"]["message"]
    status, history = await server.rest("GET", f"/api/v1/rooms/{room}/messages")
    assert (status, history["messages"]) == (200, [])


async def test_a_rest_notification_with_an_integer_beyond_64_bits_is_refused(
    server: ServerProcess,
) -> None:
    user = unique("u")
    client = await Client.connected(server.ws_url, server.token(user))
    try:
        raw = f'{{"to":["{user}"],"type":"like","data":{{"n":{HUGE_INTEGERS[0]}}}}}'.encode()
        status, reply = await server.rest("POST", "/api/v1/notifications", raw=raw)
        assert (status, reply["error"]["code"]) == (400, "bad_request"), reply
        assert "64 bits" in reply["error"]["message"]
        await client.no_push("notification")
        assert (await client.call("notifications"))["items"] == []
        # the largest integers that fit go through unchanged
        raw = f'{{"to":["{user}"],"type":"like","data":[{2**64 - 1},{-(2**63)}]}}'.encode()
        status, reply = await server.rest("POST", "/api/v1/notifications", raw=raw)
        assert (status, reply) == (202, {"recipients": 1})
        assert (await client.push("notification"))["data"] == [2**64 - 1, -(2**63)]
    finally:
        await client.close()


# Tokens over the size limit ------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_connect_with_a_token_over_16_kib_says_so_and_closes_4001(
    server: ServerProcess, encoding: str
) -> None:
    client = await Client.open(server.ws_url, encoding=encoding)
    try:
        reply = await client.request("connect", token="x" * (MAX_TOKEN + 1))
        assert reply.get("error", {}).get("code") == "too_large", reply
        assert reply["error"]["message"] == (
            f"connect: 'token' is {MAX_TOKEN + 1} bytes; at most {MAX_TOKEN}"
        )
        reason = await expect_close(client, UNAUTHORIZED)
        assert "16384" in reason
    finally:
        await client.close()


async def test_a_token_of_16_kib_is_checked_as_a_token(server: ServerProcess) -> None:
    client = await Client.open(server.ws_url)
    try:
        reply = await client.request("connect", token="x" * MAX_TOKEN)
        assert reply.get("error", {}).get("code") == "unauthorized", reply
        assert "malformed token" in reply["error"]["message"]
        await expect_close(client, UNAUTHORIZED)
    finally:
        await client.close()


async def test_the_limit_counts_bytes_not_characters(server: ServerProcess) -> None:
    client = await Client.open(server.ws_url)
    try:
        reply = await client.request("connect", token="é" * (MAX_TOKEN // 2 + 1))
        assert reply.get("error", {}).get("code") == "too_large", reply
        assert f"is {MAX_TOKEN + 2} bytes" in reply["error"]["message"]
        await expect_close(client, UNAUTHORIZED)
    finally:
        await client.close()


@pytest.mark.parametrize("op", ["refresh", "join"])
async def test_refresh_or_join_with_a_token_over_16_kib_is_too_large_and_keeps_the_connection(
    server: ServerProcess, op: str
) -> None:
    user = unique("u")
    client = await Client.connected(server.ws_url, server.token(user))
    try:
        args: dict[str, Any] = {"token": "x" * (MAX_TOKEN + 1)}
        if op == "join":
            args["room"] = unique("swap:")
        reply = await client.request(op, **args)
        assert reply.get("error", {}).get("code") == "too_large", reply
        assert f"at most {MAX_TOKEN}" in reply["error"]["message"]
        await still_open(client)
    finally:
        await client.close()
