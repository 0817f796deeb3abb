"""One client connection as the rest of the server sees it.

Writes are ready-made frames: no task, queue or coroutine per message. Frames for
one connection that come up in the same event-loop iteration leave in one write at
the end of it (``Outbox``): a burst of pushes (a join storm's presence events, a
batch of messages committed together) costs one system call per connection, not
one per push. The transport's own buffer is the per-connection send buffer; one
slow client never holds up anyone else.

A reader that falls behind degrades before it is cut off. Past the soft mark its
typing and presence pushes are left out, and the next stored message of a room
stops that room's stream for it: it gets one ``lagged`` push (it has everything
up to that seq) and leaves the room's fan-out, while it stays a member. A ``join``
with ``since`` attaches it again like any joiner, with what it missed in the
reply. Past the hard mark (what still comes: replies, notifications) it is
closed with 4009.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Protocol

from protocol import CloseCode, Codec
from protocol.outgoing import LaggedPush, MessagePush, Outgoing, PresencePush, TypingPush

from .frames import encode_frame
from .logs import unbound
from .metrics import Metrics

if TYPE_CHECKING:
    from .auth import Identity

log = logging.getLogger(__name__)

CloseCallback = Callable[[int, str], None]


class Sink(Protocol):
    """Where a connection's bytes go: its TCP transport, or a polling session's buffer."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...

    def abort(self) -> None: ...


