"""Web Push subscriptions, registered over REST (any user) or the socket (one's own).

The shapes are checked on the way in (``protocol.push``); this service adds the
rules that depend on settings, and the VAPID public key pages subscribe with.
Keys are stored as given: ``realtime/outbound/webpush.py`` removes a subscription
whose keys turn out unusable.
"""

from __future__ import annotations

from protocol import CommandError, ErrorCode
from storage import PushSubscription, Store

from .config import WebPushSettings
from .outbound.vapid import load_vapid_key
from .store_calls import StoreCalls


class PushSubscriptions:
    def __init__(self, settings: WebPushSettings, store: Store, stored: StoreCalls) -> None:
        """Reads the VAPID key file when Web Push is on: build it at start-up."""
        self._settings = settings
        self._store = store
        self._stored = stored
        self._public_key = (
            load_vapid_key(settings.vapid_private_key_file).public_key if settings.enabled else None
        )

    @property
    def public_key(self) -> str:
        if self._public_key is None:
            raise CommandError(
                ErrorCode.NOT_FOUND, "Web Push is off (webpush.vapid_private_key_file is empty)"
            )
        return self._public_key

    async def subscribe(self, user: str, endpoint: str, p256dh: str, auth: str) -> bool:
        """Register (or refresh) the subscription; True when it is new to the user."""
        if endpoint.startswith("http://") and not self._settings.allow_http_endpoints:
            # Well formed, refused by a rule: browsers' push services are https.
            raise CommandError(
                ErrorCode.FORBIDDEN,
                "push endpoints must be https:// (webpush.allow_http_endpoints is off)",
            )
        return await self._stored(
            self._store.add_push_subscription(
                user, endpoint, p256dh, auth, keep=self._settings.max_subscriptions
            )
        )

    async def unsubscribe(self, user: str, endpoint: str) -> bool:
        return await self._stored(self._store.remove_push_subscription(user, endpoint))

    async def list(self, user: str) -> list[PushSubscription]:
        return await self._stored(self._store.push_subscriptions(user))
