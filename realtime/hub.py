"""The hub: this instance's rooms and connections, and fan-out to them.

The hub keeps which local connections are in which rooms, subscribes the broker
to a room while any local connection is in it, and hands every pushed event to
the room. It never formats a message per recipient (``Room`` encodes once per
encoding) and never knows SQL: missed messages come from a ``fetch`` function.

It owns two kinds of background work and cancels both on ``close``: broker
subscribe/unsubscribe calls (chained per room, so they reach the broker in order)
and gap fills (a read of the store when a room's messages stopped arriving in
order, or after the broker says events may have been lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from protocol import Codec
from protocol.outgoing import Message, MessagePush, Outgoing
from storage import StorageError

from .broker import Broker
from .config import DeliverySettings
from .connection import Connection, Outbox
from .logs import unbound
from .metrics import Metrics
from .room import Room

log = logging.getLogger(__name__)

FetchMessages = Callable[[str, int, int], Awaitable[list[Message]]]
"""(room, after seq, limit) -> messages with seq > after, ascending."""

FILL_BATCH = 500
FILL_RETRY_MAX = 5.0
FILL_CONCURRENCY = 4
"""Store reads for gap fills at once: a resync of 5,000 rooms must not take every
pooled store connection from the joins (whose reads would time out behind it)."""


class Hub:
    def __init__(
        self,
        broker: Broker,
        fetch: FetchMessages,
        settings: DeliverySettings,
        metrics: Metrics,
    ) -> None:
        self._broker = broker
        self._fetch = fetch
        self._settings = settings
        self._metrics = metrics
        self.rooms: dict[str, Room] = {}
        self.users: dict[str, set[Connection]] = {}
        self.connections: set[Connection] = set()
        self.outbox = Outbox(metrics=metrics)
        self._transitions: dict[str, asyncio.Task[None]] = {}
        self._fill_timers: dict[str, asyncio.TimerHandle] = {}
        self._fill_delays: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._fill_slots = asyncio.Semaphore(FILL_CONCURRENCY)
        self._empty = asyncio.Event()
        self._empty.set()

    # Connections -------------------------------------------------------------------

    def add_connection(self, conn: Connection) -> None:
        self.connections.add(conn)
        self._empty.clear()
        self._metrics.connections.set(len(self.connections))

    def add_user(self, conn: Connection) -> int:
        """Count an authenticated connection under its user; returns the user's count."""
        conns = self.users.setdefault(conn.user, set())
        conns.add(conn)
        return len(conns)

    def remove_user(self, conn: Connection) -> None:
        conns = self.users.get(conn.user)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.users[conn.user]

    def remove_connection(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if conn.identity is not None:
            self.remove_user(conn)
        self._metrics.connections.set(len(self.connections))
        if not self.connections:
            self._empty.set()

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def user_connections(self, user: str) -> list[Connection]:
        return list(self.users.get(user, ()))

    # Rooms -------------------------------------------------------------------------

    async def hold(self, name: str) -> Room:
        """The room, subscribed at the broker, kept until ``release``.

        Call while joining: between the store read and ``Room.attach`` the room
        must exist and receive events, so nothing published meanwhile is missed.
        """
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, self._settings.recent_messages, self.outbox)
            self._metrics.rooms.set(len(self.rooms))
            self._chain(name, self._broker.subscribe)
        room.holds += 1
        transition = self._transitions.get(name)
        if transition is not None:
            try:
                await asyncio.shield(transition)
            except BaseException:
                self.release(room)
                raise
        return room

    def release(self, room: Room) -> None:
        room.holds -= 1
        self._drop_if_unused(room)

    def detach(self, conn: Connection, name: str) -> bool:
        room = self.rooms.get(name)
        if room is None or not room.detach(conn):
            return False
        self._drop_if_unused(room)
        return True

    def recode(self, conn: Connection, old: Codec) -> None:
        """``conn`` changed encoding (``Connection.rebind``): move it in its rooms."""
        for name in conn.rooms:
            room = self.rooms.get(name)
            if room is not None:
                room.recode(conn, old)

    def _drop_if_unused(self, room: Room) -> None:
        if room.holds or len(room) or self.rooms.get(room.name) is not room:
            return
        del self.rooms[room.name]
        self._metrics.rooms.set(len(self.rooms))
        timer = self._fill_timers.pop(room.name, None)
        if timer is not None:
            timer.cancel()
        self._fill_delays.pop(room.name, None)
        self._chain(room.name, self._broker.unsubscribe)

    def _chain(self, name: str, operation: Callable[[str], Awaitable[None]]) -> None:
        previous = self._transitions.get(name)
        task = asyncio.create_task(self._after(previous, operation, name), context=unbound())
        self._transitions[name] = task
        task.add_done_callback(partial(self._transition_done, name))

    @staticmethod
    async def _after(
        previous: asyncio.Task[None] | None,
        operation: Callable[[str], Awaitable[None]],
        name: str,
    ) -> None:
        if previous is not None:
            # Only the order matters here; the previous call's error went to its waiters.
            await asyncio.wait([previous])
        await operation(name)

    def _transition_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._transitions.get(name) is task:
            del self._transitions[name]
        if not task.cancelled() and (error := task.exception()) is not None:
            self._metrics.broker_errors.labels("subscribe").inc()
            log.warning("broker subscription change for %s failed: %r", name, error)

    # Fan-out -----------------------------------------------------------------------

    def deliver(self, name: str, push: Outgoing, skip_user: str | None = None) -> None:
        room = self.rooms.get(name)
        if room is not None:
            delivered = room.deliver(push, skip_user)
            self._metrics.deliveries.inc(delivered)
            if delivered and isinstance(push, MessagePush):
                self._metrics.message_delivered(push.message.ts)

    def offer(self, name: str, push: MessagePush) -> None:
        room = self.rooms.get(name)
        if room is None:
            return
        delivered = room.offer(push)
        if delivered:
            self._metrics.deliveries.inc(delivered)
            self._metrics.message_delivered(push.message.ts)
        if not room.by_codec and not room.waiting:
            # Its last connections fell behind (lagged); they rejoin to come back.
            self._drop_if_unused(room)
        if room.has_gap and name not in self._fill_timers and self.rooms.get(name) is room:
            self._schedule_fill(name, self._settings.gap_timeout)

    def sequenced_rooms(self) -> list[str]:
        """Rooms whose message order this instance tracks."""
        return [name for name, room in self.rooms.items() if room.seq is not None]

    def catch_up(self, latest: dict[str, int]) -> None:
        """Read from the store what rooms missed, given their latest stored seqs."""
        for name, seq in latest.items():
            room = self.rooms.get(name)
            if (
                room is not None
                and room.seq is not None
                and seq > room.seq
                and name not in self._fill_timers
            ):
                self._schedule_fill(name, 0)

    def resync(self) -> None:
        """Events may have been lost: read every room's tail from the store."""
        for name, room in self.rooms.items():
            if room.seq is not None and name not in self._fill_timers:
                self._schedule_fill(name, 0)

    def _schedule_fill(self, name: str, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._fill_timers[name] = loop.call_later(delay, self._start_fill, name, context=unbound())

    def _start_fill(self, name: str) -> None:
        task = asyncio.create_task(self._fill(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill(self, name: str) -> None:
        room = self.rooms.get(name)
        if room is None or room.seq is None:
            self._fill_timers.pop(name, None)
            return
        try:
            async with self._fill_slots:
                if self.rooms.get(name) is not room or room.seq is None:
                    self._fill_timers.pop(name, None)
                    return  # dropped while it waited for a slot
                before = room.first_ahead()
                self._metrics.gap_fills.inc()
                messages = await self._fetch(name, room.seq, FILL_BATCH)
        except StorageError as error:
            delay = min(self._fill_delays.get(name, self._settings.gap_timeout) * 2, FILL_RETRY_MAX)
            self._fill_delays[name] = delay
            log.warning(
                "cannot read missed messages of %s (retry in %.1fs): %s", name, delay, error
            )
            if self.rooms.get(name) is room:
                self._schedule_fill(name, delay)
            return
        self._fill_timers.pop(name, None)
        self._fill_delays.pop(name, None)
        if self.rooms.get(name) is not room:
            return
        delivered = 0
        if messages and room.seq is not None and (messages[0].seq or 0) > room.seq + 1:
            # The store no longer has what came before its oldest: retention removed it.
            delivered += room.skip_to((messages[0].seq or 0) - 1)
        for message in messages:
            delivered += room.offer(MessagePush(message))
        if not messages and before is not None and room.seq is not None and room.seq < before - 1:
            # Nothing left in the store before the first waiting message either.
            delivered += room.skip_to(before - 1)
        self._metrics.deliveries.inc(delivered)
        if len(messages) == FILL_BATCH:
            self._schedule_fill(name, 0)
        elif room.has_gap:
            self._schedule_fill(name, self._settings.gap_timeout)

    # Lifecycle ---------------------------------------------------------------------

    async def close(self) -> None:
        for timer in self._fill_timers.values():
            timer.cancel()
        self._fill_timers.clear()
        pending = [*self._tasks, *self._transitions.values()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        self._tasks.clear()
        self._transitions.clear()