class Outbox:
    """Connections with frames waiting; all written at the end of the loop iteration."""

    __slots__ = ("_dirty", "_schedule", "_scheduled", "metrics", "stopped")

    def __init__(
        self,
        schedule: Callable[[Callable[[], None]], object] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``schedule`` runs the flush later; by default at the end of this loop iteration."""
        self.metrics = metrics or Metrics()
        # Connections whose stream of the room being delivered just stopped (lagged):
        # the room takes them out after its fan-out loop.
        self.stopped: list[Connection] = []
        self._dirty: list[Connection] = []
        self._scheduled = False
        self._schedule = schedule or (
            lambda flush: asyncio.get_running_loop().call_soon(flush, context=unbound())
        )

    def mark(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._schedule(self.flush)

    def broadcast(
        self, conns: Iterable[Connection], frame: bytes, push: Outgoing, room: str
    ) -> int:
        """Queue one push of ``room`` for many connections: ``deliver`` without the calls.

        This is the fan-out loop, run once per recipient per push: it touches only
        what it must. Connections that hold pushes back, are closing or are past
        the soft mark take the ordinary path.
        """
        dirty = self._dirty
        marked = len(dirty)
        count = 0
        for conn in conns:
            if conn._held is None and not conn.closing and not conn.degraded:
                pending = conn._pending
                if pending is None:
                    conn._pending = frame
                    dirty.append(conn)
                elif isinstance(pending, list):
                    pending.append(frame)
                else:
                    conn._pending = [pending, frame]
                count += 1
            else:
                count += conn.deliver(frame, push, room)
        if len(dirty) > marked and not self._scheduled:
            self._scheduled = True
            self._schedule(self.flush)
        return count

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        for conn in dirty:
            # One connection's failure must not leave the others' frames unwritten.
            try:
                conn.flush()
            except Exception:
                log.exception("writing to %s failed; dropping the connection", conn)
                conn.abort()


class Connection:
    __slots__ = (
        "_granted",
        "_held",
        "_held_bytes",
        "_on_close",
        "_outbox",
        "_pending",
        "_rooms",
        "_transport",
        "buffer_limit",
        "busy",
        "closing",
        "codec",
        "deadline",
        "degraded",
        "id",
        "identity",
        "last_seen",
        "soft_limit",
        "tail",
    )

    def __init__(
        self,
        connection_id: str,
        transport: Sink,
        codec: Codec,
        buffer_limit: int,
        on_close: CloseCallback,
        outbox: Outbox,
        soft_limit: int | None = None,
    ) -> None:
        """``buffer_limit`` is the hard mark (4009); ``soft_limit`` (by default half
        of it) where degrading starts; at or above the hard mark, never."""
        self.id = connection_id
        self.codec = codec
        self.buffer_limit = buffer_limit
        if soft_limit is None:
            soft_limit = buffer_limit // 2
        # At the hard mark the connection closes before it could degrade.
        self.soft_limit = min(soft_limit, buffer_limit)
        # Set when a write found the buffer past the soft mark: pushes take the slow
        # path (``deliver``), which looks at the buffer and clears it once below.
        self.degraded = False
        self.identity: Identity | None = None
        self._rooms: set[str] = set()
        # Rooms joined with a room token (the "members" send rule holds without a
        # store lookup). Made on first use: most connections never need it.
        self._granted: set[str] | None = None
        self.closing = False
        # True while a command of this connection is being carried out (SIGTERM
        # waits for it before closing).
        self.busy = False
        self.last_seen = time.monotonic()
        # When the token expires (Unix time, leeway included); see expiry.py.
        self.deadline = 0.0
        self._transport = transport
        self._on_close = on_close
        self._outbox = outbox
        # One frame as it is, several in a list: the usual single frame per iteration
        # allocates no object the garbage collector tracks (a list per recipient per
        # push made full collections frequent, and each one pauses every connection).
        self._pending: bytes | list[bytes] | None = None
        self._held: list[bytes] | None = None
        self._held_bytes = 0
        # Called at each write with something in it; what it returns goes last
        # (a Socket.IO connection's recovery offset). Most connections have none.
        self.tail: Callable[[], bytes | None] | None = None

    @property
    def user(self) -> str:
        assert self.identity is not None, "connection is not authenticated"
        return self.identity.user

    @property
    def authenticated(self) -> bool:
        return self.identity is not None

    # Room state: changed only here ---------------------------------------------------

    @property
    def rooms(self) -> AbstractSet[str]:
        return self._rooms

    def in_room(self, room: str) -> bool:
        return room in self._rooms

    def enter(self, room: str) -> bool:
        """Count ``room`` as joined; True when it was not yet."""
        if room in self._rooms:
            return False
        self._rooms.add(room)
        return True

    def exit(self, room: str) -> bool:
        """Forget ``room`` (and its grant); True when it was joined."""
        if room not in self._rooms:
            return False
        self._rooms.discard(room)
        if self._granted is not None:
            self._granted.discard(room)
        return True

    def grant(self, room: str) -> None:
        """A room token let this connection join ``room``."""
        if self._granted is None:
            self._granted = set()
        self._granted.add(room)

    def is_granted(self, room: str) -> bool:
        return self._granted is not None and room in self._granted

    def authenticated_as(self, identity: Identity | None) -> None:
        """Set (or, when admission fails, clear) who this connection is."""
        self.identity = identity

    # Output ------------------------------------------------------------------------

    def send_frame(self, frame: bytes) -> bool:
        """Queue a ready frame for this iteration's write; False when closing."""
        if self.closing:
            return False
        if self._held is not None:
            return self._hold_frame(frame)
        pending = self._pending
        if pending is None:
            self._pending = frame
            self._outbox.mark(self)
        elif isinstance(pending, list):
            pending.append(frame)
        else:
            self._pending = [pending, frame]
        return True

    def flush(self) -> None:
        """Write what this iteration queued, in one write (``Outbox`` calls it)."""
        pending = self._pending
        self._pending = None
        if pending is None or self.closing:
            return
        transport = self._transport
        if transport.is_closing():
            return
        size = transport.get_write_buffer_size()
        if size > self.soft_limit:
            if size > self.buffer_limit:
                self._too_slow()
                return
            self.degraded = True
        if self.tail is not None and (last := self.tail()) is not None:
            pending = [*pending, last] if isinstance(pending, list) else [pending, last]
        transport.write(b"".join(pending) if isinstance(pending, list) else pending)

    def deliver(self, frame: bytes, push: Outgoing, room: str) -> bool:
        """Queue a push of ``room``, degrading past the soft mark; False when not sent."""
        if self.degraded and not self.closing:
            if self._transport.get_write_buffer_size() <= self.soft_limit:
                self.degraded = False
            elif isinstance(push, TypingPush | PresencePush):
                kind = "typing" if isinstance(push, TypingPush) else "presence"
                self._outbox.metrics.pushes_dropped.labels(kind).inc()
                return False
            elif isinstance(push, MessagePush) and push.message.seq is not None:
                self._stop(room, push.message.seq - 1)
                return False
        return self.send_frame(frame)

    def _stop(self, room: str, seq: int) -> None:
        """Stop sending the room's messages: the client has them up to ``seq``."""
        self._outbox.metrics.lagged.inc()
        self._outbox.stopped.append(self)
        self.send_frame(encode_frame(self.codec, LaggedPush(room, seq)))

    def send(self, message: Outgoing) -> bool:
        return self.send_frame(encode_frame(self.codec, message))

    def reply(self, message: Outgoing) -> bool:
        """Queue a reply ahead of any pushes being held (see ``hold``)."""
        return self.reply_frame(encode_frame(self.codec, message))

    def reply_frame(self, frame: bytes) -> bool:
        """Queue a ready frame ahead of any pushes being held."""
        if self.closing:
            return False
        held, self._held = self._held, None
        try:
            return self.send_frame(frame)
        finally:
            self._held = held

    @property
    def holding(self) -> bool:
        """Pushes are being kept back (a join is under way)."""
        return self._held is not None

    def hold(self) -> None:
        """Keep pushes back until ``release``: a join's reply goes out before its pushes."""
        if self._held is None:
            self._held = []
            self._held_bytes = 0

    def release(self) -> None:
        held = self._held
        self._held = None
        if held:
            self.send_frame(b"".join(held))

    def _hold_frame(self, frame: bytes) -> bool:
        assert self._held is not None
        self._held.append(frame)
        self._held_bytes += len(frame)
        if self._held_bytes > self.buffer_limit:
            self._too_slow()
            return False
        return True

    def _too_slow(self) -> None:
        if not self.closing:
            self._outbox.metrics.slow_consumers.inc()
        self.close(CloseCode.TOO_SLOW, "send buffer full: reading too slowly")

    def rebind(
        self,
        transport: Sink,
        codec: Codec,
        on_close: CloseCallback,
        convert: Callable[[bytes], bytes],
    ) -> None:
        """Write to another transport in another encoding from now on (an Engine.IO
        upgrade); frames still queued or held are converted with ``convert``.

        The rooms' fan-out sets are by encoding: the caller moves the connection
        there (``Hub.recode``).
        """
        if self._pending is not None:
            pending = self._pending
            self._pending = [convert(b"".join(pending) if isinstance(pending, list) else pending)]
        if self._held is not None:
            self._held = [convert(b"".join(self._held))] if self._held else []
        self._transport = transport
        self.codec = codec
        self._on_close = on_close

    def close(self, code: int, reason: str) -> None:
        """Start closing with a close code; idempotent, returns at once."""
        if self.closing:
            return
        self.end()
        self._on_close(code, reason)

    def end(self) -> None:
        """The WebSocket is closing, from either side: take no more frames.

        What was queued before still goes out, ahead of the close frame.
        """
        if self.closing:
            return
        self.flush()
        self.closing = True

    def abort(self) -> None:
        """Drop the connection at once (its transport failed)."""
        self.closing = True
        self._pending = None
        self._transport.abort()

    def __repr__(self) -> str:
        user = self.identity.user if self.identity else "-"
        return f"<Connection {self.id} user={user} {self.codec.subprotocol}>"
