"""The ingest service: one consumer per source, each a task this service owns.

Rules on one Redis share one pub/sub connection; rules on one stream and group
share one stream consumer (each entry is read once and every rule is applied to
it). Every instance runs them all: the stream group splits entries between the
instances, and for pub/sub, which hands every event to every subscriber, one
instance at a time holds a lease and subscribes (``lease.py``).

/readyz does not depend on these sources: an instance whose ingest Redis is
down still serves its clients, and sending it no traffic would not bring that
Redis back. The ``realtime_ingest_connected`` gauge shows it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..config import Settings
from ..redis_gate import OUTAGES
from ..tasks import TaskSet
from .handler import Handler, IngestMetrics, Notifier
from .lease import Lease
from .pubsub import PubSubConsumer
from .rules import IngestRule
from .streams import BLOCK, StreamConsumer

Consumer = PubSubConsumer | StreamConsumer
RECANCEL = 1.0
"""Seconds after which a task that outlived its cancellation is cancelled again."""
LEASE_TIMEOUTS = 3
"""The pub/sub lease lasts this many ``broker.timeout``: a renewal may take one."""


class Ingest:
    def __init__(
        self,
        settings: Settings,
        notifier: Notifier,
        *,
        consumer: str,
        registry: CollectorRegistry,
    ) -> None:
        rules = settings.ingest
        self.metrics = IngestMetrics(registry, [rule.name for rule in rules])
        handler = Handler(
            notifier,
            self.metrics,
            max_event_bytes=settings.server.max_request_bytes,
            max_data_bytes=settings.namespaces["user"].max_body_bytes,
        )
        timeout = settings.broker.timeout
        self._clients: dict[str, Redis] = {}
        pubsub: dict[str, list[IngestRule]] = {}
        streams: dict[tuple[str, str, str], list[IngestRule]] = {}
        for rule in rules:
            url = rule.redis_url or settings.broker.url
            if rule.source == "pubsub":
                pubsub.setdefault(url, []).append(rule)
            else:
                streams.setdefault((url, rule.stream, rule.group), []).append(rule)
        self.consumers: list[Consumer] = []
        # Per process: two processes given the same instance id must not both hold it.
        owner = f"{consumer}-{secrets.token_hex(4)}"
        lease_key = f"{settings.broker.prefix}:ingest:pubsub-lease"
        for url, group in pubsub.items():
            client = self._client(url, timeout)
            source = f"pubsub@{_where(client)}"
            lease = Lease(client, lease_key, owner, ttl=LEASE_TIMEOUTS * timeout, timeout=timeout)
            self.consumers.append(
                PubSubConsumer(source, client, group, handler, lease=lease, timeout=timeout)
            )
        for (url, stream, name), group in streams.items():
            client = self._client(url, timeout)
            source = f"stream {stream}/{name}@{_where(client)}"
            self.consumers.append(
                StreamConsumer(source, client, group, handler, consumer=consumer, timeout=timeout)
            )
        self._tasks = TaskSet()
        self._running: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for consumer in self.consumers:
            for job, name in consumer.jobs():
                self._running.append(self._tasks.spawn(job, f"ingest {name}"))

    async def close(self) -> None:
        # redis-py can lose a cancellation that lands as a reply arrives (the call
        # returns as if nothing happened): cancel again until every task has ended.
        while pending := [task for task in self._running if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=RECANCEL)
        await self._tasks.close()
        for client in self._clients.values():
            with contextlib.suppress(*OUTAGES):
                await client.aclose()

    def _client(self, url: str, timeout: float) -> Redis:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = Redis.from_url(
                url,
                # A blocking XREADGROUP holds the socket silent for BLOCK seconds.
                socket_timeout=timeout + BLOCK,
                socket_connect_timeout=timeout,
                # No silent retries: the consumers reconnect with their own backoff.
                retry=Retry(NoBackoff(), 0),
            )
        return client


def _where(client: Redis) -> str:
    """host:port/db of the client, without the credentials a URL may hold."""
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
