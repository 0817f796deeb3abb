"""What the server sends: replies to commands and pushes.

Each type turns itself into a wire map with ``to_wire(embed)``. Bodies and
notification data are kept as JSON text from storage to the wire; ``embed`` is the
codec's way of placing that text in a map (JSON splices it in unparsed, msgpack
parses it once). Codecs call ``to_wire``; nothing else needs to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .errors import ErrorCode

Embed = Callable[[str], object]
WireMap = dict[str, object]


class Outgoing(Protocol):
    def to_wire(self, embed: Embed) -> WireMap: ...


# Records shared by pushes and results --------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A stored room message, as pushed and as listed in ``missed`` and ``history``."""

    room: str
    seq: int | None
    user: str | None
    body_json: str
    ts: int
    client_id: str | None = None

    def fields(self, embed: Embed) -> WireMap:
        wire: WireMap = {
            "room": self.room,
            "seq": self.seq,
            "user": self.user,
            "body": embed(self.body_json),
            "ts": self.ts,
        }
        if self.client_id is not None:
            wire["client_id"] = self.client_id
        return wire


@dataclass(frozen=True, slots=True)
class NotificationItem:
    id: int
    type: str
    data_json: str
    actor: str | None
    ts: int
    read: bool = False
    seen: bool = False
    archived: bool = False

    def fields(self, embed: Embed) -> WireMap:
        wire: WireMap = {
            "id": self.id,
            "type": self.type,
            "data": embed(self.data_json),
            "actor": self.actor,
            "ts": self.ts,
            "read": self.read,
        }
        # Present only when true, like a message's client_id: a new one has neither.
        if self.seen:
            wire["seen"] = True
        if self.archived:
            wire["archived"] = True
        return wire


# Pushes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessagePush:
    message: Message

    def to_wire(self, embed: Embed) -> WireMap:
        wire: WireMap = {"push": "message"}
        wire.update(self.message.fields(embed))
        return wire


@dataclass(frozen=True, slots=True)
class TypingPush:
    room: str
    user: str
    active: bool

    def to_wire(self, embed: Embed) -> WireMap:
        return {"push": "typing", "room": self.room, "user": self.user, "active": self.active}


@dataclass(frozen=True, slots=True)
class PresencePush:
    room: str
    user: str
    event: str  # "join" or "leave"

    def to_wire(self, embed: Embed) -> WireMap:
        return {"push": "presence", "room": self.room, "user": self.user, "event": self.event}


@dataclass(frozen=True, slots=True)
class ReadPush:
    room: str
    user: str
    seq: int

    def to_wire(self, embed: Embed) -> WireMap:
        return {"push": "read", "room": self.room, "user": self.user, "seq": self.seq}


@dataclass(frozen=True, slots=True)
class NotificationPush:
    item: NotificationItem

    def to_wire(self, embed: Embed) -> WireMap:
        wire: WireMap = {"push": "notification"}
        wire.update(self.item.fields(embed))
        return wire


@dataclass(frozen=True, slots=True)
class JoinedPush:
    """The server joined this connection to a room; carries what a ``join`` reply would."""

    reason: str
    result: JoinResult

    def to_wire(self, embed: Embed) -> WireMap:
        wire: WireMap = {"push": "joined", "reason": self.reason}
        wire.update(self.result.to_wire(embed))
        return wire


