"""Small pieces both stores share: clocks, epochs, argument checks."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any, Final

from storage.store import Notification, NotificationPage, Recipient

# Stand-ins for "no limit" in prune, so that its SQL stays one constant string.
NO_CUTOFF: Final = -(2**62)
KEEP_ALL: Final = 2**62


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_epoch() -> str:
    return secrets.token_hex(4)


def check_limit(limit: int) -> None:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")


def prune_arguments(
    namespace: str, older_than_ms: int | None, keep_last: int | None, chunk: int
) -> tuple[str, str, int, int, int] | None:
    """The arguments of the prune statement, or None when there is nothing to prune.

    The statement takes (first room, room bound, ts cutoff, messages kept, chunk):
    rooms ``ns:*`` are exactly the names in ["ns:", "ns;") because ';' follows ':'.
    """
    if older_than_ms is None and keep_last is None:
        return None
    if keep_last is not None and keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, got {keep_last}")
    cutoff = NO_CUTOFF if older_than_ms is None else older_than_ms
    keep = KEEP_ALL if keep_last is None else keep_last
    return namespace + ":", namespace + ";", cutoff, keep, chunk


def first_per_user(recipients: Sequence[Recipient]) -> list[Recipient]:
    """One entry per user (the first given), sorted by user."""
    first: dict[str, Recipient] = {}
    for recipient in recipients:
        first.setdefault(recipient.user, recipient)
    return [first[user] for user in sorted(first)]


def page_from_counts(
    items: list[Notification], counts: Sequence[Sequence[Any]]
) -> NotificationPage:
    """A page from its items and the (type, unread, unseen) rows of the counts query."""
    by_type = {row[0]: row[1] for row in counts if row[1]}
    return NotificationPage(
        items=items,
        unread_count=sum(by_type.values()),
        unread_by_type=by_type,
        unseen_count=sum(row[2] for row in counts),
    )
