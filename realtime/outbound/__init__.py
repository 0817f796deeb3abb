"""Offline delivery: one sender per transport behind the ``Sender`` seam (``jobs.py``).

- ``webpush``: Web Push to the user's browser subscriptions (``webpush.py``)
- ``email``: SMTP, from templates, digests as one message (``smtp.py``)
- ``webhook``: signed JSON POSTs to the app's backend (``webhook.py``)

``build_senders`` makes the ones the settings turn on. The words ("bob and 4 others
liked your post") are ``digest.py``'s, the JSON ``payload.py``'s.
"""

from __future__ import annotations

from .jobs import Job, JobItem, Outcome, Sender, idempotency_key
from .senders import build_senders

__all__ = ["Job", "JobItem", "Outcome", "Sender", "build_senders", "idempotency_key"]
