"""What the client hands the app: events, results of requests, states and errors.

Every event is a frozen dataclass; ``RealtimeClient.events()`` yields them in the
order the client learned of them. A room's ``MessageEvent``s come in seq order,
each seq once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class State(StrEnum):
    """The connection state an app can show."""

    CONNECTING = "connecting"
    """First connection under way."""
    ONLINE = "online"
    """Connected for the first time: rooms joined."""
    RECONNECTING = "reconnecting"
    """The connection was lost; waiting to retry, or rejoining and catching up."""
    RECOVERED = "recovered"
    """Connected again, every room rejoined and every gap filled: online."""
    CLOSED = "closed"
    """``close()`` was called, or the server refused us for good (see ``StateEvent``)."""


# Records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A stored room message (``seq`` is None in a room without history)."""

    room: str
    seq: int | None
    user: str | None
    body: Any
    ts: int
    client_id: str | None = None

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Message:
        return cls(
            room=wire["room"],
            seq=wire.get("seq"),
            user=wire.get("user"),
            body=wire.get("body"),
            ts=wire.get("ts", 0),
            client_id=wire.get("client_id"),
        )


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    type: str
    data: Any
    actor: str | None
    ts: int
    read: bool = False

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Notification:
        return cls(
            id=wire["id"],
            type=wire["type"],
            data=wire.get("data"),
            actor=wire.get("actor"),
            ts=wire.get("ts", 0),
            read=bool(wire.get("read", False)),
        )


@dataclass(frozen=True, slots=True)
class Ack:
    """The server stored a sent message (``duplicate``: it had stored it before)."""

    room: str
    seq: int | None
    ts: int
    client_id: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class HistoryPage:
    messages: list[Message]
    more: bool
    epoch: str


@dataclass(frozen=True, slots=True)
class NotificationsPage:
    items: list[Notification]
    unread_count: int


# Events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageEvent:
    message: Message

    @property
    def room(self) -> str:
        return self.message.room


@dataclass(frozen=True, slots=True)
class TypingEvent:
    room: str
    user: str
    active: bool


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    room: str
    user: str
    event: Literal["join", "leave"]


@dataclass(frozen=True, slots=True)
class ReadEvent:
    room: str
    user: str
    seq: int


@dataclass(frozen=True, slots=True)
class NotificationEvent:
    notification: Notification
    recovered: bool = False
    """True when it was fetched after a reconnect rather than pushed live."""


@dataclass(frozen=True, slots=True)
class JoinedEvent:
    """The server put this client into a room (``client.room(name)`` has it now)."""

    room: str
    reason: str


@dataclass(frozen=True, slots=True)
class LeftEvent:
    """The client is out of a room for good: the server took it out, or a rejoin failed."""

    room: str
    reason: str


@dataclass(frozen=True, slots=True)
class StateEvent:
    state: State
    previous: State
    close_code: int | None = None
    close_reason: str = ""
    retry_in: float | None = None
    """Seconds until the next connection attempt (in ``reconnecting``)."""


RecoveryKind = Literal["recovered", "gap", "filled", "reset", "lost"]


@dataclass(frozen=True, slots=True)
class RecoveryEvent:
    """What happened to a room's stream across a reconnect (or a lagged stream).

    - ``recovered``: the rejoin returned every message missed (``count``), which follow.
    - ``gap``: more was missed than a rejoin returns (or the server stopped the stream,
      ``lagged``): the messages after ``since`` up to ``seq`` are read from history,
      page by page, and delivered before any live message.
    - ``filled``: that gap is filled (``count`` messages came from history).
    - ``reset``: the room's history was reset on the server (new ``epoch``); seqs start
      over, nothing before ``seq`` is delivered: reload the room with ``history()``.
    - ``lost``: messages ``since + 1`` to ``seq`` no longer exist (expired history).
    """

    room: str
    kind: RecoveryKind
    since: int | None
    seq: int
    count: int = 0
    lagged: bool = False


Event = (
    MessageEvent
    | TypingEvent
    | PresenceEvent
    | ReadEvent
    | NotificationEvent
    | JoinedEvent
    | LeftEvent
    | StateEvent
    | RecoveryEvent
)


# Errors --------------------------------------------------------------------------------


class ClientError(Exception):
    """Base of the client's errors."""


@dataclass
class ServerError(ClientError):
    """The server answered a request with an error (``code`` as in the protocol)."""

    code: str
    message: str
    op: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.op + ': ' if self.op else ''}{self.code}: {self.message}"


class ClientClosed(ClientError):
    """The client was closed (by ``close()``, or the server refused it for good)."""


class RequestTimeout(ClientError, TimeoutError):
    """No answer within the request timeout (or no connection to send it on)."""
