"""The Store seam: everything an instance keeps durably.

Every implementation promises, and ``tests/storage/test_store_contract.py`` checks:

- ``append`` allocates the room's ``seq`` in the same transaction that stores the
  message. Seqs run 1, 2, 3 … per room, gapless, in commit order, however many
  instances append at once.
- A repeat of ``(room, user, client_id)`` returns the first message with
  ``duplicate=True`` and stores nothing; the database enforces it (a unique index),
  not memory.
- A room's ``epoch`` is fixed when the room's first row is written and changes only
  when its history is lost (a new database).
- ``set_read`` never moves a read mark back.
- Notification ids grow over time, across recipients.
- ``add_notification_batch`` stores the notifications and their delivery jobs in
  one transaction: both or neither. A repeat of ``(user, dedupe_key)`` within its
  window stores and queues nothing for that user; the database enforces it.
- ``claim_deliveries`` never hands one delivery job to two claimers at once, across
  instances; a job whose lease ended is free to claim again.
- When the database cannot be reached or does not answer in time, every call raises
  ``StorageUnavailable`` and nothing was done. The one exception is an ``append``
  whose commit was already sent when the connection broke: it may have been stored.
  Clients that retry with the same ``client_id`` get the first message back, so a
  retry is always safe.

Bodies and notification data are JSON text: the store never parses them.
Timestamps are milliseconds since the Unix epoch, taken by the store.
User ids are non-empty strings: the empty string stands for "no user" in the
idempotency key of system messages and for "from the start" in follower paging.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class StorageError(Exception):
    """A store failed in a way that is not an outage (a bug or a broken schema)."""


class StorageUnavailable(StorageError):
    """The database could not be reached or timed out; nothing was done."""


@dataclass(frozen=True, slots=True)
class NewMessage:
    room: str
    user: str | None
    body: str
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    room: str
    seq: int
    user: str | None
    body: str
    ts: int
    client_id: str | None


@dataclass(frozen=True, slots=True)
class Appended:
    message: StoredMessage
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Recovery:
    """A room's state and the messages after ``since``, read in one snapshot."""

    seq: int
    epoch: str
    missed: list[StoredMessage]


@dataclass(frozen=True, slots=True)
class HistoryPage:
    messages: list[StoredMessage]
    more: bool
    epoch: str


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    user: str
    type: str
    data: str
    actor: str | None
    ts: int
    read: bool
    seen: bool = False
    archived: bool = False


@dataclass(frozen=True, slots=True)
class NotificationPage:
    """A page of the inbox; the counts leave archived notifications out."""

    items: list[Notification]
    unread_count: int
    unread_by_type: dict[str, int] = field(default_factory=dict)
    unseen_count: int = 0


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient of a notification, with what its preferences allow."""

    user: str
    in_app: bool = True
    """Store it (it is listed and pushed)."""
    transports: tuple[str, ...] = ()
    """One delivery job each: 'webpush', 'webhook' or 'email'."""


@dataclass(frozen=True, slots=True)
class NotificationBatch:
    stored: list[Notification]
    """The notifications stored, sorted by user."""
    reached: list[str]
    """Recipients that got it stored or queued, sorted (a repeated dedupe_key: not)."""
    deliveries: int
    """Delivery jobs queued."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox job: a notification to deliver to one user on one transport."""

    id: int
    user: str
    transport: str
    notification_id: int | None
    type: str
    data: str
    actor: str | None
    group_key: str | None
    created_at: int
    due_at: int
    state: str
    attempts: int
    leased_until: int | None
    last_error: str | None
    finished_at: int | None


@dataclass(frozen=True, slots=True)
class PushSubscription:
    """A browser's Web Push subscription: where to POST, and the keys to encrypt with."""

    endpoint: str
    user: str
    p256dh: str
    auth: str
    created_at: int
    """When it was last registered (ms)."""


