"""The JSON a Web Push message or a webhook carries (docs/notifications.md, "Payload").

Pure. Notification data is JSON text from the store and is spliced in unparsed.
"""

from __future__ import annotations

from typing import Any

import orjson

from .digest import newest_first, summary
from .jobs import Job, JobItem, idempotency_key

# RFC 8291 / 8188: a push message is at most 4096 bytes; aes128gcm adds a header of
# 86 bytes (salt, record size, the sender's public key) and 17 to the one record.
MAX_PUSH_PLAINTEXT = 4096 - 86 - 17


def _item(type: str, item: JobItem) -> dict[str, Any]:
    return {
        "id": item.notification_id,
        "type": type,
        "data": orjson.Fragment(item.data_json),
        "actor": item.actor,
        "ts": item.created_at,
    }


def document(
    job: Job, items: tuple[JobItem, ...] | None = None, *, keys: bool = True
) -> dict[str, Any]:
    """The payload, with every item of the job (or just ``items``), and the key of
    each delivery it covers (unless ``keys`` is off)."""
    shown = job.items if items is None else items
    doc: dict[str, Any] = {"idempotency_key": job.key}
    if keys:
        doc["delivery_keys"] = [idempotency_key((i,)) for i in job.ids]
    doc |= {
        "user": job.user,
        "type": job.type,
        "count": len(job.items),
        "text": summary(job),
        "notifications": [_item(job.type, item) for item in shown],
    }
    if len(shown) < len(job.items) or not keys:
        doc["truncated"] = True
    return doc


def encode(job: Job) -> bytes:
    return orjson.dumps(document(job))


def encode_within(job: Job, limit: int = MAX_PUSH_PLAINTEXT) -> bytes:
    """The payload in at most ``limit`` bytes: every item if they fit, else the newest
    one, else none, else not even the delivery keys (``truncated`` says so; ``count``
    and ``text`` still tell all)."""
    newest = tuple(newest_first(job.items)[:1])
    for items, keys in ((job.items, True), (newest, True), ((), True), ((), False)):
        body = orjson.dumps(document(job, items, keys=keys))
        if len(body) <= limit:
            return body
    raise ValueError(f"a payload without notifications is still over {limit} bytes")
