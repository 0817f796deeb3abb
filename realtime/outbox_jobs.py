"""The outbox's decisions, pure: claimed rows into jobs, what to do with each job, and
what a sender's answer means for it.

No I/O here: the worker (``outbox.py``) gathers the facts (the clock, which
notifications are still unread, the user's preferences, whether they are online)
and carries out what these functions decide. The order of the checks in
``decide`` is the one docs/notifications.md describes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from storage import Delivery

from .config import OutboxSettings
from .outbound import Job, JobItem, Outcome

Rows = tuple[Delivery, ...]
# Far enough: 2**60 seconds of backoff is capped by backoff_max long before.
MAX_EXPONENT = 60


class Step(enum.StrEnum):
    SEND = "send"
    DONE = "done"
    RETRY = "retry"
    DEFER = "defer"
    """Back to the queue until ``due_at``, the attempt given back: it was not tried."""
    SKIP = "skip"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Decision:
    step: Step
    rows: Rows
    due_at: int | None = None
    """DEFER and RETRY: when the rows are due again (ms)."""
    reason: str = ""
    """What ``last_error`` says (SKIP, DEAD, RETRY) or why it waits (DEFER)."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What the worker knows about one job's recipient when it decides."""

    now: int
    unread: frozenset[int]
    """Of the job's notification ids, those neither read nor archived."""
    wanted: bool
    """The user's preferences still want this job's transport for its type."""
    online: bool
    """The user has a live connection on some instance (only asked when it matters)."""
    quiet_until: int | None
    """When the user's quiet hours end, if they hold now."""
    unread_delay_ms: int
    digest_window_ms: int
    max_attempts: int


def group(rows: Sequence[Delivery], digest_window_ms: int) -> list[Rows]:
    """Claimed rows as jobs, ascending by their first id: each row alone, except email
    rows of one user, type and group, which merge into digests spanning at most
    ``digest_window_ms`` from the earliest made. A job's rows are ascending by id."""
    jobs: list[Rows] = []
    digests: dict[tuple[str, str, str], list[Delivery]] = {}
    for row in rows:
        if row.transport == "email" and row.group_key is not None and digest_window_ms > 0:
            digests.setdefault((row.user, row.type, row.group_key), []).append(row)
        else:
            jobs.append((row,))
    for members in digests.values():
        members.sort(key=lambda d: (d.created_at, d.id))
        chunk = [members[0]]
        for row in members[1:]:
            if row.created_at < chunk[0].created_at + digest_window_ms:
                chunk.append(row)
            else:
                jobs.append(_by_id(chunk))
                chunk = [row]
        jobs.append(_by_id(chunk))
    return sorted(jobs, key=lambda job: job[0].id)


def _by_id(rows: list[Delivery]) -> Rows:
    return tuple(sorted(rows, key=lambda d: d.id))


def job_of(rows: Rows, email: str | None) -> Job:
    """The job a sender gets for these rows (``email``: the recipient's address)."""
    first = rows[0]
    items = tuple(JobItem(r.notification_id, r.data, r.actor, r.created_at) for r in rows)
    address = email if first.transport == "email" else None
    return Job(tuple(r.id for r in rows), first.user, first.transport, first.type, items, address)


def online_wait(rows: Rows, now: int, unread_delay_ms: int) -> int | None:
    """Until when the job waits if its recipient is online: until its newest stored
    notification has gone unread for ``unread_delay_ms``. None when it need not wait
    (a job with no stored notification was never pushed live, so it never waits)."""
    made = [r.created_at for r in rows if r.notification_id is not None]
    if not made or unread_delay_ms <= 0:
        return None
    until = max(made) + unread_delay_ms
    return until if until > now else None


def decide(rows: Rows, facts: Facts) -> list[Decision]:
    """What to do with a claimed job: the rows to skip (read ones), then one decision
    for the rest."""
    attempts = max(r.attempts for r in rows)
    if attempts > facts.max_attempts:
        # Each claim charged an attempt and no answer was ever recorded: the workers
        # holding it died (or it makes them die).
        reason = f"{attempts - 1} attempts ended without an answer (lease expired)"
        return [Decision(Step.DEAD, rows, reason=reason)]
    if not facts.wanted:
        return [Decision(Step.SKIP, rows, reason="not wanted any more: preferences changed")]
    read = tuple(
        r for r in rows if r.notification_id is not None and r.notification_id not in facts.unread
    )
    decisions = [Decision(Step.SKIP, read, reason="read or archived")] if read else []
    rest = tuple(r for r in rows if r not in read)
    if not rest:
        return decisions
    first = min(r.created_at for r in rows)
    digest = rest[0].transport == "email" and rest[0].group_key is not None
    if digest and facts.digest_window_ms > 0 and first + facts.digest_window_ms > facts.now:
        due = first + facts.digest_window_ms
        return [*decisions, Decision(Step.DEFER, rest, due, "digest window")]
    waits = online_wait(rest, facts.now, facts.unread_delay_ms)
    if facts.online and waits is not None:
        return [*decisions, Decision(Step.DEFER, rest, waits, "online, not read yet")]
    if facts.quiet_until is not None and facts.quiet_until > facts.now:
        return [*decisions, Decision(Step.DEFER, rest, facts.quiet_until, "quiet hours")]
    return [*decisions, Decision(Step.SEND, rest)]


def settle(
    outcome: Outcome,
    detail: str,
    rows: Rows,
    *,
    now: int,
    settings: OutboxSettings,
    random: Callable[[], float],
) -> Decision:
    """What a sender's answer means for the job's rows."""
    if outcome is Outcome.DELIVERED:
        return Decision(Step.DONE, rows)
    if outcome is Outcome.GONE:
        # Nobody left to reach (no subscription, the receiver's 410): nothing for an
        # operator to look at, so no dead letter.
        return Decision(Step.SKIP, rows, reason=detail or "gone")
    if outcome is Outcome.FAILED:
        return Decision(Step.DEAD, rows, reason=detail or "failed")
    attempts = max(r.attempts for r in rows)
    if attempts >= settings.max_attempts:
        return Decision(Step.DEAD, rows, reason=f"{detail} (gave up after {attempts} attempts)")
    return Decision(Step.RETRY, rows, now + backoff_ms(attempts, settings, random), detail)


def backoff_ms(attempts: int, settings: OutboxSettings, random: Callable[[], float]) -> int:
    """Full jitter: a random wait up to min(backoff_max, backoff_base * 2**(attempts-1))
    seconds, so that jobs failing together do not come back together."""
    exponent = min(max(attempts - 1, 0), MAX_EXPONENT)
    ceiling = min(settings.backoff_max, settings.backoff_base * 2.0**exponent)
    return int(random() * ceiling * 1000)
