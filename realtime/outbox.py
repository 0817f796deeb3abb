"""The durable outbox: the worker that delivers queued jobs, and dead letters over REST.

Delivery jobs are rows of ``deliveries``, written in the transaction that stores
their notification (``notices.py``), so a crash loses none. Every instance with
``outbox.enabled`` runs a worker (``run``, owned by the node). The store's claim gives
each job to one worker at a time, under a lease of ``outbox.lease``: a worker that
dies holding jobs loses them when the lease ends, and another takes them. Delivery is
therefore at least once; receivers drop repeats by the idempotency key.

The worker claims only as many jobs as it has free slots (``outbox.concurrency``),
so a claimed job starts at once and its lease covers its own send only. For each job
``outbox_jobs.decide`` says, in order: dead when earlier claims of it all died;
skipped when the user's preferences no longer want its transport, or (row by row)
when its notification was read or archived; deferred while an email digest's window
is open, while the user is online and the notification is younger than
``notifications.unread_delay``, and through quiet hours; else it goes to the sender,
whose answer settles it (``outbox_jobs.settle``). Deferring gives back the attempt.

Every wait is bounded: a send by three quarters of the lease, presence by the broker's
timeout, store calls by the store's. Storage unavailable pauses the worker (doubling
up to ``MAX_PAUSE``), and it resumes by itself; a job's settling write is retried
until its lease ends, after which another claim takes the job again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp

from protocol import CommandError, ErrorCode
from storage import Delivery, StorageError, StorageUnavailable, Store

from . import preferences as prefs_
from .config import NotificationTypeSettings, Settings
from .convert import now_ms, user_room
from .hub import Hub
from .metrics import Metrics
from .notices import Notices
from .outbound import Outcome, Sender, build_senders
from .outbox_jobs import Decision, Facts, Rows, Step, decide, group, job_of, online_wait, settle
from .preferences import TRANSPORTS, Preferences
from .presence import Presence
from .store_calls import StoreCalls
from .tasks import TaskSet

log = logging.getLogger(__name__)

MAX_PAUSE: Final = 5.0
"""Seconds, at most, between tries while storage is unavailable."""
DEPTH_INTERVAL: Final = 5.0
"""Seconds between reads of the queue depth (the pending gauge)."""
SEND_SHARE: Final = 0.75
"""Of the lease, what one send may take: the rest is for settling it."""
SETTLE_RETRY: Final = 0.5
"""Seconds before a job's result is written again after storage failed (doubling)."""
DRAIN_TIMEOUT: Final = 10.0

# What each settling step counts as, per row.
_RESULTS: Final = {
    Step.DONE: "delivered",
    Step.RETRY: "retried",
    Step.DEFER: "deferred",
    Step.SKIP: "skipped",
    Step.DEAD: "dead",
}


@dataclass(frozen=True, slots=True)
class _Round:
    """What one claim's jobs share: the facts read once for all of them."""

    prefs: dict[str, Preferences]
    unread: frozenset[int]


@dataclass(frozen=True, slots=True)
class _Done:
    ids: list[int]
    lease: int | None
    future: asyncio.Future[int]


