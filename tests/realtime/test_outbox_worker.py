"""The outbox worker in process: a real SQLite store, fake senders that record the jobs
they get and answer what the test scripts, and one clock for the store and the worker
that the test moves by hand, so that every wait is a decision the test can see.

What needs real servers (signatures, two instances, kill -9, PostgreSQL outages) is in
tests/e2e/test_outbox_delivery.py and tests/cluster/test_outbox_cluster.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from realtime.broker_memory import MemoryBroker
from realtime.config import (
    EmailSettings,
    OutboxSettings,
    Settings,
    WebhookSettings,
)
from realtime.node import Node
from realtime.outbound import Job, Outcome
from realtime.outbox import Outbox
from realtime.preferences import read as read_preferences
from realtime.presence_memory import MemoryPresence
from realtime.store_calls import StoreCalls
from storage import Delivery, SqliteStore, StorageUnavailable, Store
from tests.realtime.support import connected, settings

T0 = 1_796_000_000_000
UNREAD_DELAY = 300.0
DIGEST_WINDOW = 600.0


class Clock:
    """Milliseconds, moved by the test; the store and the worker both read it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


class FakeSender:
    """A transport: keeps every job, answers from ``answers`` (then delivered), and
    with ``hold`` set waits for it to be released before answering."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.jobs: list[Job] = []
        self.answers: list[tuple[Outcome, str] | BaseException] = []
        self.hold: asyncio.Event | None = None

    async def send(self, job: Job) -> tuple[Outcome, str]:
        self.jobs.append(job)
        if self.hold is not None:
            await self.hold.wait()
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer
        return Outcome.DELIVERED, ""


class Rig:
    """A node without its own outbox, and an outbox of the test's on the same services."""

    def __init__(self, node: Node, store: Store, clock: Clock, outbox: Outbox) -> None:
        self.node, self.store, self.clock, self.outbox = node, store, clock, outbox
        self.webhook = FakeSender("webhook")
        self.email = FakeSender("email")
        outbox.use_senders({"webhook": self.webhook, "email": self.email})
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.outbox.run())

    async def notify(self, users: list[str], type: str = "post_liked", **data: Any) -> None:
        data_json = "{" + ",".join(f'"{k}":{v}' for k, v in data.items()) + "}"
        await self.node.notices.notify(
            to=users, followers_of=None, type=type, data_json=data_json, actor="bob"
        )

    async def prefs(self, user: str, doc: dict[str, Any]) -> None:
        await self.node.notices.set_preferences(user, read_preferences(doc))

    async def jobs(self, user: str | None = None) -> list[Delivery]:
        return await self.store.deliveries(user=user, limit=1000)

    async def until(self, check: Callable[[], Any], what: str) -> None:
        """Poll (async or plain) ``check`` until true; a generous deadline."""
        async with asyncio.timeout(30):
            while True:
                value = check()
                if asyncio.iscoroutine(value):
                    value = await value
                if value:
                    return
                self.outbox.wake()
                await asyncio.sleep(0.01)
        raise AssertionError(what)

    async def until_row(self, user: str, check: Callable[[Delivery], bool]) -> list[Delivery]:
        """Poll until every job of the user passes ``check``; those jobs."""
        found: list[Delivery] = []

        async def rows() -> bool:
            nonlocal found
            found = await self.jobs(user)
            return bool(found) and all(check(d) for d in found)

        await self.until(rows, f"{user}'s jobs as expected")
        return found

    async def states(self, user: str) -> list[str]:
        return [d.state for d in await self.jobs(user)]


