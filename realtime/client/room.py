"""One joined room: its stream position, gap filling, and sends until acknowledged.

Delivery. ``delivered`` is the last seq handed to the app; ``target`` the highest
seq known to exist (from a join reply, a push, a ``lagged`` push). A message is
queued at once only when it is the next one, no gap is being filled and the
event queue has room; otherwise it is kept (``pending``, bounded) and the filler
task queues ``delivered + 1``, ``delivered + 2`` … up to ``target``, from what was
kept or, page by page, from ``history``. So the app gets each seq once, in order,
and a hole only when the server no longer has the messages (``lost``).

Sends. Each ``send`` gets a ``client_id`` and stays in the outbox until the server
acknowledges it; after a reconnect everything unacknowledged is sent again, in
order, with the same ``client_id``: the server stores it once whatever happened.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .events import (
    Ack,
    ClientClosed,
    ClientError,
    HistoryPage,
    LeftEvent,
    Message,
    MessageEvent,
    RecoveryEvent,
    RequestTimeout,
    ServerError,
)
from .link import Link, LinkClosed

if TYPE_CHECKING:
    from .client import RealtimeClient

log = logging.getLogger(__name__)

HISTORY_PAGE = 200
"""The protocol's largest history page."""
PENDING_LIMIT = 1000
"""Messages a room keeps while it cannot queue them; past that it reads history again."""
TYPING_INTERVAL = 2.0
"""``typing(True)`` is sent again at most this often while it stays active."""
RETRY_CODES = frozenset({"unavailable", "rate_limited"})
"""Send errors after which nothing was stored: the send is tried again."""


@dataclass
class _Send:
    client_id: str
    body: Any
    future: asyncio.Future[Ack]
    link: Link | None = None
    """The connection it is in flight on, if any."""
    failures: int = 0


@dataclass
class _Gap:
    since: int
    lagged: bool
    from_history: int = field(default=0)


