"""Hostile and unlucky clients before a WebSocket is open, over raw sockets.

Nothing waits without a bound: an idle connection, a request line, headers or a REST
body dripped byte by byte, an upgrade cut off half-way are closed once
``server.handshake_timeout`` passes (408 when something came). A bad upgrade request
is answered (400, 414, 431) and closed. Beyond ``server.max_unauthenticated``
connections that are not authenticated WebSockets, new ones get 503 with
Retry-After, and ``/healthz`` is still answered.

Every bound checked here is a generous outer limit: the server's timeout is 1 s, a
test allows 15 s for the close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest

from tests.client import Client, close_all
from tests.e2e.helpers_auth import running, server_process
from tests.server import ServerProcess, unique

HANDSHAKE_TIMEOUT = 1.0
CLOSE_WITHIN = 15.0
CAP = 20
UPGRADE = (
    "GET /ws HTTP/1.1\r\n"
    "Host: localhost\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
)


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with a short handshake timeout."""
    process = server_process(
        tmp_path_factory,
        "short",
        env={"REALTIME_SERVER_HANDSHAKE_TIMEOUT": str(HANDSHAKE_TIMEOUT)},
    )
    with running(process):
        yield process


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Few places for connections still opening, and a long time to open."""
    process = server_process(
        tmp_path_factory,
        "capped",
        env={
            "REALTIME_SERVER_MAX_UNAUTHENTICATED": str(CAP),
            "REALTIME_SERVER_HANDSHAKE_TIMEOUT": "120",
        },
    )
    with running(process):
        yield process


class Raw:
    """One TCP connection, written and read by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: ServerProcess) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        return cls(reader, writer)

    def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def drip(self, data: bytes | str, interval: float = 0.2) -> None:
        """One byte at a time until the server stops taking them."""
        raw = data.encode() if isinstance(data, str) else data
        for i in range(len(raw)):
            if self.writer.is_closing() or self.reader.at_eof():
                return
            self.writer.write(raw[i : i + 1])
            try:
                await self.writer.drain()
            except ConnectionError:
                return
            await asyncio.sleep(interval)

    async def until_closed(self, timeout: float = CLOSE_WITHIN) -> bytes:
        """All the server sends until it closes; fails if it has not closed by ``timeout``."""
        received = b""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await self.reader.read(65536)
                except ConnectionError:
                    return received
                if not chunk:
                    return received
                received += chunk

    async def still_open(self, wait: float = 0.5) -> bool:
        try:
            async with asyncio.timeout(wait):
                chunk = await self.reader.read(1)
        except TimeoutError:
            return True
        except ConnectionError:
            return False
        return bool(chunk)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def raw(server: ServerProcess) -> AsyncIterator[Raw]:
    connection = await Raw.open(server)
    try:
        yield connection
    finally:
        await connection.close()


def status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), f"not an HTTP response: {response[:80]!r}"
    return int(response.split(b" ", 2)[1])