def configured(**outbox: Any) -> Settings:
    base = settings()
    return dataclasses.replace(
        base,
        webhook=WebhookSettings(url="http://127.0.0.1:9/hook", secret="s" * 32),
        email=EmailSettings(smtp_host="127.0.0.1", sender="rt@example.com"),
        notifications=dataclasses.replace(
            base.notifications, unread_delay=UNREAD_DELAY, digest_window=DIGEST_WINDOW
        ),
        outbox=OutboxSettings(
            enabled=False,  # the node's own stays off: the test runs one with its clock
            poll_interval=0.02,
            backoff_base=1.0,
            backoff_max=8.0,
            max_attempts=3,
            **outbox,
        ),
    )


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[Node, Store, Rig]] = []

    async def make(
        config: Settings | None = None, wrap: Callable[[Store], Any] | None = None
    ) -> Rig:
        config = config or configured()
        clock = Clock()
        store = SqliteStore(tmp_path / f"outbox{len(made)}.db", timeout=5.0, clock=clock)
        await store.migrate()
        await store.open()
        seen: Any = wrap(store) if wrap is not None else store
        node = Node(config, seen, MemoryBroker(), MemoryPresence(), instance_id="test")
        await node.start()
        outbox = Outbox(
            config,
            seen,
            StoreCalls(node.metrics, 5.0),
            node.presence,
            node.hub,
            node.notices,
            node.metrics,
            clock=clock,
            jitter=lambda: 1.0,  # the longest wait of each backoff step
        )
        node.notices.queued = outbox.wake
        rig = Rig(node, seen, clock, outbox)
        made.append((node, store, rig))
        return rig

    yield make
    for node, store, rig in made:
        if rig.task is not None:
            rig.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rig.task
        await rig.outbox.close()
        await node.close()
        await store.close()


def sample(rig: Rig, name: str, **labels: str) -> float:
    value = rig.node.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# Delivery and settling -------------------------------------------------------------------


async def test_an_offline_recipient_gets_one_job_per_transport(make_rig: Any) -> None:
    rig = await make_rig()
    await rig.prefs("ann", {"email": "ann@example.com"})
    await rig.notify(["ann"], type="user_followed")  # no group: no digest wait
    rig.start()
    await rig.until(lambda: rig.webhook.jobs and rig.email.jobs, "both sent")
    await rig.until(lambda: _all(rig, "ann", "done"), "both done")
    (hook,), (mail,) = rig.webhook.jobs, rig.email.jobs
    rows = await rig.jobs("ann")
    assert hook.key == f"rt-{rows[0].id}" and mail.key == f"rt-{rows[1].id}"
    assert (hook.user, hook.type, hook.email, mail.email) == (
        "ann",
        "user_followed",
        None,
        "ann@example.com",
    )
    assert [d.attempts for d in rows] == [1, 1]
    delivered = {"result": "delivered"}
    assert sample(rig, "realtime_outbox_deliveries_total", transport="webhook", **delivered) == 1
    assert sample(rig, "realtime_outbox_delivery_latency_seconds_count", transport="email") == 1


async def _all(rig: Rig, user: str, state: str) -> bool:
    states = await rig.states(user)
    return bool(states) and all(s == state for s in states)


async def test_transient_failures_back_off_then_go_dead_and_are_requeued(make_rig: Any) -> None:
    rig = await make_rig()
    rig.webhook.answers = [(Outcome.RETRY, "503 busy")] * 3
    await rig.notify(["ann"], type="user_followed")
    rig.start()
    await rig.until(lambda: len(rig.webhook.jobs) == 1, "first try")
    (job,) = await rig.until_row("ann", lambda d: d.last_error == "503 busy")
    # Full jitter at its top (the test's jitter is 1.0): backoff_base * 2**0 seconds.
    assert (job.state, job.attempts, job.due_at) == ("pending", 1, T0 + 1000)
    rig.clock.advance(1)
    (job,) = await rig.until_row("ann", lambda d: d.attempts == 2 and d.leased_until is None)
    assert job.due_at == T0 + 1000 + 2000
    rig.clock.advance(2)
    (job,) = await rig.until_row("ann", lambda d: d.state == "dead")
    assert job.attempts == 3 and job.last_error == "503 busy (gave up after 3 attempts)"
    assert len(rig.webhook.jobs) == 3
    dead = {"transport": "webhook", "result": "dead"}
    assert sample(rig, "realtime_outbox_deliveries_total", **dead) == 1
    retried = {"transport": "webhook", "result": "retried"}
    assert sample(rig, "realtime_outbox_deliveries_total", **retried) == 2
    # Requeued by an operator: tried again at once, and delivered.
    requeued = await rig.outbox.requeue(job.id)
    assert (requeued.state, requeued.attempts) == ("pending", 0)
    await rig.until(lambda: _all(rig, "ann", "done"), "delivered after the requeue")
    assert len(rig.webhook.jobs) == 4 and len({j.key for j in rig.webhook.jobs}) == 1


