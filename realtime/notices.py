"""Notifications: stored per recipient, then pushed to the recipient's own room."""

from __future__ import annotations

from collections.abc import Sequence

from protocol.outgoing import NotificationPush, NotificationsResult
from storage import Notification, Store

from .convert import to_item, user_room
from .metrics import Metrics
from .publisher import Publisher
from .store_calls import StoreCalls

FOLLOWER_BATCH = 5000


class Notices:
    def __init__(
        self, store: Store, stored: StoreCalls, publisher: Publisher, metrics: Metrics
    ) -> None:
        self._store = store
        self._stored = stored
        self._publisher = publisher
        self._metrics = metrics

    async def notify(
        self,
        *,
        to: Sequence[str] | None,
        followers_of: str | None,
        type: str,
        data_json: str,
        actor: str | None,
    ) -> int:
        """Store and push a notification; returns how many recipients got it."""
        if to is not None:
            stored = await self._stored(self._store.add_notifications(to, type, data_json, actor))
            await self._push(stored)
            return len(stored)
        assert followers_of is not None
        recipients = 0
        after: str | None = None
        while True:
            page = await self._stored(
                self._store.add_follower_notifications(
                    followers_of, type, data_json, actor, after=after, limit=FOLLOWER_BATCH
                )
            )
            if not page:
                return recipients
            recipients += len(page)
            await self._push(page)
            after = page[-1].user

    async def _push(self, notifications: Sequence[Notification]) -> None:
        self._metrics.notifications.inc(len(notifications))
        await self._publisher.publish_many(
            [(user_room(n.user), NotificationPush(to_item(n))) for n in notifications]
        )

    async def list(
        self, user: str, *, after: int | None, limit: int, unread: bool
    ) -> NotificationsResult:
        page = await self._stored(
            self._store.notifications(user, after=after, limit=limit, unread_only=unread)
        )
        return NotificationsResult(list(map(to_item, page.items)), page.unread_count)

    async def mark_read(self, user: str, *, ids: Sequence[int] | None, up_to: int | None) -> int:
        return await self._stored(self._store.mark_notifications_read(user, ids=ids, up_to=up_to))
