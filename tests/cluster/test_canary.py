"""An instance whose Redis subscription went silently deaf notices and heals.

The subscriber connection of one instance is frozen by a TCP proxy (both sockets
stay open, no bytes move): nothing but the instance's canary can tell. The
instance must say so on ``/readyz``, resubscribe over a new connection and read
what its rooms missed from the store, so its clients miss nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.client import Client
from tests.server import ServerProcess, unique
from tests.services import PostgresServer, RedisServer
from tests.tcp_proxy import ProxiedConnection, TcpProxy


def subscriber(connection: ProxiedConnection) -> bool:
    return b"SUBSCRIBE" in connection.sent.upper()


async def test_a_deaf_instance_says_so_resubscribes_and_misses_nothing(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    with RedisServer() as redis:
        async with TcpProxy(redis.port) as proxy:
            dsn = postgres_server.create_database(unique("db_"))
            common = {
                # Only the canary may find the frozen connection within the test:
                # no tail checks, and Redis calls that would wait a long time.
                "REALTIME_DELIVERY_TAIL_CHECK_INTERVAL": "3600",
                "REALTIME_BROKER_TIMEOUT": "30",
                "REALTIME_BROKER_CANARY_INTERVAL": "0.5",
                "REALTIME_BROKER_CANARY_TIMEOUT": "2",
            }
            sender = ServerProcess(
                tmp_path / "a", dsn=dsn, broker_url=redis.url, name="a", env=common
            )
            deaf = ServerProcess(
                tmp_path / "b",
                dsn=dsn,
                broker_url=f"redis://127.0.0.1:{proxy.port}/0",
                name="b",
                env=common,
            )
            sender.start()
            try:
                # In a thread: the proxy it connects through runs on this loop.
                await asyncio.to_thread(deaf.start)
                await _deaf_and_healed(proxy, sender, deaf)
            finally:
                deaf.kill()
                sender.kill()


async def _deaf_and_healed(proxy: TcpProxy, sender: ServerProcess, deaf: ServerProcess) -> None:
    room = unique("swap:")
    user = unique("u")
    status, _ = await sender.rest("PUT", f"/api/v1/rooms/{room}/members/{user}")
    assert status == 204
    client = await Client.connected(deaf.ws_url, deaf.token(user))
    try:
        await client.call("join", room=room)
        await publish(sender, room, 1)
        assert (await client.push("message"))["seq"] == 1
        assert len(proxy.freeze(subscriber)) == 1
        for n in range(2, 6):
            await publish(sender, room, n)
        reason = await unready_reason(deaf)
        assert "canary" in reason, reason
        # Healed: what was published while deaf, then what comes after.
        await publish(sender, room, 6)
        got = [p["seq"] for p in await client.pushes_of("message", 5, timeout=60)]
        assert got == [2, 3, 4, 5, 6]
        assert len([c for c in proxy.connections if subscriber(c)]) >= 2
    finally:
        await client.close()


async def publish(server: ServerProcess, room: str, n: int) -> None:
    status, body = await server.rest("POST", f"/api/v1/rooms/{room}/messages", {"body": n})
    assert status == 201 and body["seq"] == n, body


async def unready_reason(server: ServerProcess, deadline: float = 60) -> str:
    """The broker's reason the first time ``/readyz`` says the instance is not ready."""
    async with asyncio.timeout(deadline):
        while True:
            status, body = await server.rest("GET", "/readyz")
            if status != 200:
                return str(body["checks"]["broker"])
            await asyncio.sleep(0.1)
