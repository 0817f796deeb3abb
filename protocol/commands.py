"""Client commands: typed, validated, and parsed from decoded messages.

``parse_command`` turns one decoded message (whatever a codec produced) into a
command dataclass. A message that is not a command at all (not a map, no usable
``id`` or ``op``) raises ``FrameError``; a command with bad arguments comes back as
``Rejected`` so the server can answer it and keep the connection.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Final, get_args

from . import jsonvalue
from .errors import CommandError, ErrorCode, FrameError, bad_request
from .push import AUTH_PATTERN, ENDPOINT_PATTERN, MAX_ENDPOINT, P256DH_PATTERN
from .rooms import is_room_name, parse_room

MAX_ID = 2**63 - 1
MAX_SEQ = 2**63 - 1
MAX_CLIENT_ID = 64
MAX_TOKEN = 16 * 1024
MAX_EPOCH = 64
MAX_CONNECT_ROOMS = 100
MAX_READ_IDS = 1000
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


@dataclass(frozen=True, slots=True)
class RoomRequest:
    """One room of ``connect``'s ``rooms``, or the arguments of ``join``."""

    room: str
    since: int | None = None
    epoch: str | None = None
    token: str | None = None


# Each command names its op and parses its own arguments; the table of ops is built
# from the ``Command`` union below, so a new command is a class and a union member.


@dataclass(frozen=True, slots=True)
class Connect:
    op: ClassVar[str] = "connect"
    id: int | None
    token: str | None
    rooms: tuple[RoomRequest, ...] = ()

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> Connect:
        rooms_value = args.raw("rooms")
        rooms: list[RoomRequest] = []
        if rooms_value is not None:
            if not isinstance(rooms_value, list) or len(rooms_value) > MAX_CONNECT_ROOMS:
                raise args.error(f"'rooms' must be a list of at most {MAX_CONNECT_ROOMS} entries")
            for entry in rooms_value:
                fields = {"room": entry} if isinstance(entry, str) else entry
                if not isinstance(fields, dict):
                    raise args.error("each entry of 'rooms' must be {room, since, epoch}")
                rooms.append(_Args(cls.op, fields).room_request())
        return cls(command_id, args.token(), tuple(rooms))


@dataclass(frozen=True, slots=True)
class Join:
    op: ClassVar[str] = "join"
    id: int | None
    request: RoomRequest

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> Join:
        return cls(command_id, args.room_request())


@dataclass(frozen=True, slots=True)
class Leave:
    op: ClassVar[str] = "leave"
    id: int | None
    room: str

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> Leave:
        return cls(command_id, args.room())


@dataclass(frozen=True, slots=True)
class Send:
    op: ClassVar[str] = "send"
    id: int | None
    room: str
    body_json: str
    """The body as JSON text, ready to store; its size is what limits apply to."""
    client_id: str | None = None

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> Send:
        room = args.room()
        if not args.present("body"):
            raise args.error("'body' is required (any JSON value)")
        try:
            body_json = jsonvalue.dumps(args.raw("body"))
        except ValueError as error:
            raise args.error(f"'body' must be a JSON value: {error}") from None
        return cls(command_id, room, body_json, args.string("client_id", max_length=MAX_CLIENT_ID))


@dataclass(frozen=True, slots=True)
class Typing:
    op: ClassVar[str] = "typing"
    id: int | None
    room: str
    active: bool

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> Typing:
        return cls(command_id, args.room(), args.boolean("active"))


@dataclass(frozen=True, slots=True)
class History:
    op: ClassVar[str] = "history"
    id: int | None
    room: str
    before: int | None = None
    after: int | None = None
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> History:
        before = args.integer("before", minimum=1)
        after = args.integer("after")
        if before is not None and after is not None:
            raise args.error("give 'before' or 'after', not both")
        return cls(command_id, args.room(), before, after, args.limit())


@dataclass(frozen=True, slots=True)
class Read:
    op: ClassVar[str] = "read"
    id: int | None
    room: str
    seq: int

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> Read:
        return cls(command_id, args.room(), args.required_integer("seq"))


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    op: ClassVar[str] = "presence"
    id: int | None
    room: str

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> PresenceQuery:
        return cls(command_id, args.room())


@dataclass(frozen=True, slots=True)
class NotificationsQuery:
    op: ClassVar[str] = "notifications"
    id: int | None
    after: int | None = None
    limit: int = DEFAULT_LIMIT
    unread: bool = False
    archived: bool = False
    """List the archived ones (and only those)."""

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> NotificationsQuery:
        return cls(
            command_id,
            args.integer("after"),
            args.limit(),
            args.boolean("unread", default=False),
            args.boolean("archived", default=False),
        )


