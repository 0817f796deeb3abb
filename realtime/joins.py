"""Joining and leaving rooms: recovery from the store, attaching to the hub, presence.

A join reads the room's state from the store *after* the room is subscribed at the
broker (``Hub.hold``), so nothing published meanwhile is missed; ``Room.attach``
then lines the connection up with what the room has delivered. A connection that
closes while one of its joins is under way must not stay behind in the room or its
presence: every join checks ``conn.closing`` after its last wait and undoes itself.
"""

from __future__ import annotations

import asyncio
from functools import partial

from protocol import CommandError, ErrorCode
from protocol.commands import RoomRequest
from protocol.outgoing import JoinResult, Message, PresencePush
from storage import Recovery, Store

from .config import NamespaceSettings, Settings
from .connection import Connection
from .convert import to_message
from .hub import Hub
from .policy import Policy
from .presence import Presence
from .publisher import Publisher
from .room import Room
from .store_calls import StoreCalls
from .typing_state import Typing

JOIN_CATCH_UP_ATTEMPTS = 3


class Joins:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        stored: StoreCalls,
        hub: Hub,
        policy: Policy,
        presence: Presence,
        publisher: Publisher,
        typing: Typing,
    ) -> None:
        self._recovery_limit = settings.delivery.recovery_limit
        self._max_rooms = settings.server.max_rooms_per_connection
        self._store = store
        self._stored = stored
        self._hub = hub
        self._policy = policy
        self._presence = presence
        self._publisher = publisher
        self._typing = typing
        self._state_reads: dict[Room, asyncio.Future[Recovery]] = {}

    async def join(
        self, conn: Connection, request: RoomRequest, *, check: bool = True
    ) -> JoinResult:
        """The ``join`` command (``check=False``: the server joins it, no rule applies)."""
        name, namespace = self._policy.resolve(request.room)
        room = str(name)
        if not conn.in_room(room) and len(conn.rooms) >= self._max_rooms:
            raise CommandError(
                ErrorCode.FORBIDDEN,
                f"too many rooms on this connection (limit {self._max_rooms}): leave one first",
            )
        if check and await self._policy.check_join(conn.user, name, namespace, request.token):
            conn.grant(room)
        try:
            if not namespace.history:
                return await self._join_live(conn, room, namespace)
            return await self._join_stored(conn, room, namespace, request)
        except BaseException:
            # Failed or cancelled (the connection closed) after attaching, perhaps.
            if not conn.in_room(room):
                self._hub.detach(conn, room)
            raise

    async def _join_stored(
        self, conn: Connection, room: str, namespace: NamespaceSettings, request: RoomRequest
    ) -> JoinResult:
        held = await self._hub.hold(room)
        try:
            recovery = await self._stored(self._recover(held, request.since))
            seq = recovery.seq
            missed = list(map(to_message, recovery.missed))
            if conn in held:
                caught_up: list[Message] = []
            else:
                caught_up = await self._attach(conn, held, seq)
            if caught_up:
                seq = caught_up[-1].seq or seq
        finally:
            self._hub.release(held)
        first_join = self._enter(conn, room)
        recovered, missed = self._recovered(request, recovery.epoch, recovery.seq, missed)
        if request.since is not None and recovered:
            missed.extend(caught_up)
            if len(missed) > self._recovery_limit:
                missed = missed[: self._recovery_limit]
                recovered = False
        presence = await self._enter_presence(conn, room, namespace, first_join)
        return JoinResult(room, seq, recovery.epoch, missed, recovered, presence)

    def _enter(self, conn: Connection, room: str) -> bool:
        """Count the room as joined, unless the connection closed while we waited."""
        if conn.closing:
            # Its close already left every room it had: this one must not stay.
            self._hub.detach(conn, room)
            raise CommandError(ErrorCode.UNAVAILABLE, "connection closed during the join")
        return conn.enter(room)

    async def _recover(self, held: Room, since: int | None) -> Recovery:
        """The room's state (and what came after ``since``) from the store.

        Joins without ``since`` to the same room at the same time share one read: a
        reconnect storm on a busy room costs one query, not one per client. The
        read starts after the room is subscribed, as every joiner needs.
        """
        limit = self._recovery_limit
        if since is not None:
            return await self._store.recover(held.name, since, limit)
        flight = self._state_reads.get(held)
        if flight is None:
            flight = asyncio.ensure_future(self._store.recover(held.name, None, limit))
            self._state_reads[held] = flight
            flight.add_done_callback(partial(self._state_read_done, held))
        return await asyncio.shield(flight)

    def _state_read_done(self, held: Room, flight: asyncio.Future[Recovery]) -> None:
        if self._state_reads.get(held) is flight:
            del self._state_reads[held]
        if not flight.cancelled():
            flight.exception()  # its waiters got it; nobody else need report it

    async def _attach(self, conn: Connection, held: Room, store_seq: int) -> list[Message]:
        caught_up: list[Message] = []
        for _ in range(JOIN_CATCH_UP_ATTEMPTS):
            recent = held.attach(conn, store_seq)
            if recent is not None:
                return caught_up + recent
            # The room moved on further than its recent buffer while we read.
            assert held.seq is not None
            more = await self._stored(
                self._store.messages_after(held.name, store_seq, held.seq - store_seq)
            )
            if not more:
                break
            caught_up.extend(map(to_message, more))
            store_seq = more[-1].seq
        raise CommandError(ErrorCode.UNAVAILABLE, "room is too busy to join right now, retry")

    @staticmethod
    def _recovered(
        request: RoomRequest, epoch: str, seq: int, missed: list[Message]
    ) -> tuple[bool, list[Message]]:
        since = request.since
        if since is None:
            return False, []
        if request.epoch is not None and request.epoch != epoch:
            return False, []
        if since > seq:
            return False, []
        complete = len(missed) == seq - since and (not missed or missed[0].seq == since + 1)
        return complete, missed

    async def _join_live(
        self, conn: Connection, room: str, namespace: NamespaceSettings
    ) -> JoinResult:
        """Join a room without history: no seq, nothing to recover."""
        held = await self._hub.hold(room)
        try:
            if conn not in held:
                held.attach(conn, 0)
        finally:
            self._hub.release(held)
        first_join = self._enter(conn, room)
        presence = await self._enter_presence(conn, room, namespace, first_join)
        return JoinResult(room, 0, "", (), False, presence)

    async def _enter_presence(
        self, conn: Connection, room: str, namespace: NamespaceSettings, first_join: bool
    ) -> list[str] | None:
        if not namespace.presence:
            return None
        if not first_join:
            return await self._presence.users(room)
        added = await self._presence.add(room, conn.user, conn.id)
        if conn.closing:
            # It closed while we added it, and its close may have removed the entry
            # before our add landed: take the room back out, entry included.
            # No join was announced, so no leave is either.
            conn.exit(room)
            self._hub.detach(conn, room)
            await self._presence.remove(room, conn.user, conn.id)
            raise CommandError(ErrorCode.UNAVAILABLE, "connection closed during the join")
        if added:
            await self._publisher.publish(room, PresencePush(room, conn.user, "join"))
        return await self._presence.users(room)

    async def presence(self, user: str | None, room: str, *, joined: bool = False) -> list[str]:
        """Who is in a room (``user`` None: the backend asks, no rule applies)."""
        name, namespace = self._policy.resolve(room)
        if user is not None and not joined:
            await self._policy.check_read(user, name, namespace)
        if not namespace.presence:
            raise CommandError(ErrorCode.BAD_REQUEST, f"presence is off in {room}")
        return await self._presence.users(room)

    async def leave(self, conn: Connection, room: str) -> None:
        """The ``leave`` command, and every other way a connection leaves a room."""
        if not conn.exit(room):
            return
        self._hub.detach(conn, room)
        await self._typing.left(room, conn.user)
        _, namespace = self._policy.resolve(room)
        if namespace.presence:
            await self._leave_presence(conn, room)

    async def _leave_presence(self, conn: Connection, room: str) -> None:
        if await self._presence.remove(room, conn.user, conn.id):
            await self._publisher.publish(room, PresencePush(room, conn.user, "leave"))
