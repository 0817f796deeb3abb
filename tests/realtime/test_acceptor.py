"""Accepting over real sockets on uvloop: every waiting connection each turn of the
loop, where uvloop's own server takes one a turn (why ``acceptor.py`` exists)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from realtime.acceptor import Acceptor

CLIENTS = 200

Serve = Callable[[Callable[[], asyncio.Protocol]], Awaitable[tuple[int, Callable[[], Any]]]]


def _turns_of_connection_made(serve: Serve) -> list[int]:
    """The loop turn in which each of CLIENTS connections, all waiting at once in the
    backlog, reached its protocol."""

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        turn = 0
        made: list[int] = []

        class Counted(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                made.append(turn)
                transport.close()

        port, stop = await serve(Counted)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CLIENTS)]

        def count_turn() -> None:
            nonlocal turn
            turn += 1
            if len(made) < CLIENTS and turn < 10 * CLIENTS:
                loop.call_soon(count_turn)  # runs again at the next turn

        loop.call_soon(count_turn)
        while len(made) < CLIENTS and turn < 10 * CLIENTS:
            await asyncio.sleep(0)
        for client in clients:
            client.close()
        result = stop()
        if result is not None:
            await result
        return made

    return uvloop.run(main())


async def _ours(factory: Callable[[], asyncio.Protocol]) -> tuple[int, Callable[[], Any]]:
    acceptor = Acceptor.bind("127.0.0.1", 0, factory)
    acceptor.start()
    return acceptor.sockets[0].getsockname()[1], acceptor.close


async def _uvloops(factory: Callable[[], asyncio.Protocol]) -> tuple[int, Callable[[], Any]]:
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0, backlog=4096)
    return server.sockets[0].getsockname()[1], server.close


def test_every_waiting_connection_is_accepted_in_the_same_turn() -> None:
    made = _turns_of_connection_made(_ours)
    assert len(made) == CLIENTS
    assert max(made) - min(made) <= 1, sorted(set(made))


def test_uvloops_own_server_accepts_one_connection_a_turn() -> None:
    # If this starts failing, libuv accepts in a loop again and acceptor.py can go.
    made = _turns_of_connection_made(_uvloops)
    assert len(made) == CLIENTS
    assert len(set(made)) >= CLIENTS // 2, sorted(set(made))
