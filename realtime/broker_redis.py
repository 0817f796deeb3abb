"""Redis broker: instances fan out to each other through Redis pub/sub.

Delivery is at most once (see ``broker.py``). An instance hands its own
publications to its local rooms directly, before Redis is asked, and skips their
echo: so one instance keeps serving its own clients through a Redis outage, and a
push crosses Redis once, encoded once (msgpack).

Subscriptions follow the rooms this instance's connections are in. The broker
keeps that wanted set; a supervisor task connects, subscribes to all of it and
listens. When anything fails (a dropped connection, a server that stops answering
pings, a cluster slot that moved) it tears everything down, waits (capped
exponential backoff with jitter), starts again, and then asks the node to resync:
events may have been lost meanwhile, and room messages are re-read from the store.
``subscribe`` and ``unsubscribe`` never fail; they change the wanted set and, when
connected, the live subscription.

Every call a command waits for goes through the ``RedisGate`` shared with
presence: bounded by ``broker.timeout``, and failing at once while Redis is known
to be down, so a command is answered within one timeout.

A canary (``canary.py``) checks that the subscriptions still hear: every
``canary_interval`` this instance publishes a token on a channel of its own and
waits for it to come back through its subscriber connection. One that is not
back within ``canary_timeout`` makes ``ping`` fail with that reason and starts
the resubscribe-and-resync above, as a broken connection would.

Direct messages (``send_direct``) go to a channel of the address's own,
``<prefix>:-direct:<address>``, subscribed with the rooms (and, like them,
again after every reconnect). PUBLISH answers how many subscribers got a
message: none means no instance listens at that address.

On a Redis Cluster (``redis+cluster://host:port``) it uses sharded pub/sub:
SPUBLISH, and one SSUBSCRIBE connection per master for the channels whose slots
it owns, so fan-out grows with the number of shards instead of every node
relaying every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub

from .broker import BrokerHandler, BrokerUnavailable
from .canary import Canary
from .events import Event, EventFormatError, pack_event, unpack_event
from .redis_gate import OUTAGES, RedisGate

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
# Enough tries to find, for every cluster master, a canary channel in one of its slots.
CANARY_SLOT_TRIES = 100_000

Client = Redis | RedisCluster


class _Resubscribe(Exception):
    """The subscriptions must be rebuilt (a slot moved, a subscribe failed)."""


class _Shard:
    """One Redis server's subscriber connection and the channels it carries."""

    def __init__(self, client: Redis, sharded: bool, name: str) -> None:
        self.client = client
        self.sharded = sharded
        self.name = name
        self.pubsub: PubSub = client.pubsub()
        self.channels: set[str] = set()
        self.listener: asyncio.Task[None] | None = None
        self.closed = False

    async def subscribe(self, channels: Sequence[str]) -> None:
        if not channels:
            return
        if self.sharded:
            # SSUBSCRIBE takes channels of one slot at a time.
            for channel in channels:
                await self.pubsub.ssubscribe(channel)
        else:
            await self.pubsub.subscribe(*channels)
        self.channels.update(channels)

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        if self.sharded:
            await self.pubsub.sunsubscribe(channel)
        else:
            await self.pubsub.unsubscribe(channel)

    async def close(self) -> None:
        # The listener also stops by this flag: a cancellation that lands as the
        # read's own timeout fires can be lost inside redis-py.
        self.closed = True
        if self.listener is not None:
            self.listener.cancel()
            await asyncio.wait([self.listener])
        with contextlib.suppress(*OUTAGES):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(*OUTAGES):
            await self.client.aclose()


