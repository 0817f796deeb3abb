"""The test client's own rules, against an in-process WebSocket server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.client import Client, close_all


async def _peer(ws: ServerConnection) -> None:
    """Answers "stray" with a reply to no command, "bye" by closing; ignores the rest."""
    async for frame in ws:
        if frame == '{"op":"stray"}':
            await ws.send('{"id":99,"ok":{}}')
        elif frame == '{"op":"bye"}':
            await ws.close()


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with serve(_peer, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


async def test_a_client_the_server_closed_closes_without_error(url: str) -> None:
    a, b = await Client.open(url), await Client.open(url)
    await a.fire("bye")
    await a.closed()
    await close_all(a, b)
    assert a.ws.state.name == b.ws.state.name == "CLOSED"


async def test_close_all_closes_every_client_then_raises_what_went_wrong(url: str) -> None:
    bad, good = await Client.open(url), await Client.open(url)
    await bad.fire("stray")
    await bad.fire("bye")
    await bad.closed()
    with pytest.raises(AssertionError, match="replies to no command"):
        await close_all(bad, good)
    assert good.ws.state.name == "CLOSED"


async def test_several_failures_are_raised_together(url: str) -> None:
    clients = [await Client.open(url) for _ in range(3)]
    for client in clients[:2]:
        await client.fire("stray")
        await client.fire("bye")
        await client.closed()
    with pytest.raises(BaseExceptionGroup) as failed:
        await close_all(*clients)
    assert len(failed.value.exceptions) == 2
    assert all(isinstance(e, AssertionError) for e in failed.value.exceptions)
    assert clients[2].ws.state.name == "CLOSED"