class Store(Protocol):
    """Durable state of the cluster. See the module docstring for the guarantees."""

    async def open(self) -> None:
        """Connect. Does not migrate: call ``migrate`` first (the server does at start)."""

    async def close(self) -> None:
        """Finish in-flight work and release connections and threads."""

    async def migrate(self) -> list[int]:
        """Apply pending migrations, safely when several instances run it at once.

        Returns the versions this call applied (empty when the schema was current).
        """

    async def ping(self) -> None:
        """Raise ``StorageUnavailable`` unless the database answers a trivial query."""

    # Room history ------------------------------------------------------------------

    async def append(self, message: NewMessage) -> Appended:
        """Store a message under the room's next seq (or return the client_id's first)."""

    async def recover(self, room: str, since: int | None, limit: int) -> Recovery:
        """The room's latest seq and epoch, and up to ``limit`` messages with seq > since.

        ``since=None`` returns no messages. ``missed`` is ascending from the oldest
        stored message after ``since``. Creates the room's row (fixing its epoch)
        when the room has none yet.
        """

    async def messages_after(self, room: str, after: int, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` messages with seq > after, ascending (used to fill gaps)."""

    async def history(
        self, room: str, *, before: int | None, after: int | None, limit: int
    ) -> HistoryPage:
        """A page of history, ascending; see the ``history`` op of the protocol.

        With ``before``: the ``limit`` messages just before it, ``more`` when older
        ones exist. With ``after``: the ``limit`` messages just after it, ``more``
        when newer ones exist. With neither: the latest ``limit``, ``more`` when
        older ones exist. Not both. Like ``recover``, creates the room's row (fixing
        its epoch) when the room has none yet.
        """

    async def latest_seqs(self, rooms: Sequence[str]) -> dict[str, int]:
        """The latest seq of each room that has stored anything (others are left out)."""

    async def set_read(self, room: str, user: str, seq: int) -> int:
        """Raise the user's read mark in the room to ``seq``; return the stored mark."""

    async def prune(
        self, namespace: str, *, older_than_ms: int | None, keep_last: int | None
    ) -> int:
        """Delete messages of rooms ``namespace:*`` older than a time or beyond a count.

        ``older_than_ms`` is a time (ms since the Unix epoch, not an age): messages
        with ``ts`` before it go. ``keep_last`` keeps each room's last that many
        seqs. A message goes when either says so; both None deletes nothing.
        Never touches a room's seq counter or epoch. Returns how many were deleted.
        """

    # Membership and the follow graph ---------------------------------------------

    async def add_member(self, room: str, user: str) -> bool:
        """Grant membership; True when it is new."""

    async def remove_member(self, room: str, user: str) -> bool:
        """Revoke membership; True when there was one."""

    async def is_member(self, room: str, user: str) -> bool: ...

    async def members(self, room: str) -> list[str]:
        """Members of a room, sorted."""

    async def follow(self, user: str, target: str) -> bool:
        """``user`` now follows ``target``; True when it is new."""

    async def unfollow(self, user: str, target: str) -> bool:
        """True when ``user`` followed ``target`` before."""

    async def is_following(self, user: str, target: str) -> bool: ...

    async def followers(self, target: str, *, after: str | None, limit: int) -> list[str]:
        """A page of ``target``'s followers sorted by id, those greater than ``after``."""

    # Notifications -----------------------------------------------------------------

    async def add_notifications(
        self, users: Sequence[str], type: str, data: str, actor: str | None
    ) -> list[Notification]:
        """Store one notification per listed user (duplicates in ``users`` count once)."""

    async def add_follower_notifications(
        self, target: str, type: str, data: str, actor: str | None, *, after: str | None, limit: int
    ) -> list[Notification]:
        """Store a notification for the next page of ``target``'s followers.

        The page is the first ``limit`` followers with id greater than ``after``, in
        one statement; the result is sorted by user, so the caller pages on with
        ``after=result[-1].user`` until the result is empty.
        """

    async def notifications(
        self, user: str, *, after: int | None, limit: int, unread_only: bool, archived: bool = False
    ) -> NotificationPage:
        """The user's notifications with id > after, ascending, and the counts.

        With no ``after``, the latest ``limit`` (still ascending). Archived ones are
        left out; ``archived=True`` lists only those. The counts (unread, unread per
        type, unseen) are of the notifications not archived.
        """

    async def mark_notifications_read(
        self, user: str, *, ids: Sequence[int] | None = None, up_to: int | None = None
    ) -> int:
        """Mark the listed ids, or all ids <= up_to, read (and seen); return the unread count.

        Only the user's own notifications change. Not both; with neither, nothing
        changes and the count is returned.
        """

    # Web Push subscriptions -----------------------------------------------------------

    async def add_push_subscription(
        self, user: str, endpoint: str, p256dh: str, auth: str, *, keep: int
    ) -> bool:
        """Register ``endpoint`` for ``user`` with these keys; True when it is new to them.

        An endpoint belongs to one user: registering it again replaces its keys and
        moves it to ``user`` (a browser signed in as someone else now). The user then
        keeps their ``keep`` most recently registered subscriptions, this one among
        them; older ones are deleted in the same transaction.
        """

    async def remove_push_subscription(self, user: str, endpoint: str) -> bool:
        """Delete the user's subscription at ``endpoint``; True when there was one."""

    async def push_subscriptions(self, user: str) -> list[PushSubscription]:
        """The user's subscriptions, the most recently registered first."""

    # Inbox: preferences, states, delivery jobs ----------------------------------------

    async def add_notification_batch(
        self,
        recipients: Sequence[Recipient],
        type: str,
        data: str,
        actor: str | None,
        *,
        group_key: str | None = None,
        dedupe_key: str | None = None,
        dedupe_window_ms: int = 0,
    ) -> NotificationBatch:
        """Store the notification for recipients with ``in_app`` and queue one delivery
        job (``due_at`` now, ``notification_id`` the stored one or None) per recipient
        per transport, all in one transaction.

        With a ``dedupe_key``, a recipient that had the same key less than
        ``dedupe_window_ms`` ago gets nothing and is not reached; the key is the
        recipient's for the window from now on. A user repeated in ``recipients``
        counts once (the first).
        """

    async def get_preferences(self, user: str) -> str | None:
        """The user's preferences document (JSON text), or None when never set."""

    async def preferences_of(self, users: Sequence[str]) -> dict[str, str]:
        """The documents of the users that have one."""

    async def set_preferences(self, user: str, doc: str) -> None:
        """Replace the user's preferences document."""

    async def mark_notification_read(self, user: str, id: int) -> bool:
        """Mark one notification read (and seen); False when the user has no such id."""

    async def mark_notifications_seen(self, user: str, *, up_to: int) -> int:
        """Mark the user's ids <= up_to seen; return the unseen count."""

    async def archive_notifications(
        self, user: str, ids: Sequence[int], *, archived: bool = True
    ) -> int:
        """Archive (or bring back) the user's listed ids; return the unread count."""

    async def deliveries(
        self,
        *,
        user: str | None = None,
        state: str | None = None,
        limit: int,
        after: int | None = None,
    ) -> list[Delivery]:
        """Delivery jobs by id, ascending, of one user and/or in one state (ids above
        ``after`` only, when given)."""

    async def forget_dedupe_keys(self, *, before_ms: int) -> int:
        """Delete dedupe keys whose window ended before ``before_ms``; how many went."""

    # Outbox: claiming and settling delivery jobs ---------------------------------------
    #
    # A pending job is free when it has no lease or its lease has ended: a claimer that
    # died holding a job loses it when the lease ends, and the next claim takes it again
    # (delivery is at least once). Two claimers never hold one job at once: on
    # PostgreSQL a claim locks the rows it takes and skips rows another claim has
    # locked (``FOR UPDATE SKIP LOCKED``); SQLite has one writer. The settling calls
    # change pending jobs only, and with ``lease`` only while that lease is the job's.

    async def claim_deliveries(
        self,
        now_ms: int,
        limit: int,
        lease_ms: int,
        *,
        transports: Sequence[str] | None = None,
        digest_window_ms: int = 0,
    ) -> list[Delivery]:
        """Lease up to ``limit`` free pending jobs due by ``now_ms`` (earliest due first),
        of ``transports`` (None: any), in one transaction.

        Each claimed job gets ``attempts + 1`` and ``leased_until = now_ms + lease_ms``.
        An email job with a ``group_key`` brings along, beyond the limit, every free
        pending email job of the same user, type and group created from its
        ``created_at`` to less than ``digest_window_ms`` after it, due or not: one
        digest. Returned ascending by id.
        """

    async def finish_deliveries(
        self, ids: Sequence[int], state: str, error: str | None, *, lease: int | None = None
    ) -> int:
        """End pending jobs as ``done``, ``skipped`` or ``dead`` (``finished_at`` now);
        ``error`` (None keeps the last) goes to ``last_error``. ``lease``: only jobs
        still held under that ``leased_until``. Returns how many changed."""

    async def retry_deliveries(
        self, ids: Sequence[int], due_at: int, error: str, *, lease: int | None = None
    ) -> int:
        """Release pending jobs to be tried again from ``due_at``, noting ``error``."""

    async def reschedule_deliveries(
        self, ids: Sequence[int], due_at: int, *, lease: int | None = None
    ) -> int:
        """Release claimed pending jobs until ``due_at`` and give back the attempt their
        claim charged (they were not tried)."""

    async def requeue_delivery(self, id: int) -> Delivery | None:
        """Make a dead job pending again, due now, with its attempts reset (its
        ``last_error`` stays); None when there is no dead job ``id``."""

    async def unread_notifications(self, ids: Sequence[int]) -> set[int]:
        """The ids among these of stored notifications neither read nor archived."""

    async def pending_deliveries(self) -> dict[str, int]:
        """Pending jobs per transport (the outbox's queue depth); transports with none
        are left out."""

    async def forget_deliveries(self, *, before_ms: int) -> int:
        """Delete ``done`` and ``skipped`` jobs finished before ``before_ms`` (dead ones
        stay until requeued); how many went."""
