"""The Sender seam: what the outbox hands a transport, and what it answers.

A ``Job`` is one claimed delivery row, or several merged into a digest (``items``
holds one entry per row). A sender tries it once and answers an ``Outcome`` with a
detail for ``last_error``; retrying, backing off and dead-lettering are the outbox's.

Delivery is at least once: a receiver that gets a job twice (a retry after a lost
answer, a worker killed after sending) sees the same idempotency key both times.

``send`` never raises for a failed delivery: network errors, timeouts and refusals
become outcomes. Only a bug (or the cancellation of the caller) escapes it.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Protocol

KEY_PREFIX = "rt-"


class Outcome(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    """Transient: a 5xx or 429, a timeout, a refused connection, storage unavailable."""
    GONE = "gone"
    """Nobody left to deliver to (Web Push subscriptions gone, and removed; a webhook's 410)."""
    FAILED = "failed"
    """Permanent: another 4xx, a refused address; retrying will not help."""


@dataclass(frozen=True, slots=True)
class JobItem:
    """One delivery row's notification."""

    notification_id: int | None
    """The stored notification; None when the user keeps no in-app copy of this type."""
    data_json: str
    actor: str | None
    created_at: int
    """ms since the Unix epoch."""


@dataclass(frozen=True, slots=True)
class Job:
    ids: tuple[int, ...]
    """The delivery rows it covers, ascending."""
    user: str
    transport: str
    type: str
    items: tuple[JobItem, ...]
    """One per row, in the order of ``ids``; more than one: a digest."""
    email: str | None = None
    """The recipient's address, from their preferences (email only)."""

    @property
    def key(self) -> str:
        """The idempotency key: ``rt-<id>`` for one row; for a digest, its first id and
        a digest of every id, so a digest of other rows never shares a key."""
        return idempotency_key(self.ids)

    @property
    def digest(self) -> bool:
        return len(self.items) > 1


def idempotency_key(ids: tuple[int, ...]) -> str:
    if not ids:
        raise ValueError("a job covers at least one delivery")
    first = min(ids)
    if len(ids) == 1:
        return f"{KEY_PREFIX}{first}"
    every = ",".join(map(str, sorted(ids))).encode()
    return f"{KEY_PREFIX}{first}-{hashlib.sha256(every).hexdigest()[:12]}"


class Sender(Protocol):
    """One transport. See the module docstring for the contract."""

    transport: str

    async def send(self, job: Job) -> tuple[Outcome, str]:
        """Try the job once: the outcome, and a detail for ``last_error`` ("" if none)."""
        ...
