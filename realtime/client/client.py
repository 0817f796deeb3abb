"""``RealtimeClient``: one logical connection that stays up until ``close()``.

It owns every task it starts (``spawn``); ``close()`` cancels and awaits them all.
The connection loop (``_run``) opens a socket, sends ``connect`` with every room
the app is in (each with ``since`` and ``epoch``), and waits for the socket to
close; then it waits (backoff with full jitter, or what the server advised) and
starts again. Closes that a retry cannot mend (bad token, forbidden, kicked by
the backend) end it in ``CLOSED``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from protocol.codec import JSON, MSGPACK

from .backoff import Backoff, advised_delay, reason_text, retry_after
from .events import (
    ClientClosed,
    ClientError,
    Event,
    JoinedEvent,
    Message,
    MessageEvent,
    Notification,
    NotificationEvent,
    NotificationsPage,
    PresenceEvent,
    ReadEvent,
    RequestTimeout,
    ServerError,
    State,
    StateEvent,
    TypingEvent,
)
from .link import Link, LinkClosed, OnReply
from .queue import EventQueue
from .room import Room

log = logging.getLogger(__name__)

TokenSource = Callable[[], Awaitable[str]]

# Closes after which connecting again cannot help (4001 and 4010 only without get_token).
_FINAL_CLOSES = {4000: "bad frame", 4003: "forbidden", 4004: "disconnected by the backend"}
_TOKEN_CLOSES = {4001, 4010}
NOTIFICATION_PAGE = 200
RECENT_NOTIFICATIONS = 4096
"""Notification ids remembered to drop the ones seen twice (live and fetched)."""


class _Final(ClientError):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed for good: {code} {reason}")
        self.code = code
        self.reason = reason


class RealtimeClient:
    """An asyncio client of the realtime server. See ``docs/python-client.md``."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: TokenSource | None = None,
        encoding: str = "json",
        backoff: Backoff | None = None,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        max_events: int = 1000,
        refresh_margin: float = 60.0,
        recover_notifications: bool = True,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_frame: int = 2**24,
    ) -> None:
        if (token is None) == (get_token is None):
            raise ValueError("give token or get_token (an async callable returning one)")
        if encoding not in ("json", "msgpack"):
            raise ValueError("encoding is 'json' or 'msgpack'")
        self.url = url
        self.backoff = backoff or Backoff()
        self.request_timeout = request_timeout
        self.queue = EventQueue(max_events)
        self.user: str | None = None
        self.session: str | None = None
        self.expires_at: int | None = None
        self.reconnects = 0
        """Connections made after the first (how often the client had to reconnect)."""
        self._token = token
        self._get_token = get_token
        self._subprotocol = (MSGPACK if encoding == "msgpack" else JSON).subprotocol
        self._connect_timeout = connect_timeout
        self._refresh_margin = refresh_margin
        self._recover_notifications = recover_notifications
        self._ws_options: dict[str, Any] = {
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "max_size": max_frame,
            "open_timeout": connect_timeout,
            "close_timeout": 2,
        }
        self._state = State.CONNECTING
        self._rooms: dict[str, Room] = {}
        self._link: Link | None = None
        self._online = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._link_tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._closed = False
        self._close_called = False
        self._ever_online = False
        self._last_notification: int | None = None
        self._recent_notifications: OrderedDict[int, None] = OrderedDict()
        self._notifications_held: list[Notification] | None = None

    # Lifecycle --------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def link(self) -> Link | None:
        """The connection, while one is up and ``connect`` was answered."""
        return self._link

    async def connect(self, timeout: float | None = 30.0) -> None:  # noqa: ASYNC109
        """Connect (and keep reconnecting until ``close()``); returns once online.

        Raises ``ClientClosed`` if the server refuses for good (a bad token, say),
        ``RequestTimeout`` if not online within ``timeout`` (it goes on trying).
        """
        if self._closed:
            raise ClientClosed("the client is closed")
        if self._runner is None:
            self._first = asyncio.get_running_loop().create_future()
            self._runner = asyncio.create_task(self._run(), name="realtime-client")
        assert self._first is not None
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._first)
        except TimeoutError:
            raise RequestTimeout(f"not connected within {timeout:g}s; still trying") from None

    async def close(self) -> None:
        """Close the connection, stop every task, fail unacknowledged sends."""
        if self._close_called:
            return
        self._close_called = True
        self._closed = True
        self._online.set()  # wake requests waiting for a connection: they fail now
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        await self._drop_link()
        self._finish(ClientClosed("the client was closed"), None, "")
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> RealtimeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def events(self) -> AsyncIterator[Event]:
        """Every event, in order, until the client is closed (one consumer)."""
        while True:
            event = await self.queue.get()
            if event is None:
                return
            yield event

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a task this client owns: ``close()`` cancels it."""
        task = asyncio.create_task(coro, name=f"realtime-client: {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._link_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    # Rooms ------------------------------------------------------------------------------

    def room(self, name: str) -> Room | None:
        return self._rooms.get(name)

    @property
    def rooms(self) -> dict[str, Room]:
        return dict(self._rooms)

    async def join(
        self,
        name: str,
        *,
        since: int | None = None,
        epoch: str | None = None,
        token: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Room:
        """Join a room (rejoined after every reconnect until ``leave``).

        ``since``/``epoch`` resume a stream the app stored earlier (``room.seq``,
        ``room.epoch``): the messages after it are delivered first.
        """
        room = self._rooms.get(name)
        if room is not None:
            await room.wait_joined()
            return room
        room = Room(self, name, since=since, epoch=epoch, token=token)
        self._rooms[name] = room
        wait = timeout if timeout is not None else self.request_timeout
        try:
            async with asyncio.timeout(wait):
                link = await self._wait_link()
                # A connect sent after the room was added has joined it already.
                if not room.joined:
                    try:
                        await link.request(
                            "join",
                            room.rejoin_request(),
                            timeout=wait,
                            on_reply=lambda ok: room.apply_join(ok, since, epoch),
                        )
                    except LinkClosed:
                        await room.wait_joined()  # the reconnect joins it
        except (TimeoutError, RequestTimeout):
            self._forget(room, ClientError(f"join {name}: timed out"))
            raise RequestTimeout(f"join {name}: not joined within {wait:g}s") from None
        except ServerError:
            self._forget(room, ClientError(f"join {name} failed"))
            raise
        return room

    async def leave(self, name: str) -> None:
        room = self._rooms.get(name)
        if room is None:
            return
        self._forget(room, ClientError(f"left {name}"))
        if self._link is not None:
            await self.request("leave", {"room": name}, retry=False)

    def _forget(self, room: Room, error: ClientError) -> None:
        if self._rooms.get(room.name) is room:
            del self._rooms[room.name]
        room.close(error)

    def room_caught_up(self) -> None:
        """A room finished filling a gap: after a reconnect, maybe all are recovered."""
        if (
            self._state is State.RECONNECTING
            and self._link is not None
            and not any(room.filling for room in self._rooms.values())
        ):
            self._set_state(State.RECOVERED)

    # Notifications ----------------------------------------------------------------------

    async def notifications(
        self, *, after: int | None = None, limit: int = 50, unread: bool = False
    ) -> NotificationsPage:
        ok = await self.request(
            "notifications", {"after": after, "limit": limit, "unread": unread or None}
        )
        return NotificationsPage(
            [Notification.from_wire(w) for w in ok.get("items") or ()],
            int(ok.get("unread_count") or 0),
        )

    async def unread_count(self) -> int:
        return (await self.notifications(limit=1)).unread_count

    async def mark_read(self, *, ids: list[int] | None = None, up_to: int | None = None) -> int:
        """Mark notifications read (``ids`` or all ``up_to`` an id); returns the unread count."""
        if (ids is None) == (up_to is None):
            raise ValueError("give ids or up_to")
        ok = await self.request("notifications.read", {"ids": ids, "up_to": up_to})
        return int(ok["unread_count"])

    # Requests ---------------------------------------------------------------------------

    async def request(
        self,
        op: str,
        args: dict[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        on_reply: OnReply | None = None,
        retry: bool = True,
    ) -> dict[str, Any]:
        """Send a command once connected; its ``ok``, or ``ServerError``.

        ``timeout`` (default ``request_timeout``) bounds the wait for a connection
        and the answer. With ``retry``, a connection lost before the answer is
        retried on the next one (for commands safe to repeat).
        """
        wait = self.request_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(wait):
                while True:
                    link = await self._wait_link()
                    try:
                        return await link.request(op, args, timeout=wait, on_reply=on_reply)
                    except LinkClosed:
                        if not retry:
                            raise
                        await asyncio.sleep(0)  # the connection loop notices the loss
        except TimeoutError:
            raise RequestTimeout(f"{op}: no answer within {wait:g}s") from None

    async def _wait_link(self) -> Link:
        while True:
            if self._closed:
                raise ClientClosed("the client is closed")
            link = self._link
            if link is not None and link.open:
                return link
            self._online.clear()
            await self._online.wait()

    # The connection loop ----------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            online = False
            reason = ""
            advised: float | None = None
            self._last_close = (None, "")
            try:
                online = await self._session()
            except InvalidStatus as error:
                status = error.response.status_code
                reason = f"HTTP {status}"
                advised = retry_after(error.response.headers.get("Retry-After"))
                if status in (401, 403) and self._get_token is None:
                    self._finish(ClientClosed(f"refused: {reason}"), None, reason)
                    return
            except _Final as final:
                self._finish(ClientClosed(str(final)), final.code, final.reason)
                return
            except (OSError, TimeoutError, InvalidHandshake, LinkClosed, RequestTimeout) as error:
                reason = f"{type(error).__name__}: {error}"
            except ServerError as error:  # connect refused, but not for good
                reason = str(error)
            finally:
                await self._drop_link()
            code, close_reason = self._closed_with()
            if code is not None:
                if code in _FINAL_CLOSES or (code in _TOKEN_CLOSES and self._get_token is None):
                    text = reason_text(close_reason) or _FINAL_CLOSES.get(code, "unauthorized")
                    self._finish(ClientClosed(f"closed for good: {code} {text}"), code, text)
                    return
                reason = close_reason
                advised = advised_delay(close_reason)
            if online:
                attempt = 0
            delay = advised if advised is not None else self.backoff.delay(attempt)
            attempt += 1
            log.info("connection lost (%s %s); reconnecting in %.2fs", code, reason, delay)
            self._set_state(State.RECONNECTING, code, reason_text(reason), delay)
            await asyncio.sleep(delay)

    _last_close: tuple[int | None, str] = (None, "")

    def _closed_with(self) -> tuple[int | None, str]:
        """How the last connection closed (code None: it never opened)."""
        return self._last_close

    async def _session(self) -> bool:
        """One connection, from opening to closing; True if it got online."""
        ws = await ws_connect(
            self.url, subprotocols=[Subprotocol(self._subprotocol)], **self._ws_options
        )
        link = Link(ws, self._on_push)
        self._link_pending = link
        online = False
        try:
            token = await self._fresh_token()
            requests = {name: room.rejoin_request() for name, room in self._rooms.items()}
            positions = {name: (room.known(), room.epoch) for name, room in self._rooms.items()}
            try:
                await link.request(
                    "connect",
                    {"token": token, "rooms": list(requests.values())},
                    timeout=self._connect_timeout,
                    on_reply=lambda ok: self._apply_connect(link, ok, positions),
                )
            except ServerError as error:
                if error.code == "unauthorized" and self._get_token is None:
                    raise _Final(4001, error.message) from None
                raise
            online = True
            self._online.set()
            self._after_connect(link)
            await link.wait_closed()
        finally:
            self._last_close = (link.close_code, link.close_reason)
            self._link_pending = None
            if self._link is link:
                self._link = None
            await link.close()
        return online

    _link_pending: Link | None = None

    def _apply_connect(
        self, link: Link, ok: dict[str, Any], positions: dict[str, tuple[int | None, str | None]]
    ) -> None:
        """The connect reply, in the reader: every room's position before any push."""
        self.user = ok.get("user")
        self.session = ok.get("session")
        expires = ok.get("expires_at")
        self.expires_at = int(expires) if expires is not None else None
        self._link = link
        for entry in ok.get("rooms") or ():
            name = entry.get("room")
            room = self._rooms.get(name)
            if room is None:  # the user's own room, joined by the server
                room = self._rooms[name] = Room(self, name)
            since, epoch = positions.get(name, (None, None))
            error = entry.get("error")
            if isinstance(error, dict):
                failure = ServerError(str(error.get("code")), str(error.get("message")), "join")
                room.join_failed(failure)
                if room.joined or room.delivered is not None:
                    room.removed(f"rejoin failed: {failure.code}")
                self._forget(room, failure)
                continue
            room.apply_join(entry, since, epoch)
        if not self._ever_online:
            self._ever_online = True
            self._set_state(State.ONLINE)
        else:
            self.reconnects += 1
            self.room_caught_up()

    def _after_connect(self, link: Link) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_result(None)
        if self._get_token is not None and self.expires_at is not None:
            self._link_task(self._refresh(link), "refresh")
        if self._recover_notifications:
            self._link_task(self._catch_up_notifications(), "notifications")

    def _link_task(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self._link_tasks.add(self.spawn(coro, name))

    async def _drop_link(self) -> None:
        self._link = None
        link, self._link_pending = self._link_pending, None
        tasks = list(self._link_tasks)
        self._link_tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if link is not None:
            await link.close()
        for room in self._rooms.values():
            room.link_lost()

    def _finish(self, error: ClientClosed, code: int | None, reason: str) -> None:
        """The end: every room closed, every waiter told, the event queue closed."""
        self._closed = True
        self._online.set()
        for room in list(self._rooms.values()):
            room.close(error)
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self._first is not None and not self._first.done():
            self._first.set_exception(error)
            self._first.exception()
        if self._state is not State.CLOSED:
            self._set_state(State.CLOSED, code, reason)
        self.queue.close()

    def _set_state(
        self,
        state: State,
        code: int | None = None,
        reason: str = "",
        retry_in: float | None = None,
    ) -> None:
        previous, self._state = self._state, state
        if previous is not state or retry_in is not None:
            self.queue.push(StateEvent(state, previous, code, reason, retry_in))

    # Tokens -----------------------------------------------------------------------------

    async def _fresh_token(self) -> str:
        if self._get_token is None:
            assert self._token is not None
            return self._token
        async with asyncio.timeout(self.request_timeout):
            self._token = await self._get_token()
        return self._token

    async def _refresh(self, link: Link) -> None:
        """Before the token expires, get a new one and hand it to the server."""
        failures = 0
        while link.open and self.expires_at is not None:
            lifetime = self.expires_at - time.time()
            margin = min(self._refresh_margin, max(lifetime, 0) / 5)
            await asyncio.sleep(max(lifetime - margin, 0))
            try:
                token = await self._fresh_token()
                ok = await link.request("refresh", {"token": token}, timeout=self.request_timeout)
            except (ServerError, RequestTimeout) as error:
                failures += 1
                log.warning("token refresh failed (%s); retrying", error)
                await asyncio.sleep(self.backoff.delay(failures))
                continue
            failures = 0
            self.expires_at = int(ok["expires_at"])

    # Pushes -----------------------------------------------------------------------------

    async def _on_push(self, push: dict[str, Any]) -> None:
        """One push, in the reader. Waits only where the queue says events wait."""
        kind = push.get("push")
        queue = self.queue
        room = self._rooms.get(push.get("room") or "")
        if kind == "message":
            if room is None:
                return
            message = Message.from_wire(push)
            if message.seq is None or room.epoch == "":
                await queue.put(MessageEvent(message))
            else:
                room.offer(message)
        elif kind == "typing":
            queue.offer(TypingEvent(push["room"], push["user"], bool(push["active"])))
        elif kind == "presence":
            if room is not None and room.presence is not None:
                users = [u for u in room.presence if u != push["user"]]
                room.presence = [*users, push["user"]] if push["event"] == "join" else users
            await queue.put(PresenceEvent(push["room"], push["user"], push["event"]))
        elif kind == "read":
            await queue.put(ReadEvent(push["room"], push["user"], int(push["seq"])))
        elif kind == "notification":
            await self._notification(Notification.from_wire(push), recovered=False)
        elif kind == "joined":
            await self._joined(push)
        elif kind == "left":
            if room is not None:
                self._forget(room, ClientError(f"left {room.name}"))
                room.removed(str(push.get("reason") or ""))
        elif kind == "lagged" and room is not None:
            room.lagged(int(push["seq"]))
        # Unknown pushes are left alone: the server may add kinds.

    async def _joined(self, push: dict[str, Any]) -> None:
        name = push["room"]
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = Room(self, name)
        room.apply_join(push, room.known(), room.epoch)
        await self.queue.put(JoinedEvent(name, str(push.get("reason") or "")))

    async def _notification(self, item: Notification, *, recovered: bool) -> None:
        if self._notifications_held is not None and not recovered:
            self._notifications_held.append(item)  # the catch-up delivers it in order
            return
        if item.id in self._recent_notifications:
            return
        self._recent_notifications[item.id] = None
        if len(self._recent_notifications) > RECENT_NOTIFICATIONS:
            self._recent_notifications.popitem(last=False)
        self._last_notification = max(self._last_notification or 0, item.id)
        await self.queue.put(NotificationEvent(item, recovered))

    async def _catch_up_notifications(self) -> None:
        """After a reconnect, fetch the notifications pushed while we were away."""
        if self._last_notification is None:
            page = await self.notifications(limit=1)
            ids = [item.id for item in page.items]
            self._last_notification = max([self._last_notification or 0, *ids])
            return
        held: list[Notification] = []
        self._notifications_held = held
        try:
            while True:
                page = await self.notifications(
                    after=self._last_notification, limit=NOTIFICATION_PAGE
                )
                for item in page.items:
                    await self._notification(item, recovered=True)
                if len(page.items) < NOTIFICATION_PAGE:
                    break
        finally:
            self._notifications_held = None
        for item in sorted(held, key=lambda n: n.id):
            await self._notification(item, recovered=False)
