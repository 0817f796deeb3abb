"""What the REST API takes and answers, as types: the OpenAPI schemas and the
checks on each request are derived from these (``realtime/schema.py``).

Limits come from where they are enforced (``protocol`` and the auth module): none is
written down twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, NotRequired, TypedDict

from protocol import ErrorCode
from protocol.commands import (
    DEFAULT_LIMIT,
    MAX_CLIENT_ID,
    MAX_ID,
    MAX_LIMIT,
    MAX_READ_IDS,
    MAX_SEQ,
)
from protocol.push import AUTH_PATTERN, ENDPOINT_PATTERN, MAX_ENDPOINT, P256DH_PATTERN
from protocol.rooms import MAX_ROOM_LENGTH, ROOM_PATTERN

from .auth import USER_ID
from .schema import Doc, Example, Items, JsonText, Length, OneOf, Pattern, Range

MAX_NOTIFY_USERS = 10_000
"""Recipients one ``POST /notifications`` may list in ``to``."""
MAX_TYPE = 64
"""Characters of a notification's ``type``."""
MAX_DEDUPE_KEY = 128
"""Characters of a notification's ``dedupe_key``."""

# Values --------------------------------------------------------------------------------

UserId = Annotated[str, Pattern(USER_ID.pattern, "a user id"), Example("alice")]
RoomName = Annotated[
    str,
    Pattern(ROOM_PATTERN, "a room name namespace:key like swap:123"),
    Length(1, MAX_ROOM_LENGTH),
    Doc("Room name, namespace:key (e.g. swap:123)."),
    Example("swap:123"),
]
Seq = Annotated[int, Range(0, MAX_SEQ)]
NotificationId = Annotated[int, Range(1, MAX_ID)]
Limit = Annotated[
    int, Range(1, MAX_ID), Doc(f"At most this many (larger values are capped at {MAX_LIMIT}).")
]
Ms = Annotated[int, Doc("Milliseconds since the Unix epoch.")]

Endpoint = Annotated[
    str,
    Pattern(ENDPOINT_PATTERN, "a push service URL"),
    Length(1, MAX_ENDPOINT),
    Doc("The subscription's push service URL (https://; http:// only where allowed)."),
    Example("https://push.example.net/send/abc123"),
]


# Requests ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """A message to publish."""

    body: JsonText
    user: Annotated[UserId | None, Doc("Sender; the push's user is null without it.")] = None
    client_id: Annotated[
        str | None,
        Length(1, MAX_CLIENT_ID),
        Doc("Idempotency key: a retry with the same user and key is stored once."),
    ] = None


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """A page of history: the latest messages, or those just before or after a seq."""

    before: Annotated[
        Annotated[int, Range(1, MAX_SEQ)] | None, Doc("Messages just before this seq.")
    ] = None
    after: Annotated[Seq | None, Doc("Messages just after this seq.")] = None
    limit: Limit = DEFAULT_LIMIT

    rules: ClassVar[tuple[OneOf, ...]] = (OneOf(("before", "after"), exactly=False),)


@dataclass(frozen=True, slots=True)
class NotifyRequest:
    """A notification for the listed users, or for every follower of one user."""

    type: Annotated[
        str,
        Length(1, MAX_TYPE),
        Doc(
            "A configured type (post_liked, post_commented, user_followed, user_mentioned, "
            "friend_request, direct_message, or the operator's own); an unknown one is "
            "refused unless notifications.free_types is on."
        ),
        Example("post_liked"),
    ]
    to: Annotated[tuple[UserId, ...] | None, Items(1, MAX_NOTIFY_USERS), Doc("The recipients.")] = (
        None
    )
    followers_of: Annotated[UserId | None, Doc("Every follower of this user.")] = None
    data: JsonText = "null"
    actor: Annotated[UserId | None, Doc("Who caused it.")] = None
    dedupe_key: Annotated[
        str | None,
        Length(1, MAX_DEDUPE_KEY),
        Doc(
            "Idempotency key: a recipient that got a notification with the same key within "
            "notifications.dedupe_window gets nothing new and is not counted."
        ),
    ] = None

    rules: ClassVar[tuple[OneOf, ...]] = (OneOf(("to", "followers_of")),)


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Mark notifications read: the listed ones, or every one up to an id."""

    ids: Annotated[tuple[NotificationId, ...] | None, Items(1, MAX_READ_IDS)] = None
    up_to: Annotated[Seq | None, Doc("Every notification with an id up to this one.")] = None

    rules: ClassVar[tuple[OneOf, ...]] = (OneOf(("ids", "up_to")),)


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """The user opened the list: every notification up to an id is seen."""

    up_to: Seq


@dataclass(frozen=True, slots=True)
class ArchiveRequest:
    """Archive notifications (out of the inbox), or bring them back."""

    ids: Annotated[tuple[NotificationId, ...], Items(1, MAX_READ_IDS)]
    archived: Annotated[bool, Doc("false brings them back.")] = True


@dataclass(frozen=True, slots=True)
class DisconnectRequest:
    """Why the user is disconnected (shown in the close frame)."""

    reason: Annotated[str | None, Doc("Cut to 120 characters.")] = None


@dataclass(frozen=True, slots=True)
class PushKeys:
    p256dh: Annotated[
        str,
        Pattern(P256DH_PATTERN, "a base64url P-256 public key"),
        Doc("The browser's P-256 public key, base64url (65 bytes)."),
    ]
    auth: Annotated[
        str,
        Pattern(AUTH_PATTERN, "a base64url 16-byte secret"),
        Doc("The browser's auth secret, base64url (16 bytes)."),
    ]


@dataclass(frozen=True, slots=True)
class PushSubscriptionRequest:
    """A browser's PushSubscription, as its toJSON() gives it (other fields are ignored)."""

    endpoint: Endpoint
    keys: PushKeys