class RedisBroker:
    shared = True

    def __init__(
        self,
        client: Client,
        *,
        origin: str,
        timeout: float,
        prefix: str,
        node_client: Callable[[str, int], Redis],
        gate: RedisGate | None = None,
        canary_interval: float = 2.0,
        canary_timeout: float = 5.0,
    ) -> None:
        self._client = client
        self._sharded = isinstance(client, RedisCluster)
        self._origin = origin
        self.address = origin
        self._timeout = timeout
        self._prefix = prefix + ":"
        self._direct_prefix = f"{self._prefix}-direct:"
        self._direct_channel = self._direct_prefix + origin
        self._node_client = node_client
        self._handler: BrokerHandler | None = None
        self._wanted: set[str] = set()
        self._shards: dict[str, _Shard] = {}
        self._connected = False
        self._rebuild = asyncio.Event()
        self._failure: BaseException | None = None
        # Subscriptions sent and not yet confirmed by Redis: channel -> waiters.
        self._confirming: dict[str, list[asyncio.Future[None]]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._gate = gate or RedisGate(timeout)
        # One canary channel per Redis server that carries subscriptions.
        self._canary_channels: list[str] = []
        self._canary_tokens = itertools.count()
        self._canary_waiters: dict[tuple[str, bytes], asyncio.Future[None]] = {}
        self.canary = Canary(
            self._probe, interval=canary_interval, timeout=canary_timeout, on_lost=self._deaf
        )
        self._canary_task: asyncio.Task[None] | None = None

    # The seam ------------------------------------------------------------------------

    async def start(self, handler: BrokerHandler) -> None:
        self._handler = handler
        self._supervisor = asyncio.create_task(self._supervise(), name="redis-subscriber")
        self._canary_task = asyncio.create_task(self.canary.run(), name="redis-canary")

    async def close(self) -> None:
        for task in (self._canary_task, self._supervisor):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        self._canary_task = self._supervisor = None
        await self._close_shards()
        with contextlib.suppress(*OUTAGES):
            await self._client.aclose()

    async def subscribe(self, room: str) -> None:
        self._wanted.add(room)
        if not self._connected:
            return  # the supervisor subscribes everything wanted when it connects
        if self._gate.down:
            # Waiting on a Redis that does not answer would hold up the join.
            log.info("redis is down (%s): %s is subscribed on reconnect", self._gate.reason, room)
            self._rebuild.set()
            return
        channel = self._prefix + room
        # Returns once Redis confirms: the hub reads the store only after that, so
        # nothing published in between can slip past this instance.
        confirmed = asyncio.get_running_loop().create_future()
        self._confirming.setdefault(channel, []).append(confirmed)
        try:
            async with asyncio.timeout(self._timeout):
                shard = await self._shard_for(channel)
                await shard.subscribe([channel])
                if shard.listener is None:  # the first channel on this cluster node
                    self._start_listening(shard)
                await confirmed
        except (*OUTAGES, _Resubscribe) as error:
            log.warning("subscribe to %s failed, resubscribing everything: %r", room, error)
            self._gate.note(error)
            self._rebuild.set()
        finally:
            waiters = self._confirming.get(channel, [])
            if confirmed in waiters:
                waiters.remove(confirmed)
            if not waiters:
                self._confirming.pop(channel, None)

    async def unsubscribe(self, room: str) -> None:
        self._wanted.discard(room)
        if not self._connected or self._gate.down:
            return  # a stale subscription only brings events the hub ignores
        channel = self._prefix + room
        for shard in self._shards.values():
            if channel in shard.channels:
                try:
                    async with asyncio.timeout(self._timeout):
                        await shard.unsubscribe(channel)
                except OUTAGES as error:
                    log.info("unsubscribe from %s failed: %r", room, error)
                    self._gate.note(error)

    async def publish(self, room: str, event: Event) -> None:
        self._deliver_locally(room, event)
        data = pack_event(self._origin, event)
        await self._gate.call(partial(self._publish_one, self._prefix + room, data))

    async def publish_confirmed(self, room: str, event: Event) -> None:
        data = pack_event(self._origin, event)
        await self._gate.call(partial(self._publish_one, self._prefix + room, data))
        self._deliver_locally(room, event)

    async def publish_many(self, events: Sequence[tuple[str, Event]]) -> None:
        for room, event in events:
            self._deliver_locally(room, event)
        batch = [(self._prefix + room, pack_event(self._origin, event)) for room, event in events]
        if batch:
            await self._gate.call(partial(self._publish_batch, batch))

    async def ping(self) -> None:
        if self.canary.reason is not None:  # kept until a canary comes back
            raise BrokerUnavailable(self.canary.reason)
        if not self._connected:
            raise BrokerUnavailable("redis subscriptions are not connected")
        await self._gate.call(self._client.ping)

    async def send_direct(self, address: str, data: bytes) -> bool:
        if address == self._origin:
            if self._handler is None:
                return False
            self._handler.on_direct(data)
            return True
        channel = self._direct_prefix + address
        return bool(await self._gate.call(partial(self._publish_one, channel, data)))

    # Publishing ----------------------------------------------------------------------

    def _deliver_locally(self, room: str, event: Event) -> None:
        if self._handler is not None:
            self._handler.on_event(room, event)

    async def _publish_one(self, channel: str, data: bytes) -> int:
        """Publish; returns how many subscribers Redis handed it to."""
        if self._sharded:
            receivers = await self._client.spublish(channel, data)
        else:
            receivers = await self._client.publish(channel, data)
        return int(receivers)

    async def _publish_batch(self, batch: list[tuple[str, bytes]]) -> None:
        if not self._sharded:
            async with self._client.pipeline(transaction=False) as pipe:
                for channel, data in batch:
                    pipe.publish(channel, data)
                await pipe.execute()
            return
        # One pipeline per master, for the channels whose slots it owns.
        assert isinstance(self._client, RedisCluster)
        by_node: dict[str, list[tuple[str, bytes]]] = {}
        for channel, data in batch:
            host, port = self._owner_of(channel)
            by_node.setdefault(f"{host}:{port}", []).append((channel, data))
        await asyncio.gather(*(self._publish_on_node(n, items) for n, items in by_node.items()))

    async def _publish_on_node(self, node: str, items: list[tuple[str, bytes]]) -> None:
        shard = self._shards.get(node)
        client = shard.client if shard is not None else None
        if client is None:
            host, _, port = node.rpartition(":")
            client = self._node_client(host, int(port))
        try:
            async with client.pipeline(transaction=False) as pipe:
                for channel, data in items:
                    pipe.spublish(channel, data)
                await pipe.execute()
        finally:
            if shard is None:
                await client.aclose()

    # Subscribing ---------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = BACKOFF_MIN
        while True:
            try:
                await self._connect()
                delay = BACKOFF_MIN
                await self._listen_until_failure()
            except (*OUTAGES, _Resubscribe) as error:
                log.warning("redis subscriptions lost (%r); reconnecting", error)
                self._gate.note(error)
            except Exception:
                # A bug must not end fan-out for good: log it and start over.
                log.exception("redis subscriber failed; reconnecting")
            finally:
                self._connected = False
                await self._close_shards()
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _connect(self) -> None:
        async with asyncio.timeout(self._timeout * 3):
            if isinstance(self._client, RedisCluster):
                await self._client.initialize()
            self._rebuild.clear()
            subscribed: set[str] = set()
            # Rooms may be wanted or dropped while we subscribe: go until it settles.
            while True:
                missing = self._wanted - subscribed
                extra = subscribed - self._wanted
                if not missing and not extra:
                    break
                await self._subscribe_all(missing)
                subscribed |= missing
                for room in extra:
                    channel = self._prefix + room
                    for shard in self._shards.values():
                        if channel in shard.channels:
                            await shard.unsubscribe(channel)
                subscribed -= extra
            # Also holds a connection to every server, so that an outage shows.
            self._canary_channels = self._find_canary_channels()
            for channel in [*self._canary_channels, self._direct_channel]:
                shard = await self._shard_for(channel)
                await shard.subscribe([channel])
            await self._barrier()
        for shard in self._shards.values():
            self._start_listening(shard)
        self._connected = True
        self._gate.up()
        if self._wanted and self._handler is not None:
            self._handler.on_resync()

    async def _barrier(self) -> None:
        """Wait until Redis has applied every subscription sent so far.

        Redis answers a connection's commands in order, so the answer to a PING
        sent after the SUBSCRIBEs means they are in force. Messages read while
        waiting are delivered as usual.
        """
        for shard in self._shards.values():
            await shard.pubsub.ping()
            while True:
                message = await shard.pubsub.get_message(timeout=self._timeout)
                if message is None:
                    raise TimeoutError(f"{shard.name} did not answer a ping")
                if message["type"] == "pong":
                    break
                self._handle(shard, message)

    def _find_canary_channels(self) -> list[str]:
        """This instance's canary channel; on a cluster, one in a slot of each master."""
        base = f"{self._prefix}-canary:{self._origin}"
        if not isinstance(self._client, RedisCluster):
            return [base]
        masters = {f"{n.host}:{n.port}" for n in self._client.get_primaries()}
        channels: dict[str, str] = {}
        for index in range(CANARY_SLOT_TRIES):
            if len(channels) == len(masters):
                break
            channel = f"{base}:{index}"
            host, port = self._owner_of(channel)
            channels.setdefault(f"{host}:{port}", channel)
        return sorted(channels.values())

    async def _probe(self) -> None:
        """Publish one canary on every canary channel; return when all came back."""
        if not self._connected:
            raise BrokerUnavailable("redis subscriptions are not connected")
        token = str(next(self._canary_tokens)).encode()
        loop = asyncio.get_running_loop()
        waiters = {(channel, token): loop.create_future() for channel in self._canary_channels}
        self._canary_waiters.update(waiters)
        try:
            for channel, _ in waiters:
                await self._gate.call(partial(self._publish_one, channel, token))
            await asyncio.gather(*waiters.values())
        finally:
            for key in waiters:
                self._canary_waiters.pop(key, None)

    def _deaf(self, reason: str) -> None:
        """A canary did not come back: rebuild every subscription, then resync."""
        if self._connected:
            self._failure = _Resubscribe(reason)
            self._rebuild.set()

    async def _subscribe_all(self, rooms: set[str]) -> None:
        by_shard: dict[str, list[str]] = {}
        for room in rooms:
            channel = self._prefix + room
            shard = await self._shard_for(channel)
            by_shard.setdefault(shard.name, []).append(channel)
        for name, channels in by_shard.items():
            await self._shards[name].subscribe(channels)

    async def _shard_for(self, channel: str) -> _Shard:
        """The subscriber connection that carries ``channel``, opened on first use."""
        if isinstance(self._client, RedisCluster):
            host, port = self._owner_of(channel)
        else:
            kwargs = self._client.connection_pool.connection_kwargs
            host, port = kwargs.get("host", "localhost"), int(kwargs.get("port", 6379))
        name = f"{host}:{port}"
        shard = self._shards.get(name)
        if shard is None:
            shard = self._shards[name] = _Shard(self._node_client(host, port), self._sharded, name)
            if not self._sharded:
                # A plain PubSub reads nothing until it subscribes to something.
                await shard.pubsub.subscribe(self._prefix + "-")
        return shard

    def _owner_of(self, channel: str) -> tuple[str, int]:
        """The cluster master that owns the channel's slot."""
        assert isinstance(self._client, RedisCluster)
        node = self._client.get_node_from_key(channel)
        if node is None:
            raise _Resubscribe(f"no node owns the slot of {channel}")
        return node.host, int(node.port)

    def _start_listening(self, shard: _Shard) -> None:
        shard.listener = asyncio.create_task(self._listen(shard), name=f"redis-{shard.name}")
        shard.listener.add_done_callback(partial(self._listener_done, shard))

    def _listener_done(self, shard: _Shard, task: asyncio.Task[None]) -> None:
        if task.cancelled() or shard.closed:
            return
        self._failure = task.exception() or _Resubscribe("a listener stopped")
        self._rebuild.set()

    async def _listen_until_failure(self) -> None:
        """Wait until a listener fails or the subscriptions must be rebuilt."""
        self._failure = None
        await self._rebuild.wait()
        raise self._failure or _Resubscribe("subscriptions changed")

    async def _listen(self, shard: _Shard) -> None:
        """Read one connection's messages; raise when it breaks or stops answering."""
        pubsub = shard.pubsub
        heard = time.monotonic()
        pinged_at: float | None = None
        quiet = max(self._timeout / 2, 0.5)
        while not shard.closed:
            message = await pubsub.get_message(timeout=quiet / 2)
            now = time.monotonic()
            if message is None:
                if pinged_at is not None and now - pinged_at > self._timeout:
                    raise TimeoutError(f"{shard.name} stopped answering pings")
                if pinged_at is None and now - heard > quiet:
                    pinged_at = now
                    await pubsub.ping()
                continue
            heard = now
            pinged_at = None
            self._handle(shard, message)

    def _handle(self, shard: _Shard, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in {"message", "smessage"}:
            self._on_message(message["channel"], message["data"])
        elif kind in {"subscribe", "ssubscribe"}:
            for waiter in self._confirming.pop(message["channel"].decode(), []):
                if not waiter.done():
                    waiter.set_result(None)
        elif kind == "sunsubscribe":
            channel = message["channel"].decode()
            wanted = channel.removeprefix(self._prefix) in self._wanted
            own = channel in self._canary_channels or channel == self._direct_channel
            if (wanted or own) and channel in shard.channels:
                # Redis dropped it: its slot moved to another shard.
                raise _Resubscribe(f"{channel} moved")

    def _on_message(self, channel: bytes, data: bytes) -> None:
        name = channel.decode()
        if name == self._direct_channel:
            if self._handler is not None:
                self._handler.on_direct(data)
            return
        if name in self._canary_channels:
            canary = self._canary_waiters.pop((name, data), None)
            if canary is not None and not canary.done():
                canary.set_result(None)
            return
        room = name[len(self._prefix) :]
        try:
            origin, event = unpack_event(data)
        except EventFormatError as error:
            log.warning("dropped a broker message on %s: %s", room, error)
            return
        if origin != self._origin and self._handler is not None:
            self._handler.on_event(room, event)

    async def _close_shards(self) -> None:
        shards = list(self._shards.values())
        self._shards.clear()
        for shard in shards:
            await shard.close()