@dataclass(frozen=True, slots=True)
class LeftPush:
    room: str
    reason: str

    def to_wire(self, embed: Embed) -> WireMap:
        return {"push": "left", "room": self.room, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class LaggedPush:
    """The connection read too slowly: the room's messages after ``seq`` were not sent.

    It has every message of the room up to ``seq``; ``join`` with ``since=seq``
    sends the rest and resumes the stream.
    """

    room: str
    seq: int

    def to_wire(self, embed: Embed) -> WireMap:
        return {"push": "lagged", "room": self.room, "seq": self.seq}


# Results of commands (the ``ok`` of a reply) ----------------------------------------


@dataclass(frozen=True, slots=True)
class Empty:
    def to_wire(self, embed: Embed) -> WireMap:
        return {}


@dataclass(frozen=True, slots=True)
class JoinResult:
    room: str
    seq: int
    epoch: str
    missed: Sequence[Message] = ()
    recovered: bool = False
    presence: Sequence[str] | None = None

    def to_wire(self, embed: Embed) -> WireMap:
        wire: WireMap = {
            "room": self.room,
            "seq": self.seq,
            "epoch": self.epoch,
            "missed": [m.fields(embed) for m in self.missed],
            "recovered": self.recovered,
        }
        if self.presence is not None:
            wire["presence"] = list(self.presence)
        return wire


@dataclass(frozen=True, slots=True)
class RoomFailure:
    """A room of ``connect`` that could not be joined; the connection stands."""

    room: str
    code: ErrorCode
    message: str

    def to_wire(self, embed: Embed) -> WireMap:
        return {"room": self.room, "error": {"code": str(self.code), "message": self.message}}


@dataclass(frozen=True, slots=True)
class ConnectResult:
    user: str
    session: str
    rooms: Sequence[JoinResult | RoomFailure]
    ping_interval: float
    expires_at: int

    def to_wire(self, embed: Embed) -> WireMap:
        return {
            "user": self.user,
            "session": self.session,
            "rooms": [r.to_wire(embed) for r in self.rooms],
            "ping_interval": self.ping_interval,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True)
class SendResult:
    room: str
    seq: int | None
    ts: int
    duplicate: bool = False

    def to_wire(self, embed: Embed) -> WireMap:
        wire: WireMap = {"room": self.room, "seq": self.seq, "ts": self.ts}
        if self.duplicate:
            wire["duplicate"] = True
        return wire


@dataclass(frozen=True, slots=True)
class HistoryResult:
    messages: Sequence[Message]
    more: bool
    epoch: str

    def to_wire(self, embed: Embed) -> WireMap:
        return {
            "messages": [m.fields(embed) for m in self.messages],
            "more": self.more,
            "epoch": self.epoch,
        }


@dataclass(frozen=True, slots=True)
class ReadResult:
    room: str
    seq: int

    def to_wire(self, embed: Embed) -> WireMap:
        return {"room": self.room, "seq": self.seq}


@dataclass(frozen=True, slots=True)
class UsersResult:
    users: Sequence[str]

    def to_wire(self, embed: Embed) -> WireMap:
        return {"users": list(self.users)}


@dataclass(frozen=True, slots=True)
class NotificationsResult:
    items: Sequence[NotificationItem]
    unread_count: int
    unread_by_type: Mapping[str, int] = field(default_factory=dict)
    unseen_count: int = 0

    def to_wire(self, embed: Embed) -> WireMap:
        return {
            "items": [i.fields(embed) for i in self.items],
            "unread_count": self.unread_count,
            "unread_by_type": dict(self.unread_by_type),
            "unseen_count": self.unseen_count,
        }


@dataclass(frozen=True, slots=True)
class UnreadResult:
    unread_count: int

    def to_wire(self, embed: Embed) -> WireMap:
        return {"unread_count": self.unread_count}


@dataclass(frozen=True, slots=True)
class UnseenResult:
    unseen_count: int

    def to_wire(self, embed: Embed) -> WireMap:
        return {"unseen_count": self.unseen_count}


@dataclass(frozen=True, slots=True)
class PreferencesResult:
    """A user's notification preferences: the whole document, as the server keeps it."""

    document: Mapping[str, object]

    def to_wire(self, embed: Embed) -> WireMap:
        return dict(self.document)


@dataclass(frozen=True, slots=True)
class RefreshResult:
    expires_at: int

    def to_wire(self, embed: Embed) -> WireMap:
        return {"expires_at": self.expires_at}


Result = (
    Empty
    | JoinResult
    | ConnectResult
    | SendResult
    | HistoryResult
    | ReadResult
    | UsersResult
    | NotificationsResult
    | UnreadResult
    | UnseenResult
    | PreferencesResult
    | RefreshResult
)


# Replies ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OkReply:
    id: int
    result: Result = field(default_factory=Empty)

    def to_wire(self, embed: Embed) -> WireMap:
        return {"id": self.id, "ok": self.result.to_wire(embed)}


@dataclass(frozen=True, slots=True)
class ErrorReply:
    id: int
    code: ErrorCode
    message: str

    def to_wire(self, embed: Embed) -> WireMap:
        return {"id": self.id, "error": {"code": str(self.code), "message": self.message}}


Push = (
    MessagePush
    | TypingPush
    | PresencePush
    | ReadPush
    | NotificationPush
    | JoinedPush
    | LeftPush
    | LaggedPush
)
