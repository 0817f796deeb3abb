"""Jobs as the outbox hands them over, and reading the senders' metrics."""

from __future__ import annotations

from realtime.metrics import Metrics
from realtime.outbound import Job, JobItem

T0 = 1_796_000_000_000


def job(
    transport: str,
    *,
    user: str = "alice",
    type: str = "post_liked",
    actors: tuple[str | None, ...] = ("bob",),
    first_id: int = 7,
    data: str = '{"post_id":42}',
    email: str | None = None,
) -> Job:
    """A job of one row per actor, ids from ``first_id``, a second apart."""
    items = tuple(JobItem(100 + i, data, actor, T0 + 1000 * i) for i, actor in enumerate(actors))
    ids = tuple(range(first_id, first_id + len(items)))
    return Job(ids, user, transport, type, items, email)


def sent(metrics: Metrics, transport: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "realtime_outbound_sends_total", {"transport": transport, "outcome": outcome}
    )
    return value or 0.0
