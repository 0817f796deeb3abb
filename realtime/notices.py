"""Notifications: the inbox of each user, and the entry point that makes them.

``notify`` checks the type, reads the recipients' preferences, and in one store
transaction per batch stores the notification for those who want it in-app and
queues a delivery job per offline transport their preferences allow (the outbox
delivers them). Then it pushes the stored ones to each recipient's own room.
Followers are taken in pages of ``FOLLOWER_BATCH``, one transaction each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from protocol import CommandError, ErrorCode, jsonvalue
from protocol.commands import MAX_ID
from protocol.outgoing import NotificationPush, NotificationsResult
from storage import Notification, Recipient, Store

from . import preferences as prefs_
from .config import NotificationTypeSettings, Settings
from .convert import to_item, user_room
from .metrics import Metrics
from .preferences import Preferences
from .publisher import Publisher
from .store_calls import StoreCalls

FOLLOWER_BATCH = 5000
MAX_NAMED = 20  # configured types an error lists

# What one recipient gets: stored in-app or not, and the transports of its jobs.
Plan = tuple[bool, tuple[str, ...]]


class Notices:
    def __init__(
        self,
        store: Store,
        stored: StoreCalls,
        publisher: Publisher,
        metrics: Metrics,
        settings: Settings,
    ) -> None:
        self._store = store
        self._stored = stored
        self._publisher = publisher
        self._metrics = metrics
        self._settings = settings
        self._own_types: dict[str, NotificationTypeSettings] = {}
        # Called when delivery jobs were queued (the node points it at the outbox).
        self.queued: Callable[[], None] = _nothing

    # Types -----------------------------------------------------------------------------

    def declare_type(self, rules: NotificationTypeSettings) -> None:
        """A type of the server's own (the demo's), beside the configured ones."""
        self._own_types[rules.name] = rules

    def type_settings(self, name: str) -> NotificationTypeSettings:
        """The rules of a type, or ``bad_request`` naming it when it is unknown."""
        found = self._own_types.get(name) or self._settings.notifications.type_settings(name)
        if found is None:
            names = sorted({*self._settings.notifications.types, *self._own_types})
            known = ", ".join(names[:MAX_NAMED]) + (", ..." if len(names) > MAX_NAMED else "")
            raise CommandError(
                ErrorCode.BAD_REQUEST,
                f"unknown notification type {name!r}: configure [notifications.types.{name}]"
                f" or set notifications.free_types (configured: {known})",
            )
        return found

    # Making notifications ------------------------------------------------------------

    async def notify(
        self,
        *,
        to: Sequence[str] | None,
        followers_of: str | None,
        type: str,
        data_json: str,
        actor: str | None,
        dedupe_key: str | None = None,
    ) -> int:
        """Store, queue and push a notification; returns how many recipients it reached
        (stored in-app or queued for an offline transport; a repeated dedupe_key, or
        preferences that turn every channel off, do not count)."""
        rules = self.type_settings(type)
        group_key = _group_key(data_json, rules.group)
        batch = _Batch(rules, data_json, actor, group_key, dedupe_key)
        if to is not None:
            return await self._deliver(sorted(set(to)), batch)
        assert followers_of is not None
        reached = 0
        after: str | None = None
        while True:
            page = await self._stored(
                self._store.followers(followers_of, after=after, limit=FOLLOWER_BATCH)
            )
            if not page:
                return reached
            reached += await self._deliver(page, batch)
            after = page[-1]

    async def _deliver(self, users: Sequence[str], batch: _Batch) -> int:
        docs = await self._stored(self._store.preferences_of(users))
        plans: dict[str | None, Plan] = {}  # most users share a document (none)
        recipients = []
        for user in users:
            doc = docs.get(user)
            plan = plans.get(doc)
            if plan is None:
                plan = plans[doc] = self._plan(prefs_.load(doc), batch.rules)
            in_app, transports = plan
            if in_app or transports:
                recipients.append(Recipient(user, in_app, transports))
        if not recipients:
            return 0
        window_ms = int(self._settings.notifications.dedupe_window * 1000)
        done = await self._stored(
            self._store.add_notification_batch(
                recipients,
                batch.rules.name,
                batch.data_json,
                batch.actor,
                group_key=batch.group_key,
                dedupe_key=batch.dedupe_key,
                dedupe_window_ms=window_ms,
            )
        )
        if len(done.reached) < len(recipients):
            self._metrics.notifications_deduplicated.inc(len(recipients) - len(done.reached))
        if done.deliveries:
            self._metrics.deliveries_queued.inc(done.deliveries)
            self.queued()
        await self._push(done.stored)
        return len(done.reached)

    def _plan(self, prefs: Preferences, rules: NotificationTypeSettings) -> Plan:
        channels = prefs_.channels_for(prefs, rules)
        return "in_app" in channels, prefs_.transports_for(channels, self._settings, prefs)

    async def _push(self, notifications: Sequence[Notification]) -> None:
        if not notifications:
            return
        self._metrics.notifications.inc(len(notifications))
        await self._publisher.publish_many(
            [(user_room(n.user), NotificationPush(to_item(n))) for n in notifications]
        )

    # Preferences ---------------------------------------------------------------------

    async def preferences(self, user: str) -> Preferences:
        return prefs_.load(await self._stored(self._store.get_preferences(user)))

    async def set_preferences(
        self, user: str, prefs: Preferences, *, keep_email: bool = False
    ) -> Preferences:
        """Replace the user's document; ``keep_email``: the stored address stays (the
        user's own socket may not set it)."""
        notifications = self._settings.notifications
        if not notifications.free_types and self._own_types:
            notifications = dataclasses.replace(
                notifications, types={**notifications.types, **self._own_types}
            )
        prefs_.check_types(prefs, notifications)
        if keep_email:
            prefs = dataclasses.replace(prefs, email=(await self.preferences(user)).email)
        await self._stored(self._store.set_preferences(user, prefs.to_json()))
        return prefs

    # The inbox ---------------------------------------------------------------------------

    async def list(
        self, user: str, *, after: int | None, limit: int, unread: bool, archived: bool = False
    ) -> NotificationsResult:
        page = await self._stored(
            self._store.notifications(
                user, after=after, limit=limit, unread_only=unread, archived=archived
            )
        )
        return NotificationsResult(
            list(map(to_item, page.items)),
            page.unread_count,
            page.unread_by_type,
            page.unseen_count,
        )

    async def mark_read(self, user: str, *, ids: Sequence[int] | None, up_to: int | None) -> int:
        return await self._stored(self._store.mark_notifications_read(user, ids=ids, up_to=up_to))

    async def mark_all_read(self, user: str) -> int:
        return await self.mark_read(user, ids=None, up_to=MAX_ID)

    async def mark_one_read(self, user: str, notification_id: int) -> None:
        if not await self._stored(self._store.mark_notification_read(user, notification_id)):
            raise CommandError(ErrorCode.NOT_FOUND, f"{user} has no notification {notification_id}")

    async def mark_seen(self, user: str, *, up_to: int) -> int:
        return await self._stored(self._store.mark_notifications_seen(user, up_to=up_to))

    async def archive(self, user: str, ids: Sequence[int], *, archived: bool) -> int:
        return await self._stored(self._store.archive_notifications(user, ids, archived=archived))


@dataclasses.dataclass(frozen=True, slots=True)
class _Batch:
    """What every page of one notification shares."""

    rules: NotificationTypeSettings
    data_json: str
    actor: str | None
    group_key: str | None
    dedupe_key: str | None


def _nothing() -> None:
    pass


def _group_key(data_json: str, field: str) -> str | None:
    """The digest grouping value: ``data[field]`` when it is a string or an integer."""
    if not field:
        return None
    data = jsonvalue.loads(data_json)
    value = data.get(field) if isinstance(data, dict) else None
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    return None
