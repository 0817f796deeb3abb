"""Room messages: sending (store, then fan out), history and read marks."""

from __future__ import annotations

from protocol import CommandError, ErrorCode
from protocol.outgoing import HistoryResult, Message, MessagePush, ReadPush, ReadResult, SendResult
from storage import NewMessage, Store

from .connection import Connection
from .convert import now_ms, to_message
from .metrics import Metrics
from .policy import Policy
from .publisher import Publisher
from .store_calls import StoreCalls


class Messages:
    def __init__(
        self,
        store: Store,
        stored: StoreCalls,
        policy: Policy,
        publisher: Publisher,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._stored = stored
        self._policy = policy
        self._publisher = publisher
        self._metrics = metrics

    async def send(
        self, conn: Connection, room: str, body_json: str, client_id: str | None
    ) -> SendResult:
        """The ``send`` command: the room's send rule applies."""
        name, namespace = self._policy.resolve(room)
        granted = conn.is_granted(room) or (conn.in_room(room) and namespace.send == "members")
        await self._policy.check_send(conn.user, name, namespace, granted)
        return await self.publish(room, conn.user, body_json, client_id)

    async def publish(
        self, room: str, user: str | None, body_json: str, client_id: str | None
    ) -> SendResult:
        """Store a message (when the namespace keeps history) and fan it out."""
        _, namespace = self._policy.resolve(room)
        size = len(body_json.encode())
        if size > namespace.max_body_bytes:
            raise CommandError(
                ErrorCode.TOO_LARGE,
                f"body is {size} bytes; {room} takes at most {namespace.max_body_bytes}",
            )
        if not namespace.history:
            ts = now_ms()
            push = MessagePush(Message(room, None, user, body_json, ts, client_id))
            # Stored nowhere: answered ok only when it really went out.
            await self._publisher.publish_certain(room, push)
            return SendResult(room, None, ts)
        appended = await self._stored(
            self._store.append(NewMessage(room, user, body_json, client_id))
        )
        stored = appended.message
        if not appended.duplicate:
            self._metrics.messages.inc()
            await self._publisher.publish(room, MessagePush(to_message(stored)))
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
        """A page of a room's history (``user`` None: the backend asks, no rule applies)."""
        name, namespace = self._policy.resolve(room)
        if user is not None and not joined:
            await self._policy.check_read(user, name, namespace)
        if not namespace.history:
            return HistoryResult([], False, "")
        page = await self._stored(
            self._store.history(room, before=before, after=after, limit=limit)
        )
        return HistoryResult(list(map(to_message, page.messages)), page.more, page.epoch)

    async def read(self, conn: Connection, room: str, seq: int) -> ReadResult:
        """The ``read`` command: a mark moves forward only, and never past the latest seq."""
        name, namespace = self._policy.resolve(room)
        if not conn.in_room(room):
            await self._policy.check_read(conn.user, name, namespace)
        if not namespace.history:
            raise CommandError(ErrorCode.BAD_REQUEST, f"{room} keeps no history to mark read")
        latest = (await self._stored(self._store.latest_seqs([room]))).get(room, 0)
        # Marks never move back, so a mark beyond the latest could never be undone.
        stored = await self._stored(self._store.set_read(room, conn.user, min(seq, latest)))
        await self._publisher.publish(room, ReadPush(room, conn.user, stored))
        return ReadResult(room, stored)
