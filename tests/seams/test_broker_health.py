"""The Redis broker notices when it goes deaf, and bounds what a command waits for."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from realtime.broker import BrokerUnavailable
from realtime.config import load_settings
from realtime.redis_seams import create_redis_seams
from tests.seams.test_broker_contract import Recorder, connected, message
from tests.services import RedisServer
from tests.tcp_proxy import ProxiedConnection, TcpProxy


def settings(port: int, **extra: str) -> Any:
    return load_settings(
        None,
        {
            "REALTIME_AUTH_SECRET": "s" * 32,
            "REALTIME_BROKER_URL": f"redis://127.0.0.1:{port}/0",
            **extra,
        },
    )


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    with RedisServer() as server:
        yield server


def subscriber(connection: ProxiedConnection) -> bool:
    return b"SUBSCRIBE" in connection.sent.upper()


async def test_a_frozen_subscriber_connection_is_found_by_the_canary_and_replaced(
    redis: RedisServer,
) -> None:
    async with TcpProxy(redis.port) as proxy:
        # The connection's own pings alone would take 15 s + 30 s to give up on it.
        proxied = settings(
            proxy.port,
            REALTIME_BROKER_TIMEOUT="30",
            REALTIME_BROKER_CANARY_INTERVAL="0.3",
            REALTIME_BROKER_CANARY_TIMEOUT="1",
        )
        listener, _ = create_redis_seams(proxied, "listener")
        sender, _ = create_redis_seams(settings(redis.port), "sender")
        heard = Recorder()
        await listener.start(heard)
        await sender.start(Recorder())
        try:
            await listener.subscribe("swap:h")
            await connected(listener)
            await connected(sender)
            resyncs = heard.resyncs
            frozen = proxy.freeze(subscriber)
            assert len(frozen) == 1
            await sender.publish("swap:h", message("swap:h", 1))  # lost in the frozen pipe
            reasons: set[str] = set()
            async with asyncio.timeout(20):
                while heard.resyncs == resyncs:
                    try:
                        await listener.ping()
                    except BrokerUnavailable as error:
                        reasons.add(str(error))
                    await asyncio.sleep(0.05)
            assert any("canary not back" in reason for reason in reasons), reasons
            # Resubscribed over a new connection: what is published now arrives.
            assert len([c for c in proxy.connections if subscriber(c)]) >= 2
            await connected(listener)
            await sender.publish("swap:h", message("swap:h", 2))
            events = await heard.wait_for(1)
            assert events[-1] == ("swap:h", message("swap:h", 2))
        finally:
            await listener.close()
            await sender.close()


async def test_with_redis_frozen_calls_after_the_first_timeout_fail_at_once(
    redis: RedisServer,
) -> None:
    """One command's Redis calls share one timeout: the first waits, the rest do not."""
    broker, presence = create_redis_seams(settings(redis.port, REALTIME_BROKER_TIMEOUT="1"), "f")
    await broker.start(Recorder())
    await presence.start(lambda *_: asyncio.sleep(0))
    try:
        await connected(broker)
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            with pytest.raises(BrokerUnavailable, match="timed out after 1s"):
                await broker.publish("swap:f", message("swap:f", 1))
            # Redis is known down now: these do not wait for it. Counted, not timed:
            # each call that reached Redis would wait out the timeout.
            reached = count_calls_reaching_redis(broker)
            for _ in range(20):
                assert await presence.add("swap:f", "u", "c1") is True
                assert await presence.users("swap:f") == ["u"]
                await presence.remove("swap:f", "u", "c1")
                with pytest.raises(BrokerUnavailable, match="timed out after 1s"):
                    await broker.publish("swap:f", message("swap:f", 2))
            # 80 calls; only the occasional trial (one per timeout) may go to Redis.
            assert reached[0] < 20, reached
            with pytest.raises(BrokerUnavailable) as failure:
                await broker.ping()
            assert str(failure.value)
        finally:
            os.kill(redis.pid, signal.SIGCONT)
        async with asyncio.timeout(20):
            while True:
                try:
                    await broker.ping()
                    break
                except BrokerUnavailable:
                    await asyncio.sleep(0.1)
    finally:
        await presence.close()
        await broker.close()


def count_calls_reaching_redis(broker: Any) -> list[int]:
    """Count the calls the broker's gate (shared with presence) lets through to Redis."""
    gate = broker._gate
    reached = [0]
    through = gate.call

    async def counted(make: Any) -> Any:
        async def call() -> Any:
            reached[0] += 1
            return await make()

        return await through(call)

    gate.call = counted
    return reached