# Responses -----------------------------------------------------------------------------


class SendResult(TypedDict):
    room: str
    seq: Annotated[int | None, Doc("Null where the namespace keeps no history.")]
    ts: Ms
    duplicate: NotRequired[Annotated[bool, Doc("A retry of a stored message (same client_id).")]]


class Message(TypedDict):
    room: str
    seq: int
    user: str | None
    body: JsonText
    ts: Ms
    client_id: NotRequired[str]


class HistoryPage(TypedDict):
    messages: list[Message]
    more: Annotated[bool, Doc("More messages lie beyond this page.")]
    epoch: str


class Users(TypedDict):
    users: list[str]


class Recipients(TypedDict):
    recipients: Annotated[
        int,
        Doc(
            "How many users it reached: stored for them, or queued for push or email. "
            "Users whose preferences turn every channel off, and repeats of a dedupe_key, "
            "do not count."
        ),
    ]


class Notification(TypedDict):
    id: int
    type: str
    data: JsonText
    actor: str | None
    ts: Ms
    read: bool
    seen: NotRequired[Annotated[bool, Doc("Present (true) once the user has seen it.")]]
    archived: NotRequired[Annotated[bool, Doc("Present (true) when it is archived.")]]


class NotificationPage(TypedDict):
    items: list[Notification]
    unread_count: Annotated[int, Doc("Unread ones in the inbox (archived ones left out).")]
    unread_by_type: Annotated[dict[str, int], Doc("The unread count of each type that has any.")]
    unseen_count: Annotated[int, Doc("Ones in the inbox the user has not seen.")]


class UnreadCount(TypedDict):
    unread_count: int


class UnseenCount(TypedDict):
    unseen_count: int


class Health(TypedDict):
    status: Literal["ok", "draining"]
    instance: str


class Readiness(TypedDict):
    ready: bool
    checks: Annotated[dict[str, str], Doc("Each dependency: ok, or what is wrong.")]


class ErrorDetail(TypedDict):
    code: ErrorCode
    message: str


class Error(TypedDict):
    """Every error answer: {"error": {"code", "message"}}."""

    error: ErrorDetail


class OpenApiDocument(TypedDict):
    """An OpenAPI 3.1 document (this one)."""

    openapi: str


class PushKeysInfo(TypedDict):
    p256dh: str
    auth: str


class PushSubscriptionInfo(TypedDict):
    endpoint: str
    keys: PushKeysInfo
    created_at: Annotated[Ms, Doc("When it was last registered.")]


class PushSubscriptions(TypedDict):
    subscriptions: Annotated[list[PushSubscriptionInfo], Doc("The most recently registered first.")]


class VapidPublicKey(TypedDict):
    public_key: Annotated[
        str, Doc("The VAPID public key, base64url: PushManager.subscribe's applicationServerKey.")
    ]


# The outbox ------------------------------------------------------------------------------

DeliveryState = Literal["pending", "done", "skipped", "dead"]
DeliveryId = Annotated[int, Range(1, MAX_ID), Doc("A delivery job's id."), Example(1)]


class DeliveryInfo(TypedDict):
    """One delivery job of the outbox: a notification for one user on one transport."""

    id: Annotated[int, Doc("The job; its idempotency key is rt-<id>.")]
    user: str
    transport: Literal["webpush", "webhook", "email"]
    notification_id: Annotated[
        int | None, Doc("The stored notification; null when the user keeps no in-app copy.")
    ]
    type: str
    data: JsonText
    actor: str | None
    group_key: Annotated[str | None, Doc("The value email digests are grouped by.")]
    created_at: Ms
    due_at: Annotated[Ms, Doc("When a worker may take it (next).")]
    state: Annotated[
        DeliveryState,
        Doc(
            "pending (queued, deferred or being sent), done (delivered), skipped (read, "
            "unwanted or nobody to reach), dead (failed for good: a dead letter)."
        ),
    ]
    attempts: Annotated[int, Doc("Times it was tried.")]
    leased_until: Annotated[Ms | None, Doc("While a worker holds it, until when.")]
    last_error: Annotated[str | None, Doc("What the last try (or the skip) said.")]
    finished_at: Ms | None


class Deliveries(TypedDict):
    deliveries: Annotated[list[DeliveryInfo], Doc("Ascending by id.")]