class Room:
    """A room this client is in. Made by ``RealtimeClient.join``; not built by apps."""

    def __init__(
        self,
        client: RealtimeClient,
        name: str,
        *,
        since: int | None = None,
        epoch: str | None = None,
        token: str | None = None,
    ) -> None:
        self.name = name
        self.epoch = epoch
        self.presence: list[str] | None = None
        """Users present, as of the join and the presence events since."""
        self.delivered = since
        self.target = since or 0
        self.joined = False
        self._client = client
        self._token = token
        self._pending: dict[int, Message] = {}
        self._filler: asyncio.Task[None] | None = None
        self._gap: _Gap | None = None
        self._outbox: dict[str, _Send] = {}
        self._typing_active = False
        self._typing_sent = 0.0
        self._joined_once = asyncio.get_running_loop().create_future()
        self._closed: ClientError | None = None

    def __repr__(self) -> str:
        return f"<Room {self.name} seq={self.delivered} epoch={self.epoch!r}>"

    # What the app calls ---------------------------------------------------------------

    @property
    def seq(self) -> int | None:
        """The last seq delivered to the app (what to store to resume with ``since``)."""
        return self.delivered

    @property
    def filling(self) -> bool:
        return self._filler is not None

    async def send(
        self,
        body: Any,
        *,
        client_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Ack:
        """Send ``body``; returns once the server stored it (once, however often it is sent).

        Waits through reconnects until acknowledged. With ``timeout``, gives up after
        that many seconds with ``RequestTimeout``: the message may have been stored;
        sending it again with the same ``client_id`` stores nothing new and returns
        its seq. A ``ServerError`` (forbidden, too large…) means it was not stored.
        """
        if self._closed is not None:
            raise self._closed
        cid = client_id or secrets.token_hex(16)
        entry = self._outbox.get(cid)
        if entry is None:
            future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
            entry = _Send(cid, body, future)
            self._outbox[cid] = entry
            self.flush()
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(entry.future)
        except TimeoutError:
            if self._outbox.get(cid) is entry:
                del self._outbox[cid]
            raise RequestTimeout(f"send {cid}: not acknowledged within {timeout:g}s") from None

    async def typing(self, active: bool = True) -> None:
        """Say the user is typing (sent at most every 2 s while active) or stopped."""
        now = time.monotonic()
        if active and self._typing_active and now - self._typing_sent < TYPING_INTERVAL:
            return
        if not active and not self._typing_active:
            return
        self._typing_active = active
        self._typing_sent = now
        await self._client.request("typing", {"room": self.name, "active": active})

    async def read(self, seq: int) -> int:
        """Mark the room read up to ``seq``; returns the stored mark (it never moves back)."""
        ok = await self._client.request("read", {"room": self.name, "seq": seq})
        return int(ok["seq"])

    async def history(
        self, *, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> HistoryPage:
        """A page of stored messages (ascending), as the ``history`` op returns it."""
        ok = await self._client.request(
            "history", {"room": self.name, "before": before, "after": after, "limit": limit}
        )
        return _page(ok)

    async def users(self) -> list[str]:
        """Who is present now (asks the server)."""
        ok = await self._client.request("presence", {"room": self.name})
        return list(ok["users"])

    async def leave(self) -> None:
        """Leave the room: no more events, no rejoin; unacknowledged sends fail."""
        await self._client.leave(self.name)

    # What the client calls --------------------------------------------------------------

    def rejoin_request(self) -> dict[str, Any]:
        """The ``join`` arguments that resume this room's stream where the app is."""
        request: dict[str, Any] = {"room": self.name}
        if self.epoch != "":  # "" is a room without history: nothing to resume
            request["since"] = self.known()
            request["epoch"] = self.epoch
        if self._token is not None:
            request["token"] = self._token
        return {k: v for k, v in request.items() if v is not None}

    def known(self) -> int | None:
        """The last seq of the unbroken run the client holds (delivered, then kept)."""
        if self.delivered is None:
            return None
        seq = self.delivered
        while seq + 1 in self._pending:
            seq += 1
        return seq

    async def wait_joined(self) -> None:
        await asyncio.shield(self._joined_once)

    def apply_join(
        self, ok: dict[str, Any], since: int | None, epoch: str | None, *, lagged: bool = False
    ) -> None:
        """Take a join reply (or ``joined`` push) for a join sent with ``since``/``epoch``.

        Runs in the reader before the next push, so the pushes after it meet the
        position it sets.
        """
        queue = self._client.queue
        self.joined = True
        self.presence = ok.get("presence")
        seq = int(ok.get("seq") or 0)
        new_epoch = str(ok.get("epoch") or "")
        missed = [Message.from_wire(wire) for wire in ok.get("missed") or ()]
        if not new_epoch:
            self.epoch = ""
        elif since is None:
            self.epoch = new_epoch
            self.delivered = self.target = seq
            self._pending.clear()
        elif (epoch is not None and epoch != new_epoch) or since > seq:
            self._reset(since, seq, new_epoch)
        else:
            self.epoch = new_epoch
            if self.delivered is None:
                self.delivered = since
            if ok.get("recovered"):
                queue.push(RecoveryEvent(self.name, "recovered", since, seq, len(missed), lagged))
            else:
                queue.push(RecoveryEvent(self.name, "gap", since, seq, lagged=lagged))
                self._gap = _Gap(since, lagged)
            for message in missed:
                self.offer(message)
            self.target = max(self.target, seq)
            self._fill_or_report()
        if not self._joined_once.done():
            self._joined_once.set_result(None)
        self.flush()

    def join_failed(self, error: ServerError) -> None:
        if not self._joined_once.done():
            self._joined_once.set_exception(error)
            self._joined_once.exception()  # the joiner may be gone; nobody else need see it

    def offer(self, message: Message) -> None:
        """A message with a seq, pushed or missed: queue it now or keep it for the filler."""
        seq = message.seq
        if seq is None or self.delivered is None or seq <= self.delivered:
            return
        self.target = max(self.target, seq)
        queue = self._client.queue
        if self._filler is None and seq == self.delivered + 1 and queue.has_room():
            queue.push(MessageEvent(message))
            self.delivered = seq
            return
        if len(self._pending) < PENDING_LIMIT:
            self._pending[seq] = message
        self._fill_or_report()

    def lagged(self, seq: int) -> None:
        """The server stopped this room's stream after ``seq``: rejoin from where we are."""
        self.target = max(self.target, seq)
        self.joined = False
        self._client.spawn(self._rejoin(), f"rejoin {self.name}")

    def link_lost(self) -> None:
        """The connection is gone: in-flight sends are sent again after the rejoin."""
        self.joined = False
        self._stop_filler()
        for entry in self._outbox.values():
            entry.link = None

    def flush(self) -> None:
        """Send whatever is unacknowledged and not in flight on the current connection."""
        link = self._client.link
        if link is None or not self.joined:
            return
        for entry in list(self._outbox.values()):
            if entry.link is not link:
                entry.link = link
                self._client.spawn(self._attempt(entry, link), f"send {entry.client_id}")

    def close(self, error: ClientError) -> None:
        """Out of the room for good: stop filling, fail what is unacknowledged."""
        self._closed = self._closed or error
        self.joined = False
        self._stop_filler()
        for entry in self._outbox.values():
            if not entry.future.done():
                entry.future.set_exception(error)
                entry.future.exception()  # the sender may have given up waiting
        self._outbox.clear()
        if not self._joined_once.done():
            self.join_failed(ServerError("not_found", str(error), "join"))

    def removed(self, reason: str) -> None:
        """The server took this connection out of the room (``left`` push)."""
        self.close(ClientError(f"left {self.name}: {reason}"))
        self._client.queue.push(LeftEvent(self.name, reason))

    # Inside ------------------------------------------------------------------------------

    def _reset(self, since: int, seq: int, epoch: str) -> None:
        self._stop_filler()
        self._pending.clear()
        self._gap = None
        self.epoch = epoch
        self.delivered = self.target = seq
        self._client.queue.push(RecoveryEvent(self.name, "reset", since, seq))

    def _stop_filler(self) -> None:
        filler, self._filler = self._filler, None
        if filler is not None and filler is not asyncio.current_task():
            filler.cancel()

    def _fill_or_report(self) -> None:
        assert self.delivered is not None
        if self.delivered < self.target:
            if self._filler is None and self.joined:
                self._filler = self._client.spawn(self._fill(), f"fill {self.name}")
        else:
            self._report_filled()

    def _report_filled(self) -> None:
        gap, self._gap = self._gap, None
        if gap is not None:
            event = RecoveryEvent(
                self.name, "filled", gap.since, self.target, gap.from_history, gap.lagged
            )
            self._client.queue.push(event)
        self._client.room_caught_up()

    async def _fill(self) -> None:
        queue = self._client.queue
        try:
            while self.delivered is not None and self.delivered < self.target:
                following = self.delivered + 1
                message = self._pending.pop(following, None)
                if message is not None:
                    await queue.put(MessageEvent(message))
                    self.delivered = following
                    continue
                if not await self._fill_from_history():
                    return
            for seq in [s for s in self._pending if self.delivered is None or s <= self.delivered]:
                del self._pending[seq]
        except (LinkClosed, ClientClosed):
            return  # the rejoin after the reconnect fills again
        finally:
            if self._filler is asyncio.current_task():
                self._filler = None
        if self.delivered is not None and self.delivered >= self.target:
            self._report_filled()

    async def _fill_from_history(self) -> bool:
        """Queue the next page of history after ``delivered``; False to stop filling."""
        assert self.delivered is not None
        after = self.delivered
        try:
            ok = await self._client.request(
                "history", {"room": self.name, "after": after, "limit": HISTORY_PAGE}
            )
        except RequestTimeout:
            return True  # try again
        except ServerError as error:
            log.warning("cannot fill %s from history: %s", self.name, error)
            return False
        page = _page(ok)
        if self.epoch and page.epoch != self.epoch:
            self._reset(after, self.target, page.epoch)
            return False
        messages = [m for m in page.messages if m.seq is not None and m.seq > after]
        if not messages or messages[0].seq != after + 1:
            # Expired (retention) or reset: say so, and go on from what exists.
            end = messages[0].seq - 1 if messages and messages[0].seq else self.target
            self._client.queue.push(RecoveryEvent(self.name, "lost", after, end))
            self.delivered = end
        for message in messages:
            assert message.seq is not None
            if message.seq <= self.delivered:
                continue
            await self._client.queue.put(MessageEvent(message))
            self.delivered = message.seq
            self._pending.pop(message.seq, None)
            if self._gap is not None:
                self._gap.from_history += 1
        self.target = max(self.target, self.delivered)
        return True

    async def _rejoin(self) -> None:
        since, epoch = self.known(), self.epoch
        try:
            await self._client.request(
                "join",
                self.rejoin_request(),
                on_reply=lambda ok: self.apply_join(ok, since, epoch, lagged=True),
                retry=False,
            )
        except (LinkClosed, RequestTimeout, ClientClosed):
            return  # the reconnect rejoins it
        except ServerError as error:
            log.warning("rejoining %s after a lagged stream failed: %s", self.name, error)

    async def _attempt(self, entry: _Send, link: Link) -> None:
        args = {"room": self.name, "body": entry.body, "client_id": entry.client_id}
        try:
            ok = await link.request("send", args, timeout=self._client.request_timeout)
        except (LinkClosed, RequestTimeout):
            if entry.link is link:
                entry.link = None
            if link.open and self._outbox.get(entry.client_id) is entry:
                self.flush()  # no answer on a live connection: ask again, same client_id
            return
        except ServerError as error:
            if error.code not in RETRY_CODES:
                self._outbox.pop(entry.client_id, None)
                if not entry.future.done():
                    entry.future.set_exception(error)
                return
            entry.failures += 1
            await asyncio.sleep(self._client.backoff.delay(entry.failures))
            if entry.link is link:
                entry.link = None
            self.flush()
            return
        self._outbox.pop(entry.client_id, None)
        if not entry.future.done():
            entry.future.set_result(
                Ack(
                    room=self.name,
                    seq=ok.get("seq"),
                    ts=int(ok.get("ts") or 0),
                    client_id=entry.client_id,
                    duplicate=bool(ok.get("duplicate", False)),
                )
            )


def _page(ok: dict[str, Any]) -> HistoryPage:
    return HistoryPage(
        messages=[Message.from_wire(w) for w in ok.get("messages") or ()],
        more=bool(ok.get("more")),
        epoch=str(ok.get("epoch") or ""),
    )
