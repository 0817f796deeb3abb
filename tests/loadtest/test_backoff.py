"""The load clients' reconnect timing: advice, Retry-After, full-jitter backoff."""

from __future__ import annotations

import asyncio

import pytest

from loadtest.backoff import Backoff
from loadtest.fastws import FastConnection, HandshakeError, retry_after
from protocol.advice import ReconnectAdvice, with_advice

ADVISED = with_advice("server restarting: reconnect", ReconnectAdvice(500, 9000))


def test_a_close_with_advice_is_followed_across_its_window() -> None:
    backoff = Backoff()
    assert backoff.after_close(ADVISED, 0.0) == 0.5
    assert backoff.after_close(ADVISED, 0.5) == 5.0
    assert backoff.after_close(ADVISED, 0.999) == pytest.approx(9.491)


def test_a_close_without_advice_backs_off_with_full_jitter() -> None:
    backoff = Backoff(base=0.5, cap=4.0)
    assert backoff.after_close("", 0.0) == 0.0
    assert backoff.after_close("closed by a proxy", 0.5) == 0.25
    # Each failure in a row doubles the window, up to the cap; any point of it.
    assert [backoff.after_failure(n, None, 1.0) for n in range(1, 6)] == [1, 2, 4, 4, 4]
    assert backoff.after_failure(3, None, 0.25) == 1.0


def test_retry_after_is_followed_and_spread_over_the_next_second() -> None:
    backoff = Backoff()
    assert backoff.after_failure(1, 3.0, 0.0) == 3.0
    assert backoff.after_failure(7, 3.0, 0.5) == 3.5


def test_without_pacing_nothing_is_followed() -> None:
    backoff = Backoff(honour=False, base=0.5)
    assert backoff.after_close(ADVISED, 0.9) == 0.0
    assert backoff.after_failure(1, 30.0, 0.0) == 0.25
    assert backoff.after_failure(9, None, 1.0) == 0.75


def test_retry_after_header_parsing() -> None:
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: x\r\nRetry-After: 7"
    assert retry_after(head) == 7.0
    assert retry_after(b"HTTP/1.1 503 X\r\nretry-after:  12 ") == 12.0
    assert retry_after(b"HTTP/1.1 503 X\r\nRetry-After: Wed, 21 Oct 2026 07:28:00 GMT") is None
    assert retry_after(b"HTTP/1.1 503 X\r\nContent-Length: 0") is None


async def test_a_503_with_retry_after_over_a_socket() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"error":{"code":"unavailable","message":"busy"}}'
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 4\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(HandshakeError) as raised:
            await FastConnection.connect(f"ws://127.0.0.1:{port}/ws", limit=10)
        assert raised.value.status == 503 and raised.value.retry_after == 4.0
    finally:
        server.close()
        await server.wait_closed()