async def test_gone_is_skipped_failed_is_dead_and_a_sender_bug_is_retried(make_rig: Any) -> None:
    rig = await make_rig()
    rig.webhook.answers = [
        (Outcome.GONE, "410 nobody"),
        (Outcome.FAILED, "400 bad"),
        RuntimeError("a bug"),
    ]
    # Jobs reach the sender in the order they were queued, and it answers in turn.
    for user in ("ann", "bob", "cat"):
        await rig.notify([user], type="user_followed")
    rig.start()
    await rig.until(lambda: _all(rig, "ann", "skipped"), "gone: skipped")
    await rig.until(lambda: _all(rig, "bob", "dead"), "failed: dead")
    (cat,) = await rig.until_row("cat", lambda d: d.last_error is not None)
    assert cat.state == "pending" and cat.last_error == "internal error: RuntimeError: a bug"
    assert [d.last_error for d in await rig.jobs("ann")] == ["410 nobody"]
    assert [d.last_error for d in await rig.jobs("bob")] == ["400 bad"]


# Waiting: online and unread, quiet hours, digests ------------------------------------------


async def test_an_online_recipient_who_reads_in_time_gets_nothing_offline(make_rig: Any) -> None:
    rig = await make_rig()
    await connected(rig.node, "ann")
    await rig.notify(["ann"], type="user_followed")
    rig.start()
    (job,) = await rig.until_row("ann", lambda d: d.due_at != T0)
    # Deferred to the end of the unread delay, the claim's attempt given back.
    assert (job.state, job.due_at, job.attempts) == ("pending", T0 + 300_000, 0)
    page = await rig.node.notices.list("ann", after=None, limit=10, unread=False)
    await rig.node.notices.mark_one_read("ann", page.items[0].id)
    rig.clock.advance(UNREAD_DELAY)
    (job,) = await rig.until_row("ann", lambda d: d.state != "pending")
    assert (job.state, job.last_error) == ("skipped", "read or archived")
    assert rig.webhook.jobs == []
    deferred = {"transport": "webhook", "result": "deferred"}
    assert sample(rig, "realtime_outbox_deliveries_total", **deferred) == 1


async def test_an_online_recipient_who_does_not_read_gets_it_after_the_delay(
    make_rig: Any,
) -> None:
    rig = await make_rig()
    await connected(rig.node, "ann")
    await rig.notify(["ann"], type="user_followed")
    rig.start()
    await rig.until_row("ann", lambda d: d.due_at == T0 + 300_000)
    rig.clock.advance(UNREAD_DELAY)  # still online, still unread
    await rig.until(lambda: _all(rig, "ann", "done"), "delivered after the delay")
    assert len(rig.webhook.jobs) == 1


async def test_quiet_hours_hold_a_job_until_they_end(make_rig: Any) -> None:
    rig = await make_rig()
    local = datetime.fromtimestamp(T0 / 1000, UTC)
    start, end = local - timedelta(hours=1), local + timedelta(hours=2)
    quiet = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}
    await rig.prefs("ann", {"quiet_hours": quiet})
    await rig.notify(["ann"], type="user_followed")
    rig.start()
    ends = int(end.replace(second=0, microsecond=0).timestamp() * 1000)
    (job,) = await rig.until_row("ann", lambda d: d.due_at == ends)
    assert (job.state, job.attempts) == ("pending", 0)
    rig.clock.now = ends
    await rig.until(lambda: _all(rig, "ann", "done"), "delivered when quiet hours end")


