"""Events from Redis pub/sub: at most once, as pub/sub itself.

One connection per Redis carries every pub/sub rule's channel (SUBSCRIBE) and
pattern (PSUBSCRIBE), on the one instance that holds the lease (``lease.py``):
one notification per event however many instances run. The listener reads,
decodes and matches; the notifications go through a bounded queue to one worker,
so a slow store never stalls the reads that tell a live connection from a dead
one. What is published while this
instance is disconnected, or while the queue is full, is lost (and counted as
failed): exactly what a pub/sub subscriber gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from ..redis_gate import OUTAGES, describe
from .handler import Backoff, Handler, Trouble
from .lease import Lease, LeaseLost
from .rules import IngestRule, Notify, decode_event

log = logging.getLogger("realtime.ingest")

QUEUE_SIZE = 1000
"""Notifications waiting for the store; past it new events are dropped (and counted)."""


class PubSubConsumer:
    def __init__(
        self,
        source: str,
        client: Redis,
        rules: Sequence[IngestRule],
        handler: Handler,
        *,
        lease: Lease,
        timeout: float,
    ) -> None:
        self.source = source
        self._client = client
        self._lease = lease
        self._handler = handler
        self._timeout = timeout
        self._channels: dict[bytes, list[IngestRule]] = {}
        self._patterns: dict[bytes, list[IngestRule]] = {}
        for rule in rules:
            if rule.channel:
                self._channels.setdefault(rule.channel.encode(), []).append(rule)
            else:
                self._patterns.setdefault(rule.pattern.encode(), []).append(rule)
        self._queue: asyncio.Queue[tuple[IngestRule, Notify, str]] = asyncio.Queue(QUEUE_SIZE)
        self._trouble = Trouble(source, handler.metrics)
        self._full = False

    def jobs(self) -> list[tuple[Coroutine[Any, Any, None], str]]:
        """The tasks to run: the listener and the worker."""
        return [(self._run(), self.source), (self._work(), f"{self.source} worker")]

    async def _run(self) -> None:
        """Listen until cancelled, reconnecting after any failure."""
        backoff = Backoff()
        try:
            while True:
                try:
                    if await self._lease.take():
                        await self._listen(backoff)
                    else:  # another instance consumes
                        self._trouble.ok(consuming=False)
                        backoff.reset()
                        await asyncio.sleep(self._lease.every)
                        continue
                except LeaseLost as error:
                    log.warning("ingest %s: %s; standing by", self.source, error)
                    self._trouble.ok(consuming=False)
                except OUTAGES as error:
                    self._trouble.failed(describe(error, self._timeout))
                except Exception:
                    self._trouble.failed("unexpected error")
                    log.exception("ingest %s failed; reconnecting", self.source)
                await asyncio.sleep(backoff.next())
        finally:
            self._trouble.stopped()
            # Let another instance take over at its next try rather than after the ttl.
            with contextlib.suppress(*OUTAGES):
                await self._lease.release()

    async def _listen(self, backoff: Backoff) -> None:
        pubsub = self._client.pubsub()
        try:
            await self._subscribe(pubsub)
            log.info("ingest %s: holding %s, subscribed", self.source, self._lease.key)
            self._trouble.ok(consuming=True)
            backoff.reset()
            await self._read(pubsub)
        finally:
            with contextlib.suppress(*OUTAGES):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _subscribe(self, pubsub: PubSub) -> None:
        async with asyncio.timeout(self._timeout):
            if self._channels:
                await pubsub.subscribe(*self._channels)
            if self._patterns:
                await pubsub.psubscribe(*self._patterns)
            unconfirmed = len(self._channels) + len(self._patterns)
            while unconfirmed:
                message = await pubsub.get_message(timeout=self._timeout)
                if message is None:
                    continue  # the surrounding timeout bounds the wait
                if message["type"] in {"subscribe", "psubscribe"}:
                    unconfirmed -= 1
                else:
                    self._on_message(message)

    async def _read(self, pubsub: PubSub) -> None:
        """Read messages, renewing the lease; a connection silent past a ping's
        timeout is dead."""
        quiet = max(self._timeout / 2, 0.5)
        heard = time.monotonic()
        renew_at = heard + self._lease.every
        pinged_at: float | None = None
        while True:
            message = await pubsub.get_message(timeout=min(quiet, self._lease.every) / 2)
            now = time.monotonic()
            if now >= renew_at:
                await self._lease.renew()
                renew_at = now + self._lease.every
            if message is None:
                if pinged_at is not None and now - pinged_at > self._timeout:
                    raise TimeoutError("redis stopped answering pings")
                if pinged_at is None and now - heard > quiet:
                    pinged_at = now
                    async with asyncio.timeout(self._timeout):
                        await pubsub.ping()
                continue
            heard = now
            pinged_at = None
            self._on_message(message)

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            rules = self._channels.get(message["channel"], [])
        elif kind == "pmessage":
            rules = self._patterns.get(message["pattern"], [])
        else:
            return  # pong, unsubscribe confirmations
        if not rules:
            return
        channel = message["channel"].decode(errors="replace")
        where = f"an event on {channel}"
        event = decode_event(message["data"], self._handler.max_event_bytes)
        for rule in rules:
            notify = self._handler.plan(rule, event, where)
            if notify is None:
                continue
            try:
                self._queue.put_nowait((rule, notify, where))
            except asyncio.QueueFull:
                self._handler.metrics.count(rule.name, "failed")
                if not self._full:
                    log.warning(
                        "ingest %s: %d notifications wait for the store; dropping new events",
                        self.source,
                        QUEUE_SIZE,
                    )
                self._full = True

    async def _work(self) -> None:
        while True:
            rule, notify, where = await self._queue.get()
            # At most once: an event the store cannot take now is not tried again.
            await self._handler.carry_out(rule, notify, where)
            if self._full and self._queue.empty():
                self._full = False