class _DoneWrites:
    """Delivered jobs, recorded many in one write (group commit): while one write is in
    flight the next batch gathers, so a database that syncs every commit to disk syncs
    once per batch, not once per job. A writer task of its own runs while any wait."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._waiting: list[_Done] = []
        self._writing = False
        self._writer = TaskSet()

    async def write(self, ids: list[int], lease: int | None) -> int:
        """Mark the jobs done (under ``lease``); how many changed, or StorageError."""
        entry = _Done(ids, lease, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        if not self._writing:
            self._writing = True
            self._writer.spawn(self._write_all(), "outbox-done-writes")
        return await entry.future

    async def close(self) -> None:
        await self._writer.close()

    async def _write_all(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await self._write(batch)
                except BaseException as error:
                    _fail(batch, error)
                    raise
        finally:
            self._writing = False
            # Only when cancelled (at close) is anything left: those jobs end too.
            left, self._waiting = self._waiting, []
            _fail(left, asyncio.CancelledError())

    async def _write(self, batch: list[_Done]) -> None:
        by_lease: dict[int | None, list[_Done]] = {}
        for entry in batch:
            by_lease.setdefault(entry.lease, []).append(entry)
        for lease, entries in by_lease.items():
            ids = [i for entry in entries for i in entry.ids]
            try:
                changed = await self._store.finish_deliveries(ids, "done", None, lease=lease)
            except StorageError as error:
                _fail(entries, error)
                continue
            for entry in entries:
                if not entry.future.done():
                    entry.future.set_result(changed)


def _fail(entries: list[_Done], error: BaseException) -> None:
    for entry in entries:
        if entry.future.done():
            continue
        if isinstance(error, Exception):
            entry.future.set_exception(error)
        else:  # the writer was cancelled (the outbox is closing): so are the waiters
            entry.future.cancel()


class Outbox:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        stored: StoreCalls,
        presence: Presence,
        hub: Hub,
        notices: Notices,
        metrics: Metrics,
        *,
        clock: Callable[[], int] = now_ms,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._outbox = settings.outbox
        self._store = store
        self._stored = stored
        self._presence = presence
        self._hub = hub
        self._notices = notices
        self._metrics = metrics
        self._clock = clock
        self._jitter = jitter
        self._senders: dict[str, Sender] = {}
        self._http: aiohttp.ClientSession | None = None
        self._jobs = TaskSet()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()  # no job in flight
        self._idle.set()
        self._stopping = False
        self._held: list[Delivery] = []  # claimed, not started: storage failed between
        self._done = _DoneWrites(store)
        # Claim again once this many slots are free (or none is busy).
        self._claim_at = max(1, self._outbox.concurrency // 4)

    # Lifecycle --------------------------------------------------------------------------

    def use_senders(self, senders: dict[str, Sender]) -> None:
        """Deliver with these senders (tests; ``start`` builds the configured ones)."""
        self._senders = dict(senders)

    async def start(self) -> None:
        """Build the configured senders: reads the VAPID key and the email templates,
        so a bad file stops start-up naming it."""
        if self._senders:
            return
        self._http = aiohttp.ClientSession()
        try:
            self._senders = build_senders(self._settings, self._store, self._metrics, self._http)
        except BaseException:
            await self._http.close()
            self._http = None
            raise
        if not self._senders:
            log.info("outbox: no transport configured ([webpush], [webhook], [email])")

    @property
    def transports(self) -> list[str]:
        """What this worker delivers (and therefore claims)."""
        return sorted(self._senders)

    def wake(self) -> None:
        """Look for due jobs now (new ones were queued, one was requeued)."""
        self._wakeup.set()

    async def drain(self, seconds: float = DRAIN_TIMEOUT) -> None:
        """Stop claiming and let the jobs in flight finish, for up to ``seconds``."""
        self._stopping = True
        self._wakeup.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._idle.wait()

    async def close(self) -> None:
        """Cancel jobs still in flight (their leases end and others retake them)."""
        self._stopping = True
        await self._jobs.close()
        await self._done.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # The worker -------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and deliver until stopped or cancelled (the node owns this task)."""
        if not self._senders:
            return
        failures = 0
        depth_at = 0.0
        while not self._stopping:
            if time.monotonic() >= depth_at:
                depth_at = time.monotonic() + DEPTH_INTERVAL
                await self._read_depth()
            free = self._outbox.concurrency - len(self._jobs)
            if free < self._claim_at and len(self._jobs):
                await self._wait(self._outbox.poll_interval)
                continue
            wanted = min(self._outbox.batch, free)
            try:
                claimed = await self._claim(wanted)
            except StorageError as error:
                failures += 1
                await self._pause(failures, error)
                continue
            failures = 0
            if len(claimed) < wanted:
                await self._wait(self._outbox.poll_interval)

    async def _wait(self, seconds: float) -> None:
        """Until woken (new jobs, a job done) or ``seconds`` passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()
        self._wakeup.clear()

    async def _pause(self, failures: int, error: StorageError) -> None:
        seconds = min(MAX_PAUSE, self._outbox.poll_interval * 2.0 ** min(failures, 30))
        self._metrics.outbox_pauses.inc()
        if isinstance(error, StorageUnavailable):
            self._metrics.storage_errors.inc()
            log.warning("outbox paused %.1fs: storage unavailable: %s", seconds, error)
        else:
            log.error("outbox paused %.1fs: storage error: %s", seconds, error)
        await asyncio.sleep(seconds)

    async def _read_depth(self) -> None:
        try:
            async with asyncio.timeout(self._settings.storage.timeout):
                pending = await self._store.pending_deliveries()
        except (StorageError, TimeoutError) as error:
            log.debug("outbox queue depth not read: %s", error)
            return
        for transport in TRANSPORTS:
            self._metrics.outbox_pending.labels(transport).set(pending.get(transport, 0))

    async def _claim(self, limit: int) -> list[Delivery]:
        """Claim due jobs and start them; the rows claimed.

        Rows claimed when the reads that follow failed are kept and started on the next
        try, while enough of their lease is left; else they are left to expire and be
        claimed again.
        """
        now = self._clock()
        window = self._digest_window_ms
        lease_ms = int(self._outbox.lease * 1000)
        rows, self._held = self._held, []
        if rows and (rows[0].leased_until or 0) - now < lease_ms * SEND_SHARE:
            rows = []
        if not rows:
            rows = await self._store.claim_deliveries(
                now, limit, lease_ms, transports=self.transports, digest_window_ms=window
            )
            if not rows:
                return rows
        try:
            facts = await self._round(rows)
        except StorageError:
            self._held = rows
            raise
        for job in group(rows, window):
            task = self._jobs.spawn(self._process(job, facts), f"outbox-job-{job[0].id}")
            task.add_done_callback(self._job_done)
        self._idle.clear()
        return rows

    def _job_done(self, _: object) -> None:
        self._wakeup.set()
        if not len(self._jobs):  # the TaskSet forgot the task already
            self._idle.set()

    @property
    def _digest_window_ms(self) -> int:
        return int(self._settings.notifications.digest_window * 1000)

    async def _round(self, rows: Sequence[Delivery]) -> _Round:
        users = sorted({r.user for r in rows})
        docs = await self._store.preferences_of(users)
        ids = [r.notification_id for r in rows if r.notification_id is not None]
        unread = await self._store.unread_notifications(ids) if ids else set()
        prefs = {user: prefs_.load(docs.get(user)) for user in users}
        return _Round(prefs, frozenset(unread))

    # One job ----------------------------------------------------------------------------

    async def _process(self, rows: Rows, shared: _Round) -> None:
        """The top of a job's task: decide, send, settle."""
        first = rows[0]
        prefs = shared.prefs[first.user]
        rules = self._rules(first.type)
        now = self._clock()
        notifications = self._settings.notifications
        unread_delay_ms = int(notifications.unread_delay * 1000)
        waits = online_wait(rows, now, unread_delay_ms)
        channels = prefs_.channels_for(prefs, rules)
        facts = Facts(
            now=now,
            unread=shared.unread,
            wanted=first.transport in prefs_.transports_for(channels, self._settings, prefs),
            online=waits is not None and await self._online(first.user),
            quiet_until=prefs_.quiet_until(prefs, rules, now),
            unread_delay_ms=unread_delay_ms,
            digest_window_ms=self._digest_window_ms,
            max_attempts=self._outbox.max_attempts,
        )
        lease = first.leased_until
        for decided in decide(rows, facts):
            if decided.step is Step.SEND:
                await self._record(await self._send(decided.rows, prefs.email), lease)
            else:
                await self._record(decided, lease)

    async def _send(self, rows: Rows, email: str | None) -> Decision:
        job = job_of(rows, email)
        sender = self._senders[job.transport]
        seconds = self._outbox.lease * SEND_SHARE
        try:
            async with asyncio.timeout(seconds):
                outcome, detail = await sender.send(job)
        except TimeoutError:
            outcome, detail = Outcome.RETRY, f"no answer within {seconds:g}s"
        except Exception as error:  # a sender's bug must not kill the worker
            log.exception("the %s sender failed on %s", job.transport, job.key)
            outcome, detail = Outcome.RETRY, f"internal error: {type(error).__name__}: {error}"
        return settle(
            outcome, detail, rows, now=self._clock(), settings=self._outbox, random=self._jitter
        )

    async def _record(self, decision: Decision, lease: int | None) -> None:
        """Write the decision, retrying while storage is down, until the lease ends."""
        if not await self._write_until_lease_ends(lambda: self._write(decision, lease), lease):
            return
        rows = decision.rows
        transport = rows[0].transport
        if decision.step is Step.DONE:
            now = self._clock()
            self._metrics.outbox_delivered(transport, [(now - r.created_at) / 1000 for r in rows])
        else:
            self._metrics.outbox_settled(transport, _RESULTS[decision.step], len(rows))
        if decision.step is Step.DEAD:
            ids = [r.id for r in rows]
            log.warning("delivery %s by %s is dead: %s", ids, transport, decision.reason)

    def _write(self, decision: Decision, lease: int | None) -> Awaitable[int]:
        ids = [r.id for r in decision.rows]
        store = self._store
        match decision.step:
            case Step.DONE:
                return self._done.write(ids, lease)
            case Step.SKIP:
                return store.finish_deliveries(ids, "skipped", decision.reason, lease=lease)
            case Step.DEAD:
                return store.finish_deliveries(ids, "dead", decision.reason, lease=lease)
            case Step.RETRY:
                assert decision.due_at is not None
                return store.retry_deliveries(ids, decision.due_at, decision.reason, lease=lease)
            case Step.DEFER:
                assert decision.due_at is not None
                return store.reschedule_deliveries(ids, decision.due_at, lease=lease)
            case Step.SEND:
                raise AssertionError("a job to send is sent, not recorded")

    async def _write_until_lease_ends(
        self, write: Callable[[], Awaitable[int]], lease: int | None
    ) -> bool:
        """True once written; False when the lease ended first (another claim will
        take the job again and deliver it once more)."""
        pause = SETTLE_RETRY
        while True:
            try:
                await write()
                return True
            except StorageError as error:
                left = (lease or 0) - self._clock()
                if left <= 0:
                    log.warning("outbox: a job's result was not recorded in time: %s", error)
                    return False
                self._metrics.storage_errors.inc()
                await asyncio.sleep(min(pause, left / 1000))
                pause = min(pause * 2, MAX_PAUSE)

    def _rules(self, type_name: str) -> NotificationTypeSettings:
        try:
            return self._notices.type_settings(type_name)
        except CommandError:
            # No longer configured: the rules of a free type.
            default = self._settings.notifications.default_type
            return dataclasses.replace(default, name=type_name)

    async def _online(self, user: str) -> bool:
        """A live connection of the user on any instance; unknown counts as online
        (the job then waits for the unread delay rather than risk a needless push)."""
        if not self._presence.shared:
            return bool(self._hub.user_connections(user))
        try:
            async with asyncio.timeout(self._settings.broker.timeout):
                return await self._presence.connections(user_room(user)) > 0
        except TimeoutError:
            log.warning("outbox: presence of %s unknown (no answer in time)", user)
            return True

    # Dead letters (REST) ----------------------------------------------------------------

    async def deliveries(
        self, *, user: str | None, state: str | None, limit: int, after: int | None
    ) -> list[Delivery]:
        return await self._stored(
            self._store.deliveries(user=user, state=state, limit=limit, after=after)
        )

    async def requeue(self, id: int) -> Delivery:
        """Make a dead job pending again, due now."""
        found = await self._stored(self._store.requeue_delivery(id))
        if found is None:
            raise CommandError(ErrorCode.NOT_FOUND, f"no dead delivery {id}")
        self.wake()
        return found
