"""Builds the Redis broker and presence from ``broker.url``: one client and one
``RedisGate`` shared, so a command's Redis calls share one timeout."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .broker_redis import RedisBroker
from .config import Settings
from .presence_redis import RedisPresence
from .redis_gate import RedisGate

CLUSTER_SCHEME = "redis+cluster://"


def create_redis_seams(settings: Settings, owner: str) -> tuple[RedisBroker, RedisPresence]:
    """``owner`` names this process in presence and in the broker's echo check."""
    url = settings.broker.url
    timeout = settings.broker.timeout
    # No silent retries: an outage must surface, so that callers degrade and resync.
    no_retry = Retry(NoBackoff(), 0)

    def node_client(host: str, port: int) -> Redis:
        return Redis(
            host=host,
            port=port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=no_retry,
        )

    size = settings.broker.pool_size
    client: Redis | RedisCluster
    if url.startswith(CLUSTER_SCHEME):
        client = RedisCluster.from_url(
            "redis://" + url[len(CLUSTER_SCHEME) :],
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=size,
        )
    else:
        # A burst of commands waits for a free connection instead of failing.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=size,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=no_retry,
        )
        client = Redis.from_pool(pool)  # closes the pool with the client
    gate = RedisGate(timeout)
    broker = RedisBroker(
        client,
        origin=owner,
        timeout=timeout,
        prefix=settings.broker.prefix,
        node_client=node_client,
        gate=gate,
        canary_interval=settings.broker.canary_interval,
        canary_timeout=settings.broker.canary_timeout,
    )
    presence = RedisPresence(
        client,
        owner=owner,
        ttl=settings.presence.ttl,
        timeout=timeout,
        prefix=settings.broker.prefix,
        gate=gate,
    )
    return broker, presence
