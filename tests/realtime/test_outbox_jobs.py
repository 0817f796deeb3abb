"""The outbox's pure decisions: rows into jobs, the order of the checks, backoff."""

from __future__ import annotations

import dataclasses

from realtime.config import OutboxSettings
from realtime.outbound import Outcome
from realtime.outbox_jobs import Decision, Facts, Step, backoff_ms, decide, group, job_of, settle
from storage import Delivery

T0 = 1_796_000_000_000
WINDOW = 600_000


def row(
    id: int,
    *,
    user: str = "ann",
    transport: str = "email",
    type: str = "post_liked",
    group_key: str | None = "42",
    created: int = 0,
    notification: int | None = None,
    attempts: int = 1,
) -> Delivery:
    return Delivery(
        id=id,
        user=user,
        transport=transport,
        notification_id=notification if notification is not None else 100 + id,
        type=type,
        data='{"post_id":42}',
        actor=f"actor{id}",
        group_key=group_key,
        created_at=T0 + created,
        due_at=T0 + created,
        state="pending",
        attempts=attempts,
        leased_until=T0 + 60_000,
        last_error=None,
        finished_at=None,
    )


def ids(jobs: list[tuple[Delivery, ...]]) -> list[list[int]]:
    return [[d.id for d in job] for job in jobs]


def test_email_rows_of_one_user_type_and_group_merge_within_the_window() -> None:
    rows = [
        row(1),
        row(2, created=100),
        row(3, transport="webhook"),
        row(4, created=WINDOW),  # the next window
        row(5, user="bob"),
        row(6, type="post_commented"),
        row(7, group_key=None),
        row(8, created=WINDOW - 1),
    ]
    assert ids(group(rows, WINDOW)) == [[1, 2, 8], [3], [4], [5], [6], [7]]
    # No window: every row alone.
    assert ids(group(rows, 0)) == [[i] for i in range(1, 9)]


def test_a_job_carries_its_rows_in_order_and_the_address_for_email_only() -> None:
    job = job_of((row(1), row(2, created=5)), "ann@example.com")
    assert (job.ids, job.user, job.transport, job.type, job.email) == (
        (1, 2),
        "ann",
        "email",
        "post_liked",
        "ann@example.com",
    )
    assert [(i.notification_id, i.actor, i.created_at) for i in job.items] == [
        (101, "actor1", T0),
        (102, "actor2", T0 + 5),
    ]
    assert job_of((row(3, transport="webhook"),), "ann@example.com").email is None


def facts(**changes: object) -> Facts:
    base = Facts(
        now=T0 + WINDOW,
        unread=frozenset({101, 102}),
        wanted=True,
        online=False,
        quiet_until=None,
        unread_delay_ms=300_000,
        digest_window_ms=WINDOW,
        max_attempts=3,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def steps(decisions: list[Decision]) -> list[tuple[Step, list[int], int | None]]:
    return [(d.step, [r.id for r in d.rows], d.due_at) for d in decisions]


def test_the_checks_come_in_their_order() -> None:
    job = (row(1), row(2, created=1))
    assert steps(decide(job, facts())) == [(Step.SEND, [1, 2], None)]
    # Dead beats everything: earlier claims all died.
    dead = (row(1, attempts=4),)
    assert steps(decide(dead, facts(wanted=False))) == [(Step.DEAD, [1], None)]
    assert steps(decide(job, facts(wanted=False))) == [(Step.SKIP, [1, 2], None)]
    # Read rows are skipped, the rest goes on.
    assert steps(decide(job, facts(unread=frozenset({102})))) == [
        (Step.SKIP, [1], None),
        (Step.SEND, [2], None),
    ]
    assert steps(decide(job, facts(unread=frozenset()))) == [(Step.SKIP, [1, 2], None)]
    # An open digest window, then online and unread, then quiet hours.
    early = facts(now=T0 + 10, online=True, quiet_until=T0 + 10**9)
    assert steps(decide(job, early)) == [(Step.DEFER, [1, 2], T0 + WINDOW)]
    online = facts(now=T0 + 10, online=True, quiet_until=T0 + 10**9, digest_window_ms=0)
    assert steps(decide(job, online)) == [(Step.DEFER, [1, 2], T0 + 1 + 300_000)]
    quiet = facts(now=T0 + 10, quiet_until=T0 + 10**9, digest_window_ms=0)
    assert steps(decide(job, quiet)) == [(Step.DEFER, [1, 2], T0 + 10**9)]


def test_a_job_without_a_stored_notification_never_waits_for_it_to_be_read() -> None:
    job = (dataclasses.replace(row(1, transport="webhook"), notification_id=None),)
    assert steps(decide(job, facts(now=T0 + 10, online=True, unread=frozenset()))) == [
        (Step.SEND, [1], None)
    ]


def test_answers_settle_the_job() -> None:
    settings = OutboxSettings(max_attempts=3, backoff_base=2.0, backoff_max=5.0)
    job = (row(1, attempts=2),)

    def answer(outcome: Outcome, rows: tuple[Delivery, ...] = job) -> Decision:
        return settle(outcome, "why", rows, now=T0, settings=settings, random=lambda: 0.5)

    assert answer(Outcome.DELIVERED).step is Step.DONE
    assert (answer(Outcome.GONE).step, answer(Outcome.GONE).reason) == (Step.SKIP, "why")
    assert answer(Outcome.FAILED).step is Step.DEAD
    retry = answer(Outcome.RETRY)
    assert (retry.step, retry.due_at, retry.reason) == (Step.RETRY, T0 + 2000, "why")
    last = answer(Outcome.RETRY, (row(1, attempts=3),))
    assert (last.step, last.reason) == (Step.DEAD, "why (gave up after 3 attempts)")


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    settings = OutboxSettings(backoff_base=2.0, backoff_max=60.0)
    tops = [backoff_ms(n, settings, lambda: 1.0) for n in (1, 2, 3, 5, 6, 1000)]
    assert tops == [2000, 4000, 8000, 32_000, 60_000, 60_000]
    assert backoff_ms(3, settings, lambda: 0.0) == 0
    assert backoff_ms(3, settings, lambda: 0.25) == 2000