@dataclass(frozen=True, slots=True)
class NotificationsRead:
    op: ClassVar[str] = "notifications.read"
    id: int | None
    ids: tuple[int, ...] | None = None
    up_to: int | None = None

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> NotificationsRead:
        ids_value = args.raw("ids")
        up_to = args.integer("up_to")
        if (ids_value is None) == (up_to is None):
            raise args.error("give 'ids' (a list of notification ids) or 'up_to' (an id)")
        if ids_value is None:
            return cls(command_id, up_to=up_to)
        return cls(command_id, ids=args.ids())


@dataclass(frozen=True, slots=True)
class NotificationsReadAll:
    op: ClassVar[str] = "notifications.read_all"
    id: int | None

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> NotificationsReadAll:
        return cls(command_id)


@dataclass(frozen=True, slots=True)
class NotificationsSeen:
    """The user opened the list: every notification up to an id is seen."""

    op: ClassVar[str] = "notifications.seen"
    id: int | None
    up_to: int

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> NotificationsSeen:
        return cls(command_id, args.required_integer("up_to"))


@dataclass(frozen=True, slots=True)
class NotificationsArchive:
    op: ClassVar[str] = "notifications.archive"
    id: int | None
    ids: tuple[int, ...]
    archived: bool = True
    """False brings them back to the inbox."""

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> NotificationsArchive:
        if args.raw("ids") is None:
            raise args.error("'ids' (a list of notification ids) is required")
        return cls(command_id, args.ids(), args.boolean("archived", default=True))


@dataclass(frozen=True, slots=True)
class PreferencesQuery:
    op: ClassVar[str] = "preferences"
    id: int | None

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> PreferencesQuery:
        return cls(command_id)


@dataclass(frozen=True, slots=True)
class PreferencesSet:
    """Replace the user's notification preferences (all but ``email``).

    ``document`` is the decoded map; the server checks it against the preferences
    schema (the same as REST's), which needs the configured types.
    """

    op: ClassVar[str] = "preferences.set"
    id: int | None
    document: Mapping[str, object]

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> PreferencesSet:
        document = args.raw("preferences")
        if not isinstance(document, dict):
            raise args.error("'preferences' (a map, the whole document) is required")
        if document.get("email") is not None:
            raise CommandError(
                ErrorCode.FORBIDDEN, f"{cls.op}: 'email' is set by the app's backend over REST"
            )
        return cls(command_id, {str(key): value for key, value in document.items()})


@dataclass(frozen=True, slots=True)
class Refresh:
    op: ClassVar[str] = "refresh"
    id: int | None
    token: str

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> Refresh:
        return cls(command_id, args.required_token())


@dataclass(frozen=True, slots=True)
class Ping:
    op: ClassVar[str] = "ping"
    id: int | None

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> Ping:
        return cls(command_id)


@dataclass(frozen=True, slots=True)
class PushSubscribe:
    """Register a Web Push subscription of this browser for the connection's user."""

    op: ClassVar[str] = "push.subscribe"
    id: int | None
    endpoint: str
    p256dh: str
    auth: str

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> PushSubscribe:
        value = args.raw("subscription")
        if not isinstance(value, dict) or not isinstance(value.get("keys"), dict):
            raise args.error("'subscription' must be {endpoint, keys: {p256dh, auth}}")
        subscription = _Args(cls.op, value)
        keys = _Args(cls.op, value["keys"])
        return cls(
            command_id,
            subscription.matching("endpoint", _ENDPOINT, "an http(s) URL", MAX_ENDPOINT),
            keys.matching("p256dh", _P256DH, "a base64url P-256 public key"),
            keys.matching("auth", _AUTH, "a base64url 16-byte secret"),
        )


@dataclass(frozen=True, slots=True)
class PushUnsubscribe:
    """Remove a Web Push subscription of the connection's user."""

    op: ClassVar[str] = "push.unsubscribe"
    id: int | None
    endpoint: str

    @classmethod
    def parse(cls, args: _Args, command_id: int | None) -> PushUnsubscribe:
        return cls(command_id, args.matching("endpoint", _ENDPOINT, "an http(s) URL", MAX_ENDPOINT))


