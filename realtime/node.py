"""One server instance: the operations that WebSocket commands and REST calls share.

The node ties the seams together (store, broker, presence) with the hub and the
policy. Everything a client or the backend can do goes through a method here, so
both entry points behave the same. Errors reach callers as ``CommandError`` with a
protocol error code; the WebSocket and REST layers only translate them.

Background work owned here (started by ``start``, cancelled by ``close``): server
pings, typing expiry, history retention, and the tasks that apply ``joined``/
``left`` to local connections.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Coroutine, Sequence
from functools import partial
from typing import Any, TypeVar

from protocol import CloseCode, CommandError, ErrorCode
from protocol.commands import RoomRequest
from protocol.outgoing import (
    HistoryResult,
    JoinedPush,
    JoinResult,
    LeftPush,
    Message,
    MessagePush,
    NotificationItem,
    NotificationPush,
    NotificationsResult,
    PresencePush,
    ReadPush,
    ReadResult,
    SendResult,
    TypingPush,
)
from storage import (
    NewMessage,
    Notification,
    Recovery,
    StorageError,
    StorageUnavailable,
    Store,
    StoredMessage,
)

from .auth import Authenticator, Identity
from .broker import Broker, BrokerUnavailable
from .config import NamespaceSettings, Settings
from .connection import Connection
from .events import Event, MembershipChange, UserDisconnect
from .expiry import ExpiryClock
from .frames import PING_FRAME
from .hub import Hub
from .metrics import Metrics
from .policy import Policy
from .presence import Presence
from .room import Room

log = logging.getLogger(__name__)
T = TypeVar("T")

FOLLOWER_BATCH = 5000
TAIL_CHECK_BATCH = 1000
JOIN_CATCH_UP_ATTEMPTS = 3


def now_ms() -> int:
    return int(time.time() * 1000)


def to_message(stored: StoredMessage) -> Message:
    return Message(stored.room, stored.seq, stored.user, stored.body, stored.ts, stored.client_id)


def to_item(notification: Notification) -> NotificationItem:
    return NotificationItem(
        notification.id,
        notification.type,
        notification.data,
        notification.actor,
        notification.ts,
        notification.read,
    )


def user_room(user: str) -> str:
    return f"user:{user}"


class TooManyConnections(CommandError):
    def __init__(self, limit: int) -> None:
        super().__init__(ErrorCode.FORBIDDEN, f"too many connections for this user (limit {limit})")


class Node:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        broker: Broker,
        presence: Presence,
        metrics: Metrics | None = None,
        instance_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.presence = presence
        self.metrics = metrics or Metrics()
        self.auth = Authenticator(settings.auth)
        self.policy = Policy(settings.namespaces, store, self.auth)
        self.hub = Hub(broker, self._fetch_missed, settings.delivery, self.metrics)
        self.instance_id = instance_id or settings.server.instance_id or secrets.token_hex(4)
        self.draining = False
        self.expiries = ExpiryClock()
        self._typing: dict[tuple[str, str], float] = {}
        self._state_reads: dict[Room, asyncio.Future[Recovery]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []

    # Lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start(self)
        await self.presence.start(self._presence_changed)
        self._loops = [
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(self._expire_typing(), name="typing-expiry"),
            asyncio.create_task(self._retention(), name="retention"),
            asyncio.create_task(self._check_tails(), name="tail-check"),
        ]

    async def drain(self) -> None:
        """Close every connection with 1012 once its command in flight is answered."""
        self.draining = True
        for conn in list(self.hub.connections):
            if not conn.busy:
                conn.close(CloseCode.RESTARTING, "server restarting: reconnect")
        try:
            async with asyncio.timeout(self.settings.server.shutdown_timeout):
                await self.hub.wait_empty()
        except TimeoutError:
            log.warning("%d connections still open after drain", len(self.hub.connections))

    async def close(self) -> None:
        for task in [*self._loops, *self._tasks]:
            task.cancel()
        pending = [*self._loops, *self._tasks]
        if pending:
            await asyncio.wait(pending)
        self._loops.clear()
        self._tasks.clear()
        self.expiries.close()
        await self.hub.close()

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> None:
        """Run background work owned by the node (cancelled and awaited by ``close``)."""
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("task %s failed", task.get_name(), exc_info=error)

    async def ready(self) -> dict[str, str]:
        """What /readyz reports: each dependency's state."""
        status: dict[str, str] = {}
        timeout = self.settings.storage.timeout
        try:
            await asyncio.wait_for(self.store.ping(), timeout)
            status["storage"] = "ok"
        except (StorageError, TimeoutError) as error:
            status["storage"] = f"unavailable: {str(error) or f'timed out after {timeout:g}s'}"
        timeout = self.settings.broker.timeout
        try:
            await asyncio.wait_for(self.broker.ping(), timeout)
            status["broker"] = "ok"
        except (BrokerUnavailable, TimeoutError) as error:
            # str(TimeoutError()) is empty: never report "unavailable: " alone.
            status["broker"] = f"unavailable: {str(error) or f'timed out after {timeout:g}s'}"
        return status

    # Broker events -----------------------------------------------------------------

    def on_event(self, room: str, event: Event) -> None:
        if isinstance(event, MessagePush):
            if event.message.seq is None:
                self.hub.deliver(room, event)
            else:
                self.hub.offer(room, event)
        elif isinstance(event, TypingPush):
            self.hub.deliver(room, event, skip_user=event.user)
        elif isinstance(event, UserDisconnect):
            for conn in self.hub.user_connections(event.user):
                conn.close(CloseCode.DISCONNECTED, event.reason)
        elif isinstance(event, MembershipChange):
            self._apply_membership(event)
        else:
            self.hub.deliver(room, event)

    def on_resync(self) -> None:
        self.hub.resync()

    async def _check_tails(self) -> None:
        """Catch up rooms whose latest stored message never came through the broker."""
        interval = self.settings.delivery.tail_check_interval
        while True:
            await asyncio.sleep(interval)
            rooms = self.hub.sequenced_rooms()
            for start in range(0, len(rooms), TAIL_CHECK_BATCH):
                try:
                    latest = await self.store.latest_seqs(rooms[start : start + TAIL_CHECK_BATCH])
                except StorageError as error:
                    log.warning("tail check failed, retrying later: %s", error)
                    break
                self.hub.catch_up(latest)

    async def _presence_changed(self, room: str, user: str, event: str) -> None:
        _, namespace = self.policy.resolve(room)
        if namespace.presence:
            await self._publish(room, PresencePush(room, user, event))

    def _apply_membership(self, change: MembershipChange) -> None:
        for conn in self.hub.user_connections(change.user):
            if change.joined and change.room not in conn.rooms:
                self.spawn(self._server_join(conn, change), f"join {change.room}")
            elif not change.joined and change.room in conn.rooms:
                self.hub.detach(conn, change.room)
                conn.send(LeftPush(change.room, change.reason))
                self.spawn(self.leave(conn, change.room), f"leave {change.room}")

    async def _server_join(self, conn: Connection, change: MembershipChange) -> None:
        conn.hold()
        try:
            result = await self.join(conn, RoomRequest(change.room), check=False)
            conn.reply(JoinedPush(change.reason, result))
        except CommandError as error:
            log.warning("could not join %s to %s: %s", conn, change.room, error.message)
        finally:
            conn.release()

    async def _publish(self, room: str, event: Event) -> None:
        try:
            await self.broker.publish(room, event)
        except BrokerUnavailable as error:
            # Stored messages are not lost: receivers fill the gap from the store.
            self.metrics.broker_errors.labels("publish").inc()
            log.warning("broker publish to %s failed: %s", room, error)

    async def _publish_many(self, events: Sequence[tuple[str, Event]]) -> None:
        try:
            await self.broker.publish_many(events)
        except BrokerUnavailable as error:
            self.metrics.broker_errors.labels("publish").inc()
            log.warning("broker publish of %d events failed: %s", len(events), error)

    async def _stored(self, call: Awaitable[T]) -> T:
        """Await a store call, turning its failures into the protocol's errors."""
        try:
            return await call
        except StorageUnavailable as error:
            self.metrics.storage_errors.inc()
            raise CommandError(ErrorCode.UNAVAILABLE, f"storage unavailable: {error}") from None
        except StorageError as error:
            log.exception("store call failed")
            raise CommandError(ErrorCode.INTERNAL, f"storage error: {error}") from None

    async def _fetch_missed(self, room: str, after: int, limit: int) -> list[Message]:
        return [to_message(m) for m in await self.store.messages_after(room, after, limit)]

    # Connections -------------------------------------------------------------------

    async def authenticate(self, conn: Connection, identity: Identity) -> None:
        """Register an authenticated connection; raises if the user has too many.

        The count is of the user's connections on every instance: each one is
        recorded in the presence of the user's own room.
        """
        conn.identity = identity
        room = user_room(identity.user)
        count = self.hub.add_user(conn)
        if self.presence.shared:
            await self.presence.add(room, identity.user, conn.id)
            count = await self.presence.connections(room)
        limit = self.settings.server.max_connections_per_user
        if count > limit:
            if self.presence.shared:
                await self.presence.remove(room, identity.user, conn.id)
            self.hub.remove_user(conn)
            conn.identity = None
            raise TooManyConnections(limit)
        self.metrics.connects.inc()
        self.schedule_expiry(conn)

    def schedule_expiry(self, conn: Connection) -> None:
        assert conn.identity is not None
        self.expiries.schedule(conn, conn.identity.expires_at + self.settings.auth.leeway)

    async def disconnected(self, conn: Connection) -> None:
        """Forget a closed connection: leave its rooms (presence, typing)."""
        conn.closing = True
        for room in list(conn.rooms):
            try:
                await self.leave(conn, room)
            except CommandError as error:
                log.warning("leaving %s for %s failed: %s", room, conn, error.message)
        if conn.identity is not None:
            self.expiries.forget(conn)
            if self.presence.shared:
                await self.presence.remove(user_room(conn.user), conn.user, conn.id)
        self.hub.remove_connection(conn)

    def _kick_idle(self) -> None:
        limit = self.settings.server.ping_timeout
        now = time.monotonic()
        for conn in list(self.hub.connections):
            if now - conn.last_seen > limit:
                conn.close(CloseCode.GOING_AWAY, "no traffic within the ping timeout")
            else:
                conn.send_frame(PING_FRAME)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.server.ping_interval)
            self._kick_idle()

    # Rooms -------------------------------------------------------------------------

    async def join(
        self, conn: Connection, request: RoomRequest, *, check: bool = True
    ) -> JoinResult:
        name, namespace = self.policy.resolve(request.room)
        room = str(name)
        if check and await self.policy.check_join(conn.user, name, namespace, request.token):
            if conn.granted is None:
                conn.granted = set()
            conn.granted.add(room)
        if not namespace.history:
            return await self._join_live(conn, room, namespace)
        held = await self.hub.hold(room)
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
            self.hub.release(held)
        first_join = room not in conn.rooms
        conn.rooms.add(room)
        recovered, missed = self._recovered(request, recovery.epoch, recovery.seq, missed)
        if request.since is not None and recovered:
            missed.extend(caught_up)
            if len(missed) > self.settings.delivery.recovery_limit:
                missed = missed[: self.settings.delivery.recovery_limit]
                recovered = False
        presence = await self._enter_presence(conn, room, namespace, first_join)
        return JoinResult(room, seq, recovery.epoch, missed, recovered, presence)

    async def _recover(self, held: Room, since: int | None) -> Recovery:
        """The room's state (and what came after ``since``) from the store.

        Joins without ``since`` to the same room at the same time share one read: a
        reconnect storm on a busy room costs one query, not one per client. The
        read starts after the room is subscribed, as every joiner needs.
        """
        limit = self.settings.delivery.recovery_limit
        if since is not None:
            return await self.store.recover(held.name, since, limit)
        flight = self._state_reads.get(held)
        if flight is None:
            flight = asyncio.ensure_future(self.store.recover(held.name, None, limit))
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
                self.store.messages_after(held.name, store_seq, held.seq - store_seq)
            )
            if not more:
                break
            caught_up.extend(map(to_message, more))
            store_seq = more[-1].seq
        raise CommandError(ErrorCode.UNAVAILABLE, "room is too busy to join right now, retry")

    def _recovered(
        self, request: RoomRequest, epoch: str, seq: int, missed: list[Message]
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
        held = await self.hub.hold(room)
        try:
            if conn not in held:
                held.attach(conn, 0)
        finally:
            self.hub.release(held)
        first_join = room not in conn.rooms
        conn.rooms.add(room)
        presence = await self._enter_presence(conn, room, namespace, first_join)
        return JoinResult(room, 0, "", (), False, presence)

    async def _enter_presence(
        self, conn: Connection, room: str, namespace: NamespaceSettings, first_join: bool
    ) -> list[str] | None:
        if not namespace.presence:
            return None
        if first_join and await self.presence.add(room, conn.user, conn.id):
            await self._publish(room, PresencePush(room, conn.user, "join"))
        return await self.presence.users(room)

    async def leave(self, conn: Connection, room: str) -> None:
        if room not in conn.rooms:
            return
        conn.rooms.discard(room)
        if conn.granted is not None:
            conn.granted.discard(room)
        self.hub.detach(conn, room)
        if conn.typing is not None and room in conn.typing:
            conn.typing.discard(room)
            self._typing.pop((room, conn.user), None)
            await self._publish(room, TypingPush(room, conn.user, False))
        _, namespace = self.policy.resolve(room)
        if namespace.presence and await self.presence.remove(room, conn.user, conn.id):
            await self._publish(room, PresencePush(room, conn.user, "leave"))

    # Messages ----------------------------------------------------------------------

    async def send(
        self, conn: Connection, room: str, body_json: str, client_id: str | None
    ) -> SendResult:
        name, namespace = self.policy.resolve(room)
        granted = (conn.granted is not None and room in conn.granted) or (
            room in conn.rooms and namespace.send == "members"
        )
        await self.policy.check_send(conn.user, name, namespace, granted)
        return await self.publish(room, conn.user, body_json, client_id)

    async def publish(
        self, room: str, user: str | None, body_json: str, client_id: str | None
    ) -> SendResult:
        """Store a message (when the namespace keeps history) and fan it out."""
        _, namespace = self.policy.resolve(room)
        size = len(body_json.encode())
        if size > namespace.max_body_bytes:
            raise CommandError(
                ErrorCode.TOO_LARGE,
                f"body is {size} bytes; {room} takes at most {namespace.max_body_bytes}",
            )
        if not namespace.history:
            ts = now_ms()
            await self._publish(
                room, MessagePush(Message(room, None, user, body_json, ts, client_id))
            )
            return SendResult(room, None, ts)
        appended = await self._stored(
            self.store.append(NewMessage(room, user, body_json, client_id))
        )
        stored = appended.message
        if not appended.duplicate:
            self.metrics.messages.inc()
            await self._publish(room, MessagePush(to_message(stored)))
        return SendResult(room, stored.seq, stored.ts, appended.duplicate)

    async def history(
        self,
        user: str | None,
        room: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        joined: bool = False,
    ) -> HistoryResult:
        name, namespace = self.policy.resolve(room)
        if user is not None and not joined:
            await self.policy.check_read(user, name, namespace)
        if not namespace.history:
            return HistoryResult([], False, "")
        page = await self._stored(self.store.history(room, before=before, after=after, limit=limit))
        return HistoryResult(list(map(to_message, page.messages)), page.more, page.epoch)

    async def typing(self, conn: Connection, room: str, active: bool) -> None:
        _, namespace = self.policy.resolve(room)
        if not namespace.typing:
            raise CommandError(ErrorCode.BAD_REQUEST, f"typing is off in {room}")
        if room not in conn.rooms:
            raise CommandError(ErrorCode.FORBIDDEN, f"join {room} before typing in it")
        key = (room, conn.user)
        if active:
            if conn.typing is None:
                conn.typing = set()
            conn.typing.add(room)
            self._typing[key] = time.monotonic() + self.settings.delivery.typing_timeout
        else:
            if conn.typing is not None:
                conn.typing.discard(room)
            self._typing.pop(key, None)
        await self._publish(room, TypingPush(room, conn.user, active))

    async def _expire_typing(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.settings.delivery.typing_timeout / 2))
            now = time.monotonic()
            expired = [key for key, deadline in self._typing.items() if deadline <= now]
            for room, user in expired:
                del self._typing[(room, user)]
                for conn in self.hub.user_connections(user):
                    if conn.typing is not None:
                        conn.typing.discard(room)
                await self._publish(room, TypingPush(room, user, False))

    async def read(self, conn: Connection, room: str, seq: int) -> ReadResult:
        name, namespace = self.policy.resolve(room)
        if room not in conn.rooms:
            await self.policy.check_read(conn.user, name, namespace)
        if not namespace.history:
            raise CommandError(ErrorCode.BAD_REQUEST, f"{room} keeps no history to mark read")
        stored = await self._stored(self.store.set_read(room, conn.user, seq))
        await self._publish(room, ReadPush(room, conn.user, stored))
        return ReadResult(room, stored)

    async def room_presence(
        self, user: str | None, room: str, *, joined: bool = False
    ) -> list[str]:
        name, namespace = self.policy.resolve(room)
        if user is not None and not joined:
            await self.policy.check_read(user, name, namespace)
        if not namespace.presence:
            raise CommandError(ErrorCode.BAD_REQUEST, f"presence is off in {room}")
        return await self.presence.users(room)

    async def _retention(self) -> None:
        while True:
            await asyncio.sleep(self.settings.storage.retention_interval)
            for name, namespace in self.settings.namespaces.items():
                if not namespace.history or not (namespace.history_ttl or namespace.history_max):
                    continue
                older_than = (
                    now_ms() - namespace.history_ttl * 1000 if namespace.history_ttl else None
                )
                try:
                    deleted = await self.store.prune(
                        name, older_than_ms=older_than, keep_last=namespace.history_max or None
                    )
                except StorageError as error:
                    log.warning("retention of %s failed, retrying later: %s", name, error)
                    continue
                if deleted:
                    log.info("retention removed %d messages of %s:*", deleted, name)

    # Membership and the follow graph (REST) ----------------------------------------

    async def add_member(self, room: str, user: str) -> None:
        self.policy.resolve(room)
        if await self._stored(self.store.add_member(room, user)):
            await self._publish(user_room(user), MembershipChange(user, room, True, "member_added"))

    async def remove_member(self, room: str, user: str) -> None:
        self.policy.resolve(room)
        await self._stored(self.store.remove_member(room, user))
        # Also takes out connections that joined with a room token.
        await self._publish(user_room(user), MembershipChange(user, room, False, "member_removed"))

    async def members(self, room: str) -> list[str]:
        self.policy.resolve(room)
        return await self._stored(self.store.members(room))

    async def follow(self, user: str, target: str) -> None:
        if await self._stored(self.store.follow(user, target)):
            for namespace in self.policy.namespaces_joined_by("followers"):
                change = MembershipChange(user, f"{namespace}:{target}", True, "followed")
                await self._publish(user_room(user), change)

    async def unfollow(self, user: str, target: str) -> None:
        if await self._stored(self.store.unfollow(user, target)):
            for namespace in self.policy.namespaces_joined_by("followers"):
                change = MembershipChange(user, f"{namespace}:{target}", False, "unfollowed")
                await self._publish(user_room(user), change)

    async def disconnect_user(self, user: str, reason: str) -> None:
        await self._publish(user_room(user), UserDisconnect(user, reason))

    # Notifications -----------------------------------------------------------------

    async def notify(
        self,
        *,
        to: Sequence[str] | None,
        followers_of: str | None,
        type: str,
        data_json: str,
        actor: str | None,
    ) -> int:
        """Store and push a notification; returns how many recipients got it."""
        if to is not None:
            stored = await self._stored(self.store.add_notifications(to, type, data_json, actor))
            await self._push_notifications(stored)
            return len(stored)
        assert followers_of is not None
        recipients = 0
        after: str | None = None
        while True:
            page = await self._stored(
                self.store.add_follower_notifications(
                    followers_of, type, data_json, actor, after=after, limit=FOLLOWER_BATCH
                )
            )
            if not page:
                return recipients
            recipients += len(page)
            await self._push_notifications(page)
            after = page[-1].user

    async def _push_notifications(self, notifications: Sequence[Notification]) -> None:
        self.metrics.notifications.inc(len(notifications))
        await self._publish_many(
            [(user_room(n.user), NotificationPush(to_item(n))) for n in notifications]
        )

    async def notifications(
        self, user: str, *, after: int | None, limit: int, unread: bool
    ) -> NotificationsResult:
        page = await self._stored(
            self.store.notifications(user, after=after, limit=limit, unread_only=unread)
        )
        return NotificationsResult(list(map(to_item, page.items)), page.unread_count)

    async def mark_notifications_read(
        self, user: str, *, ids: Sequence[int] | None, up_to: int | None
    ) -> int:
        return await self._stored(self.store.mark_notifications_read(user, ids=ids, up_to=up_to))