async def test_a_changed_preference_skips_what_was_queued(make_rig: Any) -> None:
    rig = await make_rig()
    await rig.notify(["ann"], type="user_followed")
    await rig.prefs("ann", {"types": {"user_followed": {"push": False}}})
    rig.start()
    await rig.until(lambda: _all(rig, "ann", "skipped"), "skipped")
    assert rig.webhook.jobs == []


async def test_email_of_one_group_within_the_window_is_one_digest(make_rig: Any) -> None:
    rig = await make_rig()
    await rig.prefs("ann", {"email": "ann@example.com"})
    for actor_post in (42, 42, 7, 42):
        await rig.notify(["ann"], post_id=actor_post)
        rig.clock.advance(1)
    rig.start()
    # The webhook goes at once; email waits for the digest window of its group.
    await rig.until(lambda: len(rig.webhook.jobs) == 4, "webhooks sent")
    emails = [d for d in await rig.jobs("ann") if d.transport == "email"]
    await rig.until_row("ann", lambda d: d.transport != "email" or d.due_at >= T0 + 600_000)
    assert rig.email.jobs == []
    rig.clock.now = T0 + 603_000
    await rig.until(lambda: _all(rig, "ann", "done"), "digests sent")
    by_post = sorted(rig.email.jobs, key=lambda j: len(j.items))
    assert [len(j.items) for j in by_post] == [1, 3]
    digest = by_post[1]
    assert digest.ids == tuple(emails[i].id for i in (0, 1, 3))
    assert digest.key.startswith(f"rt-{emails[0].id}-") and digest.email == "ann@example.com"
    assert by_post[0].ids == (emails[2].id,)


async def test_a_notification_made_after_the_window_is_the_next_digest(make_rig: Any) -> None:
    rig = await make_rig()
    await rig.prefs("ann", {"email": "ann@example.com", "types": {"post_liked": {"push": False}}})
    await rig.notify(["ann"], post_id=1)
    rig.clock.advance(DIGEST_WINDOW)
    await rig.notify(["ann"], post_id=1)
    rig.clock.advance(1)  # the first window has ended, the second runs
    rig.start()
    await rig.until(lambda: len(rig.email.jobs) == 1, "the first window's digest")
    (first, second) = await rig.jobs("ann")
    await rig.until_row(
        "ann", lambda d: d.id == first.id or d.due_at == second.created_at + 600_000
    )
    rig.clock.advance(DIGEST_WINDOW)
    await rig.until(lambda: _all(rig, "ann", "done"), "both sent")
    assert [j.ids for j in rig.email.jobs] == [(first.id,), (second.id,)]


# Leases and outages ----------------------------------------------------------------------


async def test_a_send_longer_than_the_lease_allows_is_cut_off_and_retried(make_rig: Any) -> None:
    rig = await make_rig(configured(lease=1.0))
    rig.webhook.hold = asyncio.Event()  # the first send never answers
    await rig.notify(["ann"], type="user_followed")
    rig.start()
    (job,) = await rig.until_row("ann", lambda d: d.last_error is not None)
    assert job.last_error == "no answer within 0.75s" and job.state == "pending"
    rig.webhook.hold = None
    rig.clock.advance(10)
    await rig.until(lambda: _all(rig, "ann", "done"), "delivered on the retry")
    assert [j.key for j in rig.webhook.jobs] == [f"rt-{job.id}"] * 2


