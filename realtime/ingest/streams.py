"""Events from a Redis Stream, read with a consumer group: each one in effect once.

Every instance runs the consumer; the group hands each entry to one of them (the
consumer name is the instance id). An entry is acknowledged (XACK) only after its
notifications are committed, and its notifications carry ``<rule>:<entry id>`` as
their ``dedupe_key``: an entry delivered again (this instance was killed between
the commit and the XACK, or another one claimed it) creates nothing new.

Up to ``concurrency`` entries of a read are handled at once, each acknowledged as
soon as its own notifications are stored (so notifications of entries close
together may be stored in another order; ``concurrency = 1`` keeps the stream's).

Pending entries come back two ways: at start, and after any failure, this consumer
first re-reads its own (XREADGROUP from 0); and every ``claim_idle / 2`` seconds
it takes over entries that another consumer left pending for ``claim_idle``
seconds (XAUTOCLAIM), so an instance that died for good loses nothing.

While the store is unavailable the entry stays pending and is tried again after a
backoff. An entry no rule can map (not JSON, a missing recipient path, a type the
store refuses) is logged, counted, acknowledged: never read again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ..redis_gate import OUTAGES, describe
from .handler import Backoff, Handler, Result, Trouble
from .rules import IngestRule, stream_event

log = logging.getLogger("realtime.ingest")
T = TypeVar("T")

BLOCK = 2.0
"""Seconds one XREADGROUP waits for new entries (so claims run between reads)."""
CLAIM_PAGES = 10
"""XAUTOCLAIM pages (of ``batch`` entries) taken per round, so new entries are not starved."""

Entries = list[tuple[bytes, dict[bytes, bytes]]]


class _Retry(Exception):
    """The store is unavailable: start over from this consumer's pending entries."""


class StreamConsumer:
    def __init__(
        self,
        source: str,
        client: Redis,
        rules: Sequence[IngestRule],
        handler: Handler,
        *,
        consumer: str,
        timeout: float,
    ) -> None:
        first = rules[0]  # rules of one stream and group agree on these (rules.py)
        self.source = source
        self._client = client
        self._rules = list(rules)
        self._handler = handler
        self._consumer = consumer
        self._timeout = timeout
        self._stream = first.stream
        self._group = first.group
        self._start = first.start
        self._field = first.field
        self._batch = first.batch
        self._concurrency = first.concurrency
        self._claim_idle_ms = int(first.claim_idle * 1000)
        self._claim_every = max(first.claim_idle / 2, 0.5)
        self._trouble = Trouble(source, handler.metrics)
        # Reset by progress (an entry done, a read with nothing new), so an outage of
        # the store or of Redis makes the waits grow either way.
        self._backoff = Backoff()

    def jobs(self) -> list[tuple[Coroutine[Any, Any, None], str]]:
        return [(self._run(), self.source)]

    async def _run(self) -> None:
        """Consume until cancelled, reconnecting after any failure."""
        try:
            while True:
                try:
                    await self._consume()
                except _Retry:
                    pass  # the handler logged it
                except OUTAGES as error:
                    self._trouble.failed(describe(error, self._timeout))
                except Exception:
                    self._trouble.failed("unexpected error")
                    log.exception("ingest %s failed; starting over", self.source)
                await asyncio.sleep(self._backoff.next())
        finally:
            self._trouble.stopped()

    async def _consume(self) -> None:
        await self._create_group()
        self._trouble.ok()
        await self._own_pending()
        claim_at = 0.0
        while True:
            if time.monotonic() >= claim_at:
                await self._claim_stale()
                claim_at = time.monotonic() + self._claim_every
            reply = await self._call(
                self._client.xreadgroup(
                    self._group,
                    self._consumer,
                    {self._stream: ">"},
                    count=self._batch,
                    block=int(BLOCK * 1000),
                ),
                extra=BLOCK,
            )
            entries = _entries(reply)
            if not entries:
                self._backoff.reset()
            await self._handle_all(entries)

    async def _create_group(self) -> None:
        try:
            await self._call(
                self._client.xgroup_create(self._stream, self._group, id=self._start, mkstream=True)
            )
        except ResponseError as error:
            if not str(error).startswith("BUSYGROUP"):
                raise

    async def _own_pending(self) -> None:
        """Entries delivered to this consumer and never acknowledged (a crash, a retry)."""
        after = "0"
        while True:
            reply = await self._call(
                self._client.xreadgroup(
                    self._group, self._consumer, {self._stream: after}, count=self._batch
                )
            )
            entries = _entries(reply)
            if not entries:
                return
            await self._handle_all(entries)
            after = entries[-1][0].decode()

    async def _claim_stale(self) -> None:
        """Take over what other consumers (dead instances) left pending too long."""
        cursor: Any = "0-0"
        for _ in range(CLAIM_PAGES):
            reply = await self._call(
                self._client.xautoclaim(
                    self._stream,
                    self._group,
                    self._consumer,
                    min_idle_time=self._claim_idle_ms,
                    start_id=cursor,
                    count=self._batch,
                )
            )
            cursor, entries = reply[0], reply[1]
            if entries:
                log.info("ingest %s: claimed %d stale entries", self.source, len(entries))
                await self._handle_all(entries)
            if cursor in (b"0-0", "0-0"):
                return

    async def _handle_all(self, entries: Entries) -> None:
        """``concurrency`` entries at a time: each store call waits on a commit."""
        step = self._concurrency
        for start in range(0, len(entries), step):
            chunk = entries[start : start + step]
            results = await asyncio.gather(
                *(self._handle(entry_id.decode(), fields) for entry_id, fields in chunk),
                return_exceptions=True,
            )
            # The others are done (acknowledged, or pending again): now start over.
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    async def _handle(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        where = f"entry {entry_id} of {self._stream}"
        event = stream_event(fields, self._field, self._handler.max_event_bytes)
        for rule in self._rules:
            notify = self._handler.plan(rule, event, where)
            if notify is None:
                continue
            key = f"{rule.name}:{entry_id}"
            if await self._handler.carry_out(rule, notify, where, key) is Result.RETRY:
                raise _Retry(where)
        await self._call(self._client.xack(self._stream, self._group, entry_id))
        self._backoff.reset()

    async def _call(self, call: Awaitable[T], *, extra: float = 0.0) -> T:
        async with asyncio.timeout(self._timeout + extra):
            return await call


def _entries(reply: Any) -> Entries:
    """The entries of an XREADGROUP reply on one stream (RESP2: [[name, entries]])."""
    if not reply:
        return []
    entries: Entries = reply[0][1]
    return entries