_ENDPOINT = re.compile(ENDPOINT_PATTERN)
_P256DH = re.compile(P256DH_PATTERN)
_AUTH = re.compile(AUTH_PATTERN)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A command that failed validation: answer ``code`` and ``message`` if it has an id."""

    id: int | None
    op: str
    code: ErrorCode
    message: str


Command = (
    Connect
    | Join
    | Leave
    | Send
    | Typing
    | History
    | Read
    | PresenceQuery
    | NotificationsQuery
    | NotificationsRead
    | Refresh
    | Ping
    | PushSubscribe
    | PushUnsubscribe
    | NotificationsReadAll
    | NotificationsSeen
    | NotificationsArchive
    | PreferencesQuery
    | PreferencesSet
)

COMMAND_TYPES: Final[tuple[type[Command], ...]] = get_args(Command)
_PARSERS: Final[dict[str, Callable[[_Args, int | None], Command]]] = {
    command.op: command.parse for command in COMMAND_TYPES
}
OPS: Final = frozenset(_PARSERS)


def parse_command(message: object) -> Command | Rejected:
    """Validate one decoded client message."""
    if not isinstance(message, dict):
        raise FrameError(f"a message must be a map (JSON object), got {type(message).__name__}")
    command_id = _command_id(message.get("id"))
    op = message.get("op")
    if not isinstance(op, str):
        if command_id is None:
            raise FrameError("a message needs 'op' (a string) or an 'id'")
        return Rejected(command_id, "", ErrorCode.BAD_REQUEST, "'op' must be a string")
    parser = _PARSERS.get(op)
    if parser is None:
        known = ", ".join(sorted(_PARSERS))
        return Rejected(command_id, op, ErrorCode.BAD_REQUEST, f"unknown op {op!r}; known: {known}")
    try:
        return parser(_Args(op, message), command_id)
    except CommandError as error:
        return Rejected(command_id, op, error.code, error.message)


def _command_id(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 < value <= MAX_ID:
        raise FrameError(f"'id' must be a positive integer, got {value!r:.40}")
    return value


class _Args:
    """Reads typed arguments from a command map, raising clear ``bad_request`` errors."""

    __slots__ = ("_data", "_op")

    def __init__(self, op: str, data: dict[object, object]) -> None:
        self._op = op
        self._data = data

    def error(self, message: str) -> CommandError:
        return bad_request(f"{self._op}: {message}")

    def has(self, key: str) -> bool:
        return self._data.get(key) is not None

    def room(self, key: str = "room") -> str:
        value = self._data.get(key)
        if value is None:
            raise self.error(f"'{key}' is required")
        if isinstance(value, str) and is_room_name(value):
            return value
        try:
            parse_room(value)  # raises the error that says what a room name looks like
        except CommandError as error:
            raise self.error(error.message) from None
        raise AssertionError("parse_room accepted what is_room_name refused")

    def integer(self, key: str, *, minimum: int = 0, maximum: int = MAX_SEQ) -> int | None:
        value = self._data.get(key)
        if value is None:
            return None
        if type(value) is not int or not minimum <= value <= maximum:
            raise self.error(f"'{key}' must be an integer >= {minimum}, got {value!r:.40}")
        return value

    def required_integer(self, key: str, *, minimum: int = 0) -> int:
        value = self.integer(key, minimum=minimum)
        if value is None:
            raise self.error(f"'{key}' is required")
        return value

    def limit(self) -> int:
        value = self.integer("limit", minimum=1, maximum=MAX_ID)
        return DEFAULT_LIMIT if value is None else min(value, MAX_LIMIT)

    def string(self, key: str, *, max_length: int) -> str | None:
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not 0 < len(value) <= max_length:
            raise self.error(
                f"'{key}' must be a non-empty string of at most {max_length} characters"
            )
        return value

    def matching(
        self, key: str, pattern: re.Pattern[str], label: str, max_length: int = 256
    ) -> str:
        """A required string that ``pattern`` matches whole."""
        value = self._data.get(key)
        if not isinstance(value, str) or len(value) > max_length or not pattern.fullmatch(value):
            raise self.error(f"'{key}' must be {label}")
        return value

    def boolean(self, key: str, *, default: bool | None = None) -> bool:
        value = self._data.get(key)
        if value is None and default is not None:
            return default
        if not isinstance(value, bool):
            raise self.error(f"'{key}' must be true or false")
        return value

    def token(self, key: str = "token") -> str | None:
        """A token: a string of at most ``MAX_TOKEN`` bytes, refused as ``too_large`` beyond."""
        value = self._data.get(key)
        if isinstance(value, str):
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > MAX_TOKEN:
                raise CommandError(
                    ErrorCode.TOO_LARGE, f"{self._op}: '{key}' is {size} bytes; at most {MAX_TOKEN}"
                )
        return self.string(key, max_length=MAX_TOKEN)

    def required_token(self) -> str:
        value = self.token()
        if value is None:
            raise self.error("'token' is required")
        return value

    def raw(self, key: str) -> object:
        return self._data.get(key)

    def ids(self, key: str = "ids") -> tuple[int, ...]:
        value = self._data.get(key)
        if (
            not isinstance(value, list)
            or len(value) > MAX_READ_IDS
            or not all(type(i) is int and 0 < i <= MAX_ID for i in value)
        ):
            raise self.error(f"'{key}' must be a list of at most {MAX_READ_IDS} positive integers")
        return tuple(value)

    def present(self, key: str) -> bool:
        return key in self._data

    def room_request(self) -> RoomRequest:
        since = self.integer("since")
        epoch = self.string("epoch", max_length=MAX_EPOCH)
        return RoomRequest(
            room=self.room(),
            since=since,
            epoch=epoch,
            token=self.token(),
        )
