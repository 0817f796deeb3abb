"""The senders the settings turn on, by transport: what the outbox worker calls."""

from __future__ import annotations

import aiohttp

from storage import Store

from ..config import Settings
from ..metrics import Metrics
from .jobs import Sender
from .smtp import EmailSender
from .webhook import WebhookSender
from .webpush import WebPushSender


def build_senders(
    settings: Settings, store: Store, metrics: Metrics, http: aiohttp.ClientSession
) -> dict[str, Sender]:
    """One sender per configured transport (``webpush``, ``webhook``, ``email``).

    Reads the VAPID key and the email templates: call it at start-up, where a bad
    file stops the server with an error that names it. ``http`` stays the caller's
    to close.
    """
    senders: dict[str, Sender] = {}
    if settings.webpush.enabled:
        senders[WebPushSender.transport] = WebPushSender(settings.webpush, store, metrics, http)
    if settings.webhook.enabled:
        senders[WebhookSender.transport] = WebhookSender(settings.webhook, metrics, http)
    if settings.email.enabled:
        senders[EmailSender.transport] = EmailSender(settings.email, metrics)
    return senders