def error_body(response: bytes) -> dict[str, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    error: dict[str, str] = orjson.loads(body)["error"]
    return error


async def dripping(connection: Raw, data: str) -> bytes:
    """Drip ``data`` while waiting for the server to close; what the server sent."""
    drip = asyncio.create_task(connection.drip(data))
    try:
        return await connection.until_closed()
    finally:
        drip.cancel()
        await asyncio.wait([drip])


# Timeouts -------------------------------------------------------------------------------


async def test_an_idle_connection_is_closed(short: ServerProcess) -> None:
    async with raw(short) as connection:
        assert await connection.until_closed() == b""


async def test_a_request_line_dripped_is_answered_408_and_closed(short: ServerProcess) -> None:
    async with raw(short) as connection:
        response = await dripping(connection, "GET /healthz HTTP/1.1\r\n" + "x" * 200)
    assert status(response) == 408
    assert error_body(response)["code"] == "timeout"


async def test_rest_headers_dripped_are_answered_408_and_closed(short: ServerProcess) -> None:
    async with raw(short) as connection:
        connection.send("GET /healthz HTTP/1.1\r\n")
        response = await dripping(connection, "Host: localhost\r\nX-Slow: " + "y" * 200)
    assert status(response) == 408


async def test_upgrade_headers_dripped_are_answered_408_and_closed(short: ServerProcess) -> None:
    async with raw(short) as connection:
        connection.send("GET /ws HTTP/1.1\r\n")
        response = await dripping(connection, UPGRADE.partition("\r\n")[2] + "X-Slow: " + "z" * 200)
    assert status(response) == 408


async def test_an_upgrade_cut_off_then_silence_is_answered_408_and_closed(
    short: ServerProcess,
) -> None:
    async with raw(short) as connection:
        connection.send(UPGRADE)  # no blank line: the head never ends
        response = await connection.until_closed()
    assert status(response) == 408


async def test_a_rest_body_dripped_is_answered_408_and_closed(short: ServerProcess) -> None:
    body = orjson.dumps({"users": [unique("u") for _ in range(20)], "type": "x", "data": {}})
    async with raw(short) as connection:
        connection.send(
            "POST /api/v1/notifications HTTP/1.1\r\n"
            "Host: localhost\r\n"
            "Authorization: Bearer test-service-key-0123456789\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        response = await dripping(connection, body.decode())
    assert status(response) == 408


async def test_a_request_in_time_is_served_and_kept_alive(short: ServerProcess) -> None:
    """The clock stops once the head is in: a kept-alive connection serves a second
    request after the handshake timeout has passed."""
    async with raw(short) as connection:
        request = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        connection.send(request)
        first = await connection.reader.readuntil(b"}")
        assert status(first) == 200
        await asyncio.sleep(HANDSHAKE_TIMEOUT * 2)
        connection.send(request)
        second = await asyncio.wait_for(connection.reader.readuntil(b"}"), CLOSE_WITHIN)
        assert status(second) == 200


# Bad upgrade requests -------------------------------------------------------------------


async def test_a_malformed_header_line_is_answered_400(short: ServerProcess) -> None:
    async with raw(short) as connection:
        connection.send(UPGRADE + "this is not a header\r\n\r\n")
        response = await connection.until_closed()
    assert status(response) == 400
    assert error_body(response)["code"] == "bad_request"


async def test_a_header_line_over_8_kib_is_answered_431(short: ServerProcess) -> None:
    async with raw(short) as connection:
        connection.send(UPGRADE + "X-Big: " + "a" * 9 * 1024 + "\r\n\r\n")
        response = await connection.until_closed()
    assert status(response) == 431


async def test_a_1_mib_authorization_is_answered_431(short: ServerProcess) -> None:
    """The client sends all of it; the server answers and closes, without reading forever."""
    async with raw(short) as connection:
        connection.send(UPGRADE + "Authorization: Bearer " + "t" * 1024 * 1024 + "\r\n\r\n")
        response = await connection.until_closed()
    assert status(response) == 431


async def test_headers_too_large_in_all_are_answered_431(short: ServerProcess) -> None:
    many = "".join(f"X-Part-{i}: {'p' * 4000}\r\n" for i in range(12))
    async with raw(short) as connection:
        connection.send(UPGRADE + many + "\r\n")
        response = await connection.until_closed()
    assert status(response) == 431


async def test_a_request_line_over_8_kib_is_answered_414(short: ServerProcess) -> None:
    async with raw(short) as connection:
        connection.send("GET /ws?" + "q" * 9000 + " HTTP/1.1\r\n\r\n")
        response = await connection.until_closed()
    assert status(response) == 414


# The cap on connections that are not authenticated WebSockets ---------------------------


async def test_beyond_the_cap_new_connections_get_503_and_healthz_still_answers(
    capped: ServerProcess,
) -> None:
    extra = 10
    connections = [await Raw.open(capped) for _ in range(CAP + extra)]
    try:
        await asyncio.sleep(0.5)  # every one accepted before the checks below

        async def refused(connection: Raw) -> bytes | None:
            try:
                return await connection.until_closed()
            except TimeoutError:
                return None

        outcomes = await asyncio.gather(*(refused(c) for c in connections))
        answers = [o for o in outcomes if o is not None]
        assert len(answers) == extra, f"{len(answers)} refused of {len(connections)}"
        for answer in answers:
            assert status(answer) == 503
            assert b"retry-after: " in answer.lower()
        held = [c for c, o in zip(connections, outcomes, strict=True) if o is None]
        assert all([await c.still_open() for c in held])

        code, body = await capped.rest("GET", "/healthz", key=None)
        assert code == 200, body
        async with raw(capped) as connection:
            connection.send(UPGRADE + "\r\n")
            upgrade = await connection.until_closed()
        assert status(upgrade) == 503
        assert error_body(upgrade)["code"] == "unavailable"

        for connection in connections:
            await connection.close()
        await places_given_back(capped)
    finally:
        for connection in connections:
            await connection.close()


async def places_given_back(server: ServerProcess) -> None:
    """Wait until an upgrade is accepted again (the server sees the closes in its time)."""
    async with asyncio.timeout(CLOSE_WITHIN):
        while True:
            async with raw(server) as connection:
                connection.send(UPGRADE + "\r\n")
                answer = await connection.reader.readuntil(b"\r\n")
            if status(answer) == 101:
                return
            await asyncio.sleep(0.1)


async def test_authenticated_websockets_and_closed_connections_give_their_place_back(
    capped: ServerProcess,
) -> None:
    """More authenticated clients than the cap, opened one after another, all get in."""
    clients: list[Client] = []
    try:
        for _ in range(CAP + 5):
            user = unique("u")
            client = await Client.open(
                capped.ws_url, headers={"Authorization": f"Bearer {capped.token(user)}"}
            )
            clients.append(client)
            # connect answered: authenticated (the header did it) and counted out
            await client.call("ping")
        for _ in range(CAP + 5):
            async with raw(capped) as connection:
                connection.send("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert status(await connection.until_closed()) == 200
        late = await Client.connected(capped.ws_url, capped.token(unique("u")))
        clients.append(late)
    finally:
        await close_all(*clients)
