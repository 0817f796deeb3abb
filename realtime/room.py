"""A room on this instance: its local connections and the order of its messages.

Rules of this module (no awaits here; the hub owns timers and store reads):

- A push is encoded once per encoding present in the room and the same frame
  bytes are written to every connection of that encoding.
- ``seq`` is the last message delivered here. Messages are delivered strictly in
  seq order, each once: an early one waits in ``ahead`` until the gap before it
  is filled (by the broker, or by the hub reading the store); an old one is
  dropped.
- A connection that joined with the store at seq S must see exactly the messages
  after S. If the room is behind S, the connection waits (``waiting``) until the
  room passes S; if the room is ahead, ``attach`` hands back the messages in
  between from ``recent`` so the join reply can carry them.
"""

from __future__ import annotations

from collections import deque

from protocol import Codec
from protocol.outgoing import Message, MessagePush, Outgoing

from .connection import Connection, Outbox
from .frames import encode_frame


class Room:
    __slots__ = (
        "ahead",
        "by_codec",
        "holds",
        "name",
        "outbox",
        "recent",
        "recent_size",
        "seq",
        "waiting",
    )

    def __init__(self, name: str, recent_size: int, outbox: Outbox) -> None:
        self.name = name
        self.outbox = outbox
        self.by_codec: dict[Codec, set[Connection]] = {}
        self.waiting: list[tuple[int, Connection]] = []
        self.seq: int | None = None
        self.ahead: dict[int, MessagePush] = {}
        # Made on the first message: most rooms (a user's own, say) rarely see one.
        self.recent: deque[MessagePush] | None = None
        self.recent_size = recent_size
        # Joins in progress: the room must not be dropped while one is under way.
        self.holds = 0

    # Membership --------------------------------------------------------------------

    def __len__(self) -> int:
        return sum(len(conns) for conns in self.by_codec.values()) + len(self.waiting)

    def __contains__(self, conn: Connection) -> bool:
        conns = self.by_codec.get(conn.codec)
        return (conns is not None and conn in conns) or any(c is conn for _, c in self.waiting)

    def attach(self, conn: Connection, store_seq: int) -> list[Message] | None:
        """Add a connection that has seen everything up to ``store_seq``.

        Returns the messages after ``store_seq`` already delivered here (to add to
        the join reply), or None when ``recent`` does not reach back that far: then
        read them from the store and call again with the newer seq.
        """
        if self.seq is None:
            self.seq = store_seq
            self._add(conn)
            self._drain_ahead()
            return []
        if self.seq < store_seq:
            self.waiting.append((store_seq, conn))
            return []
        if self.seq == store_seq:
            self._add(conn)
            return []
        recent = self.recent or ()
        caught_up = [p.message for p in recent if (p.message.seq or 0) > store_seq]
        if len(caught_up) != self.seq - store_seq:
            return None
        self._add(conn)
        return caught_up

    def detach(self, conn: Connection) -> bool:
        conns = self.by_codec.get(conn.codec)
        if conns is not None and conn in conns:
            conns.discard(conn)
            if not conns:
                del self.by_codec[conn.codec]
            return True
        before = len(self.waiting)
        self.waiting = [(floor, c) for floor, c in self.waiting if c is not conn]
        return len(self.waiting) != before

    def recode(self, conn: Connection, old: Codec) -> None:
        """The connection now takes ``conn.codec``'s frames, not ``old``'s."""
        conns = self.by_codec.get(old)
        if conns is not None and conn in conns:
            conns.discard(conn)
            if not conns:
                del self.by_codec[old]
            self._add(conn)

    def _add(self, conn: Connection) -> None:
        conns = self.by_codec.get(conn.codec)
        if conns is None:
            conns = self.by_codec[conn.codec] = set()
        conns.add(conn)

    # Delivery ---------------------------------------------------------------------

    def deliver(
        self, message: Outgoing, skip_user: str | None = None, *, waiting: bool = True
    ) -> int:
        """Write a push to every connection here; returns how many took it.

        ``waiting=False`` leaves out connections still waiting for the room to
        catch up with them (they have this message already).
        """
        delivered = 0
        name = self.name
        outbox = self.outbox
        for codec, conns in self.by_codec.items():
            frame = encode_frame(codec, message)
            if skip_user is None:
                delivered += outbox.broadcast(conns, frame, message, name)
            else:
                for conn in conns:
                    if conn.user != skip_user:
                        delivered += conn.deliver(frame, message, name)
        if waiting:
            # Never a stored message: those reach waiting connections by ``_promote``.
            for _, conn in self.waiting:
                if skip_user is None or conn.user != skip_user:
                    delivered += conn.deliver(encode_frame(conn.codec, message), message, name)
        if outbox.stopped:
            # Fell behind (lagged): out of the fan-out until they join again.
            for conn in outbox.stopped:
                self.detach(conn)
            outbox.stopped.clear()
        return delivered

    def offer(self, push: MessagePush) -> int:
        """Take a room message from the broker or the store; deliver what is in order.

        Returns the number of deliveries made. Afterwards ``has_gap`` says whether
        messages wait for an earlier one.
        """
        seq = push.message.seq
        assert seq is not None
        if self.seq is None:
            self.ahead[seq] = push
            return 0
        if seq <= self.seq:
            return 0
        if seq != self.seq + 1:
            self.ahead[seq] = push
            return 0
        return self._publish(push) + self._drain_ahead()

    @property
    def has_gap(self) -> bool:
        return bool(self.ahead)

    def first_ahead(self) -> int | None:
        return min(self.ahead) if self.ahead else None

    def skip_to(self, seq: int) -> int:
        """Give up on messages up to ``seq`` (gone from the store too) and move on."""
        if self.seq is not None and seq > self.seq:
            self.seq = seq
            for stale in [s for s in self.ahead if s <= seq]:
                del self.ahead[stale]
            self._promote(seq)
        return self._drain_ahead()

    def _drain_ahead(self) -> int:
        delivered = 0
        assert self.seq is not None
        for stale in [s for s in self.ahead if s <= self.seq]:
            del self.ahead[stale]
        while self.ahead:
            push = self.ahead.pop(self.seq + 1, None)
            if push is None:
                break
            delivered += self._publish(push)
        return delivered

    def _publish(self, push: MessagePush) -> int:
        seq = push.message.seq
        assert seq is not None
        if self.waiting:
            self._promote(seq - 1)
        self.seq = seq
        if self.recent is None:
            self.recent = deque(maxlen=self.recent_size)
        self.recent.append(push)
        return self.deliver(push, waiting=False)

    def _promote(self, seen: int) -> None:
        """Connections that have seen everything up to ``seen`` now take pushes."""
        still: list[tuple[int, Connection]] = []
        for floor, conn in self.waiting:
            if floor <= seen:
                self._add(conn)
            else:
                still.append((floor, conn))
        self.waiting = still