class Flaky:
    """A store whose claims fail while ``down`` (and reads when told); counts calls."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.down = False
        self.claims = 0
        self.taken = 0
        self.fail_reads = 0  # preference reads to fail, after claims went through
        self.finishes: list[tuple[str, int]] = []  # (state, jobs) of each finishing write

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def claim_deliveries(self, *args: Any, **kwargs: Any) -> list[Delivery]:
        self.claims += 1
        if self.down:
            raise StorageUnavailable("sqlite: down for the test")
        claimed = await self._inner.claim_deliveries(*args, **kwargs)
        self.taken += len(claimed)
        return claimed

    async def finish_deliveries(self, ids: Any, state: str, *args: Any, **kwargs: Any) -> int:
        self.finishes.append((state, len(ids)))
        return await self._inner.finish_deliveries(ids, state, *args, **kwargs)

    async def preferences_of(self, users: Any) -> dict[str, str]:
        if self.fail_reads:
            self.fail_reads -= 1
            raise StorageUnavailable("sqlite: down for the test")
        return await self._inner.preferences_of(users)


async def test_a_storage_outage_pauses_the_worker_and_it_heals(make_rig: Any) -> None:
    flaky: list[Flaky] = []

    def wrap(store: Store) -> Flaky:
        flaky.append(Flaky(store))
        return flaky[0]

    rig = await make_rig(wrap=wrap)
    store = flaky[0]
    store.down = True
    rig.start()
    await rig.until(lambda: sample(rig, "realtime_outbox_pauses_total") >= 3, "paused")
    # One claim per pause: a pause is a wait, never a busy loop.
    assert store.claims <= sample(rig, "realtime_outbox_pauses_total") + 1
    store.down = False
    await rig.notify(["ann"], type="user_followed")
    await rig.until(lambda: _all(rig, "ann", "done"), "delivered after the outage")


async def test_jobs_claimed_just_before_an_outage_are_started_after_it(make_rig: Any) -> None:
    flaky: list[Flaky] = []

    def wrap(store: Store) -> Flaky:
        flaky.append(Flaky(store))
        return flaky[0]

    rig = await make_rig(wrap=wrap)
    await rig.notify(["ann"], type="user_followed")
    flaky[0].fail_reads = 2
    rig.start()
    # Kept through the outage and started after it, under the same claim (the clock
    # stands still: its lease never ends, so no other claim could have taken it).
    await rig.until(lambda: _all(rig, "ann", "done"), "delivered after the outage")
    assert [d.attempts for d in await rig.jobs("ann")] == [1]
    assert flaky[0].taken == 1


async def test_jobs_delivered_together_are_recorded_in_one_write(make_rig: Any) -> None:
    flaky: list[Flaky] = []

    def wrap(store: Store) -> Flaky:
        flaky.append(Flaky(store))
        return flaky[0]

    rig = await make_rig(wrap=wrap)
    rig.webhook.hold = asyncio.Event()
    users = [f"u{i}" for i in range(8)]  # outbox.concurrency: all in flight at once
    await rig.notify(users, type="user_followed")
    rig.start()
    await rig.until(lambda: len(rig.webhook.jobs) == 8, "all in flight")
    rig.webhook.hold.set()  # they all answer at once
    for user in users:
        await rig.until(lambda u=user: _all(rig, u, "done"), "done")
    assert flaky[0].finishes == [("done", 8)]


async def test_a_job_whose_lease_ended_repeatedly_is_dead(make_rig: Any) -> None:
    rig = await make_rig()
    await rig.notify(["ann"], type="user_followed")
    # Three claims whose workers died: each charged an attempt, none answered.
    for _ in range(3):
        assert len(await rig.store.claim_deliveries(rig.clock.now, 10, 1000)) == 1
        rig.clock.advance(1)
    rig.start()
    (job,) = await rig.until_row("ann", lambda d: d.state == "dead")
    assert job.last_error == "3 attempts ended without an answer (lease expired)"
    assert rig.webhook.jobs == []
