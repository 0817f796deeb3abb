"""Limits over real sockets (PROTOCOL.md sections 2 and 4): body size (too_large), frame
size (4008), the rate limit (rate_limited, then 4008), slow readers (4009) without
slowing anyone else, malformed frames (4000), bad commands (bad_request, connection
kept), the origin allow-list, and server pings with the idle close.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack
import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.client import Client, CommandFailed, close_all
from tests.e2e.helpers_auth import (
    BAD_FRAME,
    LIMIT,
    TOO_SLOW,
    closed,
    decode_frame,
    encode,
    expect_close,
    raw_open,
    raw_reply,
    running,
    server_process,
    still_open,
)
from tests.e2e.support import metric
from tests.server import ServerProcess, unique

MAX_FRAME = 32768
SWAP_MAX_BODY = 1024
WIDE_MAX_BODY = 24000
SEND_BUFFER = 65536
ORIGINS = ["https://app.example.com", "https://admin.example.com"]
# timing server
RATE, BURST, STRIKES = 2.0, 5, 3
PING_INTERVAL, PING_TIMEOUT = 0.3, 1.0

LIMITS_CONFIG = f"""
[namespaces.user]
max_body_bytes = 4096

[namespaces.swap]
max_body_bytes = {SWAP_MAX_BODY}

# anyone may join and send: for the slow-reader test
[namespaces.wide]
join = "anyone"
send = "anyone"
max_body_bytes = {WIDE_MAX_BODY}
"""


@dataclass
class Servers:
    limits: ServerProcess
    timing: ServerProcess


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    limits = server_process(
        tmp_path_factory,
        "limits",
        env={
            "REALTIME_SERVER_MAX_FRAME_BYTES": str(MAX_FRAME),
            "REALTIME_SERVER_SEND_BUFFER_BYTES": str(SEND_BUFFER),
            # no degrading first (test_degrade.py has it): straight to 4009
            "REALTIME_SERVER_SEND_BUFFER_SOFT_BYTES": str(SEND_BUFFER),
            "REALTIME_SERVER_ALLOWED_ORIGINS": ",".join(ORIGINS),
            # the slow-reader test sends a few hundred commands at once
            "REALTIME_SERVER_RATE_LIMIT": "5000",
            "REALTIME_SERVER_RATE_BURST": "5000",
            # a slow reader that catches up within this still reads its close frame
            "REALTIME_SERVER_CLOSE_TIMEOUT": "10",
        },
        config_text=LIMITS_CONFIG,
    )
    timing = server_process(
        tmp_path_factory,
        "timing",
        env={
            "REALTIME_SERVER_RATE_LIMIT": str(RATE),
            "REALTIME_SERVER_RATE_BURST": str(BURST),
            "REALTIME_SERVER_RATE_LIMIT_STRIKES": str(STRIKES),
            "REALTIME_SERVER_PING_INTERVAL": str(PING_INTERVAL),
            "REALTIME_SERVER_PING_TIMEOUT": str(PING_TIMEOUT),
        },
    )
    with running(limits, timing):
        yield Servers(limits, timing)


@pytest.fixture
def limits(servers: Servers) -> ServerProcess:
    """Small frames, bodies and send buffer; an origin allow-list; a generous rate limit."""
    return servers.limits


@pytest.fixture
def timing(servers: Servers) -> ServerProcess:
    """A tight rate limit and fast pings."""
    return servers.timing


async def member_of_new_swap(server: ServerProcess, *users: str) -> str:
    room = unique("swap:")
    for user in users:
        status, _ = await server.rest("PUT", f"/api/v1/rooms/{room}/members/{user}")
        assert status == 204
    return room


# Body size ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_body_over_the_namespace_limit_is_too_large_and_nothing_is_stored(
    limits: ServerProcess, encoding: str
) -> None:
    alice, bob = unique("alice"), unique("bob")
    room = await member_of_new_swap(limits, alice, bob)
    a = await Client.connected(limits.ws_url, limits.token(alice), encoding=encoding)
    b = await Client.connected(limits.ws_url, limits.token(bob), encoding=encoding)
    await a.call("join", room=room)
    await b.call("join", room=room)
    # the limit is on the body as JSON, in bytes: '"' + 1022 x + '"' is 1024 bytes
    at_limit = "x" * (SWAP_MAX_BODY - 2)
    accepted = [at_limit, "é" * ((SWAP_MAX_BODY - 2) // 2)]
    refused = [
        "x" * (SWAP_MAX_BODY - 1),
        "é" * ((SWAP_MAX_BODY - 2) // 2 + 1),  # 1026 bytes, 513 characters
        {"text": "y" * SWAP_MAX_BODY},
        list(range(400)),
    ]
    first = await a.call("send", room=room, body=accepted[0])
    assert first["seq"] == 1
    for body in refused:
        with pytest.raises(CommandFailed) as too_large:
            await a.call("send", room=room, body=body, client_id=unique("c"))
        assert too_large.value.code == "too_large"
    second = await a.call("send", room=room, body=accepted[1])
    assert second["seq"] == 2  # nothing was stored for the refused ones
    await still_open(a)
    pushes = await b.pushes_of("message", 2)
    assert [p["body"] for p in pushes] == accepted
    await b.no_push("message")
    history = await b.call("history", room=room)
    assert [m["body"] for m in history["messages"]] == accepted
    await close_all(a, b)


# Frame size ---------------------------------------------------------------------------------


def padded_ping(encoding: str, size: int, command_id: int = 1) -> bytes | str:
    """A valid ``ping`` command of exactly ``size`` bytes (an ignored ``pad`` field)."""
    pad = 0
    while True:
        frame = encode(encoding, {"id": command_id, "op": "ping", "pad": "p" * pad})
        length = len(frame.encode() if isinstance(frame, str) else frame)
        if length == size:
            return frame
        if length > size:
            raise AssertionError(f"cannot pad to exactly {size} bytes")
        pad += size - length - 8 if size - length > 16 else 1


@pytest.mark.parametrize(
    "size",
    [MAX_FRAME - 1, MAX_FRAME],
    ids=["max-1", "max"],
)
@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_frame_up_to_max_frame_bytes_is_accepted(
    limits: ServerProcess, encoding: str, size: int
) -> None:
    ws = await raw_open(limits.ws_url, [f"rt1.{encoding}"])
    try:
        token = limits.token(unique("u"))
        await ws.send(encode(encoding, {"id": 1, "op": "connect", "token": token}))
        _, reply = await raw_reply(ws, 1)
        assert "ok" in reply, reply
        frame = padded_ping(encoding, size, command_id=2)
        await ws.send(frame)
        _, reply = await raw_reply(ws, 2)
        assert reply == {"id": 2, "ok": {}}
    finally:
        await ws.close()


@pytest.mark.parametrize(
    "case", ["json-text", "msgpack-binary", "json-fragmented", "unauthenticated"]
)
async def test_frame_over_max_frame_bytes_closes_4008(limits: ServerProcess, case: str) -> None:
    encoding = "msgpack" if case.startswith("msgpack") else "json"
    if case == "unauthenticated":
        client = await Client.open(limits.ws_url)
    else:
        client = await Client.connected(limits.ws_url, limits.token(unique("u")), encoding=encoding)
    frame = padded_ping(encoding, MAX_FRAME + 1)
    if case == "json-fragmented":
        # every fragment is small; the message crosses the limit with its last fragment
        assert isinstance(frame, str)
        head = MAX_FRAME - 100
        pieces = [frame[i : min(i + 4096, head)] for i in range(0, head, 4096)]
        pieces.append(frame[head:])
        assert "".join(pieces) == frame and max(map(len, pieces)) < MAX_FRAME
        await client.ws.send(pieces)
    else:
        await client.send_raw(frame)
    reason = await expect_close(client, LIMIT)
    assert reason


async def test_frame_limit_close_reaches_a_client_that_is_still_sending(
    limits: ServerProcess,
) -> None:
    # A fault of timing, seen in roughly one attempt of three: 20 attempts show it.
    message = "x" * (8 * MAX_FRAME)
    pieces = [message[i : i + 4096] for i in range(0, len(message), 4096)]
    for attempt in range(20):
        client = await Client.connected(limits.ws_url, limits.token(unique("u")))
        try:
            with contextlib.suppress(ConnectionClosed):
                await client.ws.send(pieces)
            code, _ = await closed(client)
            assert code == LIMIT, (attempt, code)
        finally:
            await client.close()


# Rate limit ---------------------------------------------------------------------------------


async def pipelined(client: Client, count: int, op: str = "ping") -> list[str]:
    """Send ``count`` commands without waiting; each outcome: ok, an error code, or closed."""
    replies = await asyncio.gather(
        *(client.request(op) for _ in range(count)), return_exceptions=True
    )
    outcomes = []
    for reply in replies:
        if isinstance(reply, ConnectionError):
            outcomes.append("closed")
        elif isinstance(reply, BaseException):
            raise reply
        else:
            outcomes.append("ok" if "ok" in reply else reply["error"]["code"])
    return outcomes


async def test_over_the_rate_limit_is_rate_limited_and_refusals_not_in_a_row_keep_it_open(
    timing: ServerProcess,
) -> None:
    client = await Client.connected(timing.ws_url, timing.token(unique("u")))  # one token
    outcomes = await pipelined(client, BURST + 1)
    refused = outcomes.count("rate_limited")
    # the burst, less connect: 4 pass (a fifth if a token came back meanwhile)
    assert outcomes[: BURST - 1] == ["ok"] * (BURST - 1), outcomes
    assert 1 <= refused <= STRIKES - 1, outcomes
    assert set(outcomes) <= {"ok", "rate_limited"}, outcomes
    # tokens come back at RATE per second; an accepted command resets the strikes
    await asyncio.sleep(1.5 / RATE)
    await still_open(client)
    more = await pipelined(client, STRIKES - 1)
    refused += more.count("rate_limited")
    assert refused >= STRIKES, (outcomes, more)  # more refusals than strikes, not in a row
    await asyncio.sleep(1.5 / RATE)
    await still_open(client)
    await client.close()


async def test_rate_limit_strikes_in_a_row_close_4008(timing: ServerProcess) -> None:
    client = await Client.connected(timing.ws_url, timing.token(unique("u")))
    outcomes = await pipelined(client, 12)
    passed = outcomes.count("ok")
    assert BURST - 1 <= passed <= BURST, outcomes
    assert outcomes[:passed] == ["ok"] * passed, outcomes
    assert outcomes[passed : passed + STRIKES] == ["rate_limited"] * STRIKES, outcomes
    assert outcomes[passed + STRIKES :] == ["closed"] * (12 - passed - STRIKES), outcomes
    assert await expect_close(client, LIMIT)


async def test_invalid_commands_count_against_the_rate_limit(timing: ServerProcess) -> None:
    client = await Client.connected(timing.ws_url, timing.token(unique("u")))
    try:
        outcomes = await pipelined(client, 12, op="frobnicate")
        assert "rate_limited" in outcomes, outcomes
        assert await expect_close(client, LIMIT, timeout=2)
    finally:
        await client.close()


# Slow readers -------------------------------------------------------------------------------


async def test_slow_reader_is_closed_4009_and_nobody_else_slows_down(
    limits: ServerProcess,
) -> None:
    room = unique("wide:")
    count, body = 300, "z" * 20000  # 6 MB: more than the kernel buffers hold
    fast = await Client.connected(limits.ws_url, limits.token(unique("fast")))
    fast_msgpack = await Client.connected(
        limits.ws_url, limits.token(unique("fast")), encoding="msgpack"
    )
    sender = await Client.connected(limits.ws_url, limits.token(unique("sender")))
    for client in (fast, fast_msgpack):
        await client.call("join", room=room)

    # A reader that stops reading: a small receive buffer, and websockets stops taking
    # bytes off the socket once one frame waits unread.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", limits.port))
    slow = await raw_open(limits.ws_url, ["rt1.json"], sock=sock, max_queue=1)
    try:
        await slow.send(encode("json", {"id": 1, "op": "connect", "token": limits.token("s")}))
        await raw_reply(slow, 1)
        await slow.send(encode("json", {"id": 2, "op": "join", "room": room}))
        _, joined = await raw_reply(slow, 2)
        assert joined["ok"]["room"] == room

        slow_before = await slow_consumers(limits)
        started = time.monotonic()
        sent = await asyncio.gather(
            *(sender.call("send", room=room, body=body, client_id=str(i)) for i in range(count))
        )
        assert sorted(s["seq"] for s in sent) == list(range(1, count + 1))
        for client in (fast, fast_msgpack):
            pushes = await client.pushes_of("message", count)
            assert [p["seq"] for p in pushes] == list(range(1, count + 1))
            assert all(p["body"] == body for p in pushes)
        elapsed = time.monotonic() - started
        assert elapsed < 60, f"the others took {elapsed:.1f}s"
        await fast.no_push("message")

        # The slow reader catches up: it gets a gapless prefix, then 4009.
        seqs: list[int] = []
        try:
            async with asyncio.timeout(10):
                async for frame in slow:
                    seqs += [m["seq"] for m in decode_frame(frame) if m.get("push") == "message"]
        except ConnectionClosed:
            pass
        received = slow.protocol.close_rcvd
        assert received is not None, "no close frame for the slow reader"
        assert received.code == TOO_SLOW, (received, len(seqs))
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) < count
        assert await slow_consumers(limits) == slow_before + 1
    finally:
        await slow.close()
    # the others are still fine
    await still_open(fast)
    await still_open(sender)
    await close_all(fast, fast_msgpack, sender)


async def slow_consumers(server: ServerProcess) -> float:
    status, text = await server.rest("GET", "/metrics", key=None)
    assert status == 200
    return metric(text, "realtime_slow_consumers_total")


# Malformed frames: 4000 ---------------------------------------------------------------------

# (frame, sent as text) for rt1.json
BAD_JSON_FRAMES: dict[str, tuple[bytes | str, bool]] = {
    "not-json": ("hello", True),
    "truncated": ('{"id": 1, "op": "ping"', True),
    "array": ('[{"id": 1, "op": "ping"}]', True),
    "number": ("42", True),
    "string": ('"ping"', True),
    "null": ("null", True),
    "boolean": ("true", True),
    "empty": ("", True),
    "whitespace": ("  \n ", True),
    "id-zero": ('{"id": 0, "op": "ping"}', True),
    "id-negative": ('{"id": -1, "op": "ping"}', True),
    "id-fraction": ('{"id": 1.5, "op": "ping"}', True),
    "id-float": ('{"id": 1.0, "op": "ping"}', True),
    "id-string": ('{"id": "1", "op": "ping"}', True),
    "id-boolean": ('{"id": true, "op": "ping"}', True),
    "id-object": ('{"id": {}, "op": "ping"}', True),
    "id-2^63": ('{"id": 9223372036854775808, "op": "ping"}', True),
    "id-2^64": ('{"id": 18446744073709551616, "op": "ping"}', True),
    "neither-id-nor-op": ('{"hello": "world"}', True),
    "second-line-invalid": ('{"id": 1, "op": "ping"}\n{"id": 2,', True),
    "second-line-an-array": ('{"id": 1, "op": "ping"}\n[]', True),
    "deep-nesting": ("[" * 10000 + "]" * 10000, True),
    "invalid-utf8-text": (b'{"id": 1, "op": "ping", "x": "\xff"}', True),
    "binary-garbage": (b"\x00\x01\x02\xff", False),
}

BAD_MSGPACK_FRAMES: dict[str, bytes] = {
    "never-used-byte": b"\xc1",
    "truncated-map": msgpack.packb({"id": 1, "op": "ping"})[:-2],
    "array": msgpack.packb([{"id": 1, "op": "ping"}]),
    "integer": msgpack.packb(42),
    "nil": msgpack.packb(None),
    "string": msgpack.packb("ping"),
    "empty": b"",
    "id-zero": msgpack.packb({"id": 0, "op": "ping"}),
    "id-negative": msgpack.packb({"id": -1, "op": "ping"}),
    "id-float": msgpack.packb({"id": 1.0, "op": "ping"}),
    "id-string": msgpack.packb({"id": "1", "op": "ping"}),
    "id-boolean": msgpack.packb({"id": True, "op": "ping"}),
    "id-binary": msgpack.packb({"id": b"\x01", "op": "ping"}, use_bin_type=True),
    "id-uint64-max": msgpack.packb({"id": 2**64 - 1, "op": "ping"}),
    "neither-id-nor-op": msgpack.packb({"hello": "world"}),
    "invalid-utf8-string": b"\x81\xa2op\xa2\xff\xfe",
    "map-as-key": b"\x81\x80\x01",
    "ext-type": msgpack.packb(msgpack.ExtType(5, b"x")),
    "second-object-invalid": msgpack.packb({"id": 1, "op": "ping"}) + b"\xc1",
    "second-object-truncated": msgpack.packb({"id": 1, "op": "ping"}) + b"\x82\xa2id",
    "deep-nesting": b"\x91" * 20000 + b"\xc0",
}


@pytest.mark.parametrize("case", sorted(BAD_JSON_FRAMES))
async def test_malformed_json_frame_closes_4000(limits: ServerProcess, case: str) -> None:
    frame, text = BAD_JSON_FRAMES[case]
    client = await Client.connected(limits.ws_url, limits.token(unique("u")))
    await client.ws.send(frame, text=text)
    assert await expect_close(client, BAD_FRAME)
    assert client.violations == []


@pytest.mark.parametrize("case", sorted(BAD_MSGPACK_FRAMES))
async def test_malformed_msgpack_frame_closes_4000(limits: ServerProcess, case: str) -> None:
    client = await Client.connected(limits.ws_url, limits.token(unique("u")), encoding="msgpack")
    await client.ws.send(BAD_MSGPACK_FRAMES[case], text=False)
    assert await expect_close(client, BAD_FRAME)
    assert client.violations == []


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_malformed_frame_before_connect_closes_4000(
    limits: ServerProcess, encoding: str
) -> None:
    client = await Client.open(limits.ws_url, encoding=encoding)
    frame = "[]" if encoding == "json" else msgpack.packb([])
    await client.send_raw(frame)
    assert await expect_close(client, BAD_FRAME)


# Bad commands: bad_request, the connection stays -----------------------------------------------

BAD_COMMANDS: dict[str, dict[str, Any]] = {
    "unknown-op": {"op": "frobnicate"},
    "op-not-a-string": {"op": 5},
    "op-missing": {},
    "join-without-room": {"op": "join"},
    "join-bad-room-name": {"op": "join", "room": "Not A Room"},
    "join-empty-key": {"op": "join", "room": "swap:"},
    "join-key-too-long": {"op": "join", "room": "swap:" + "k" * 129},
    "join-room-not-a-string": {"op": "join", "room": 17},
    "join-negative-since": {"op": "join", "room": "swap:1", "since": -1},
    "join-since-a-string": {"op": "join", "room": "swap:1", "since": "3"},
    "join-epoch-a-number": {"op": "join", "room": "swap:1", "since": 0, "epoch": 7},
    "leave-without-room": {"op": "leave"},
    "send-without-body": {"op": "send", "room": "swap:1"},
    "send-without-room": {"op": "send", "body": "hi"},
    "send-client-id-too-long": {"op": "send", "room": "swap:1", "body": 1, "client_id": "c" * 65},
    "send-client-id-a-number": {"op": "send", "room": "swap:1", "body": 1, "client_id": 5},
    "typing-active-not-a-bool": {"op": "typing", "room": "swap:1", "active": "yes"},
    "typing-without-active": {"op": "typing", "room": "swap:1"},
    "history-before-and-after": {"op": "history", "room": "swap:1", "before": 5, "after": 1},
    "history-limit-zero": {"op": "history", "room": "swap:1", "limit": 0},
    "history-limit-a-string": {"op": "history", "room": "swap:1", "limit": "10"},
    "history-before-zero": {"op": "history", "room": "swap:1", "before": 0},
    "history-after-negative": {"op": "history", "room": "swap:1", "after": -1},
    "read-without-seq": {"op": "read", "room": "swap:1"},
    "read-negative-seq": {"op": "read", "room": "swap:1", "seq": -1},
    "presence-without-room": {"op": "presence"},
    "notifications-unread-not-a-bool": {"op": "notifications", "unread": "no"},
    "notifications-read-neither": {"op": "notifications.read"},
    "notifications-read-both": {"op": "notifications.read", "ids": [1], "up_to": 1},
    "notifications-read-ids-not-a-list": {"op": "notifications.read", "ids": "1"},
    "notifications-read-id-zero": {"op": "notifications.read", "ids": [0]},
    "refresh-without-token": {"op": "refresh"},
    "refresh-token-a-number": {"op": "refresh", "token": 5},
    "connect-rooms-not-a-list": {"op": "connect", "rooms": "swap:1"},
    "connect-rooms-entry-a-number": {"op": "connect", "rooms": [5]},
}


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
async def test_bad_command_is_bad_request_and_the_connection_stays(
    limits: ServerProcess, case: str, encoding: str
) -> None:
    client = await Client.connected(limits.ws_url, limits.token(unique("u")), encoding=encoding)
    reply = await raw_command(client, BAD_COMMANDS[case])
    assert "ok" not in reply, reply
    assert reply["error"]["code"] == "bad_request", reply
    assert reply["error"]["message"]
    await still_open(client)
    await client.close()


async def raw_command(client: Client, message: dict[str, Any]) -> dict[str, Any]:
    """Send a hand-made command (``op`` may be missing or not a string) and get its reply.

    Its id is not one ``Client`` handed out, so the reply lands in ``violations``.
    """
    command_id = 1000
    await client.send_raw(client.encode({"id": command_id, **message}))
    async with asyncio.timeout(10):
        while not client.violations:
            await asyncio.sleep(0.01)
    (reply,) = client.violations
    client.violations.clear()
    assert reply["id"] == command_id, reply
    return reply


async def test_bad_commands_without_id_get_no_answer_and_the_connection_stays(
    limits: ServerProcess,
) -> None:
    client = await Client.connected(limits.ws_url, limits.token(unique("u")))
    for message in BAD_COMMANDS.values():
        if isinstance(message.get("op"), str):  # else, without an id, it is no message at all
            await client.send_raw(encode("json", message))
    await still_open(client)
    await client.no_push()
    await client.close()  # asserts that no reply matched no command


# Origin allow-list --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://example.com",
        "null",
    ],
)
async def test_origin_not_listed_gets_403(limits: ServerProcess, origin: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await raw_open(limits.ws_url, ["rt1.json"], origin=origin)
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("origin", [*ORIGINS, None])
async def test_listed_origin_or_none_is_accepted(limits: ServerProcess, origin: str | None) -> None:
    headers = {"Origin": origin} if origin else None
    user = unique("u")
    client = await Client.connected(limits.ws_url, limits.token(user), headers=headers)
    assert client.session["user"] == user
    await client.close()


# Pings ----------------------------------------------------------------------------------------


async def test_server_pings_keep_answering_clients_and_close_silent_ones(
    timing: ServerProcess,
) -> None:
    # The answering peer must outlive the timeout; the silent one is closed well
    # within this generous bound (a busy machine delays the close, never hastens it).
    window = PING_TIMEOUT + 4 * PING_INTERVAL
    close_within = 10 * PING_TIMEOUT

    async def peer(answer: bool) -> tuple[int, float | None, int | None]:
        """(pings seen, seconds from connect to the server's close or None, close code)"""
        wait = window if answer else close_within
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                timing.ws_url, protocols=("rt1.json",), autoping=False, autoclose=False
            ) as ws,
        ):
            await ws.send_str(orjson.dumps({"id": 1, "op": "connect", "token": token()}).decode())
            reply = orjson.loads((await ws.receive(timeout=10)).data)
            assert reply["ok"]["ping_interval"] == PING_INTERVAL
            start = time.monotonic()
            pings = 0
            while (left := wait - (time.monotonic() - start)) > 0:
                try:
                    message = await ws.receive(timeout=left)
                except TimeoutError:
                    break
                if message.type is aiohttp.WSMsgType.PING:
                    pings += 1
                    if answer:
                        await ws.pong(message.data)
                elif message.type is aiohttp.WSMsgType.CLOSE:
                    return pings, time.monotonic() - start, int(message.data)
                elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return pings, time.monotonic() - start, None
            # still open: it answers a command
            await ws.send_str('{"id": 2, "op": "ping"}')
            while True:
                message = await ws.receive(timeout=10)
                if message.type is aiohttp.WSMsgType.TEXT:
                    assert orjson.loads(message.data) == {"id": 2, "ok": {}}
                    return pings, None, None

    def token() -> str:
        return timing.token(unique("u"))

    # an ordinary websockets client answers pings by itself
    ordinary = await Client.connected(timing.ws_url, token())
    (answering, silent) = await asyncio.gather(peer(answer=True), peer(answer=False))

    pings, closed_after, _ = answering
    assert closed_after is None, f"a client answering pings was closed after {closed_after}s"
    assert 2 <= pings <= window / PING_INTERVAL + 3, pings

    pings, closed_after, code = silent
    assert closed_after is not None, "a client that never answers was not closed"
    assert code is not None, "closed without a close frame"
    assert closed_after >= PING_TIMEOUT - 0.15, closed_after
    assert pings >= 2

    await still_open(ordinary)
    await ordinary.close()
