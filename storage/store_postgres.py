"""The Store on PostgreSQL: any number of instances share one database.

Appends are group-committed. Concurrent ``append`` calls queue up; a batch takes
everything queued and writes it in one transaction, and while batches are in
flight (up to ``max_batches``, each on its own pool connection) the next one
accumulates. A batch is one call of the
``realtime_append`` function (migration 0002) between BEGIN and COMMIT:

1. it creates missing room rows (``INSERT … ON CONFLICT DO NOTHING``, random epoch);
2. locks the batch's room rows with ``SELECT … FOR UPDATE`` in sorted room order,
   so batches of any instance wait for each other instead of deadlocking;
3. looks up the batch's client_ids among stored messages: with the room rows
   locked no other writer of these rooms is running, so what it finds is final;
4. numbers the new messages (deduplicating within the batch too), updates
   ``last_seq`` and inserts them, set-based, in one statement.

The row lock serializes writers of a room until commit, so seqs are gapless and
in commit order however many instances append. A batch that fails for a reason
other than an outage is retried one message at a time, so that one bad message
fails alone.

Healing: the pool connects lazily, so ``open()`` succeeds while PostgreSQL is down
(it logs a warning; calls raise ``StorageUnavailable`` until the server is back).
A connection that saw an outage or an interrupted query is terminated, never put
back in use: the pool opens a fresh one at the next call. After PostgreSQL
restarts, the next calls succeed without reopening the store.

Every call has one deadline (``timeout``) covering the wait for a connection and
all its statements; the server gets the same as ``statement_timeout`` and
``lock_timeout``, so a session whose client went away does not hold locks long.
An append's deadline starts when ``append`` is called: the wait for a batch to
take it and the batch's own time share it (a batch runs within the earliest
deadline of the appends it holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from storage.common import (
    KEEP_ALL,
    check_limit,
    first_per_user,
    new_epoch,
    now_ms,
    page_from_counts,
    prune_arguments,
)
from storage.migrate import load_migrations, migrate_postgres
from storage.store import (
    Appended,
    Delivery,
    HistoryPage,
    NewMessage,
    Notification,
    NotificationBatch,
    NotificationPage,
    PushSubscription,
    Recipient,
    Recovery,
    StorageError,
    StorageUnavailable,
    StoredMessage,
)

log = logging.getLogger(__name__)

# Generic only in the stubs: a string, so that it is never evaluated.
_Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
Clock = Callable[[], int]

# Errors that mean "the database cannot be used right now": nothing was done.
_OUTAGES: Final = (
    OSError,  # refused, reset, unreachable, DNS
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,  # class 08, lost connections
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, starting up, canceled
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.LockNotAvailableError,  # our lock_timeout
    asyncpg.exceptions.TransactionRollbackError,  # class 40: rolled back, safe to retry
)
_DRIVER_ERRORS: Final = (
    asyncpg.exceptions.PostgresError,
    asyncpg.exceptions.InterfaceError,
    *_OUTAGES,
)
_BROKEN_CONNECTION_HINTS: Final = (
    "closed",
    "closing",
    "another operation",  # "another operation (2) is in progress": a query was cut off
    "released back to the pool",
)


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, (*_OUTAGES, StorageUnavailable)):
        return True
    # asyncpg reports a connection closed under it as a plain InterfaceError;
    # its ValueError kind is about bad arguments (whose text may contain anything).
    return (
        isinstance(exc, asyncpg.exceptions.InterfaceError)
        and not isinstance(exc, ValueError)
        and any(hint in str(exc) for hint in _BROKEN_CONNECTION_HINTS)
    )


def _storage_error(exc: BaseException) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    detail = str(exc) or type(exc).__name__
    error = StorageUnavailable if _is_outage(exc) else StorageError
    return error(f"postgres: {detail}")


def _discard(conn: Any) -> None:
    """Terminate a connection whose state is unknown, keeping the error that got us here."""
    try:
        conn.terminate()
    except asyncpg.exceptions.InterfaceError as error:
        # Already released or closed under us: nothing left to terminate.
        log.debug("connection already gone: %s", error)


async def _keep_session(conn: Any) -> None:
    """Pool reset hook: our sessions never change state, so skip asyncpg's reset
    query (one round trip per call). An open transaction is still rolled back."""


# SQL: constant strings, so that asyncpg's statement cache prepares each once. --------

_MESSAGE_COLUMNS = "room, seq, user_id, body, ts, client_id"
_NOTIFICATION_COLUMNS = "id, user_id, type, data, actor, ts, read, seen, archived"

_LATEST_SEQS = "SELECT room, last_seq FROM rooms WHERE room = ANY($1::text[])"
_APPEND = "SELECT * FROM realtime_append($1, $2, $3, $4, $5, $6, $7)"
_ENSURE_ROOM = (
    "INSERT INTO rooms (room, last_seq, epoch) VALUES ($1, 0, $2) ON CONFLICT (room) DO NOTHING"
)


def _room_with_messages(condition: str, order: str) -> str:
    """The room's row joined with a page of its messages: one statement, one snapshot.

    No row at all: the room has none yet. A row with a null seq: no messages.
    """
    return f"""
SELECT r.last_seq, r.epoch, {", ".join("m." + c for c in _MESSAGE_COLUMNS.split(", "))}
FROM rooms r
LEFT JOIN LATERAL (
    SELECT {_MESSAGE_COLUMNS} FROM messages
    WHERE room = r.room AND {condition} ORDER BY seq {order} LIMIT $3
) m ON true
WHERE r.room = $1
ORDER BY m.seq
"""


_RECOVER = _room_with_messages("seq > $2", "ASC")
_HISTORY_AFTER = _RECOVER
_HISTORY_BEFORE = _room_with_messages("seq < $2", "DESC")
_MESSAGES_AFTER = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3"
)
_SET_READ = """
INSERT INTO reads (room, user_id, seq) VALUES ($1, $2, $3)
ON CONFLICT (room, user_id) DO UPDATE SET seq = greatest(reads.seq, excluded.seq)
RETURNING seq
"""
_PRUNE = """
WITH doomed AS (
    SELECT m.room, m.seq FROM messages m JOIN rooms r ON r.room = m.room
    WHERE m.room >= $1 AND m.room < $2 AND (m.ts < $3 OR m.seq <= r.last_seq - $4)
    LIMIT $5
)
DELETE FROM messages m USING doomed d WHERE m.room = d.room AND m.seq = d.seq
"""
_ADD_MEMBER = """
INSERT INTO members (room, user_id, created_at) VALUES ($1, $2, $3)
ON CONFLICT (room, user_id) DO NOTHING RETURNING true
"""
_REMOVE_MEMBER = "DELETE FROM members WHERE room = $1 AND user_id = $2 RETURNING true"
_IS_MEMBER = "SELECT EXISTS (SELECT 1 FROM members WHERE room = $1 AND user_id = $2)"
_MEMBERS = "SELECT user_id FROM members WHERE room = $1 ORDER BY user_id"
_FOLLOW = """
INSERT INTO follows (target, follower, created_at) VALUES ($1, $2, $3)
ON CONFLICT (target, follower) DO NOTHING RETURNING true
"""
_UNFOLLOW = "DELETE FROM follows WHERE target = $1 AND follower = $2 RETURNING true"
_IS_FOLLOWING = "SELECT EXISTS (SELECT 1 FROM follows WHERE target = $1 AND follower = $2)"
_FOLLOWERS = """
SELECT follower FROM follows WHERE target = $1 AND follower > $2 ORDER BY follower LIMIT $3
"""
_ADD_NOTIFICATIONS = f"""
INSERT INTO notifications (user_id, type, data, actor, ts, read)
SELECT u, $2, $3, $4, $5, false FROM unnest($1::text[]) AS u ORDER BY u
RETURNING {_NOTIFICATION_COLUMNS}
"""
_ADD_FOLLOWER_NOTIFICATIONS = f"""
INSERT INTO notifications (user_id, type, data, actor, ts, read)
SELECT follower, $4, $5, $6, $7, false FROM follows
WHERE target = $1 AND follower > $2 ORDER BY follower LIMIT $3
RETURNING {_NOTIFICATION_COLUMNS}
"""
# Identity values are taken at insert but seen at commit: two transactions could
# commit out of id order, and a reader paging with ``after`` would skip the late
# one. Inserting under one transaction lock makes commit order id order.
_LOCK_NOTIFICATION_IDS = "SELECT pg_advisory_xact_lock(7236021)"
# The list queries take (user, archived, ...): archived ones are listed only when asked.
_NOTIFICATIONS_AFTER = f"""
SELECT {_NOTIFICATION_COLUMNS} FROM notifications
WHERE user_id = $1 AND archived = $2 AND id > $3 ORDER BY id LIMIT $4
"""
_UNREAD_AFTER = f"""
SELECT {_NOTIFICATION_COLUMNS} FROM notifications
WHERE user_id = $1 AND NOT read AND archived = $2 AND id > $3 ORDER BY id LIMIT $4
"""
_NOTIFICATIONS_LATEST = f"""
SELECT {_NOTIFICATION_COLUMNS} FROM notifications
WHERE user_id = $1 AND archived = $2 ORDER BY id DESC LIMIT $3
"""
_UNREAD_LATEST = f"""
SELECT {_NOTIFICATION_COLUMNS} FROM notifications
WHERE user_id = $1 AND NOT read AND archived = $2 ORDER BY id DESC LIMIT $3
"""
_UNREAD_COUNT = (
    "SELECT count(*) FROM notifications WHERE user_id = $1 AND NOT read AND NOT archived"
)
# Per type: unread, unseen (both partial indexes serve the OR).
_COUNTS = """
SELECT type, count(*) FILTER (WHERE NOT read), count(*) FILTER (WHERE NOT seen)
FROM notifications WHERE user_id = $1 AND NOT archived AND (NOT read OR NOT seen)
GROUP BY type
"""
# The CTE's update is invisible to the outer count (same snapshot), hence the
# subtraction: the unread count after this statement, in one round trip.
_MARK_IDS_READ = """
WITH marked AS (
    UPDATE notifications SET read = true, seen = true
    WHERE user_id = $1 AND NOT read AND id = ANY($2::bigint[]) RETURNING archived
)
SELECT count(*) - (SELECT count(*) FROM marked WHERE NOT archived)
FROM notifications WHERE user_id = $1 AND NOT read AND NOT archived
"""
_MARK_UP_TO_READ = """
WITH marked AS (
    UPDATE notifications SET read = true, seen = true
    WHERE user_id = $1 AND NOT read AND id <= $2 RETURNING archived
)
SELECT count(*) - (SELECT count(*) FROM marked WHERE NOT archived)
FROM notifications WHERE user_id = $1 AND NOT read AND NOT archived
"""
_MARK_ONE_READ = """
UPDATE notifications SET read = true, seen = true WHERE user_id = $1 AND id = $2 RETURNING true
"""
_MARK_UP_TO_SEEN = """
WITH marked AS (
    UPDATE notifications SET seen = true
    WHERE user_id = $1 AND NOT seen AND id <= $2 RETURNING archived
)
SELECT count(*) - (SELECT count(*) FROM marked WHERE NOT archived)
FROM notifications WHERE user_id = $1 AND NOT seen AND NOT archived
"""
_ARCHIVE = """
UPDATE notifications SET archived = $3 WHERE user_id = $1 AND id = ANY($2::bigint[])
"""
# A key within its window is a conflict whose update the WHERE refuses: no row comes
# back for that user. A concurrent writer of the same key waits for the first to
# commit and then sees its row (READ COMMITTED re-checks the WHERE on it).
_CLAIM_DEDUPE = """
INSERT INTO notification_dedupe AS d (user_id, dedupe_key, expires_at)
SELECT u, $2, $3 FROM unnest($1::text[]) AS u ORDER BY u
ON CONFLICT (user_id, dedupe_key) DO UPDATE SET expires_at = excluded.expires_at
WHERE d.expires_at <= $4
RETURNING d.user_id
"""
_ADD_BATCH_NOTIFICATIONS = f"""
INSERT INTO notifications (user_id, type, data, actor, ts, read, dedupe_key)
SELECT u, $2, $3, $4, $5, false, $6 FROM unnest($1::text[]) AS u ORDER BY u
RETURNING {_NOTIFICATION_COLUMNS}
"""
_ADD_DELIVERIES = """
INSERT INTO deliveries (user_id, transport, notification_id, type, data, actor, group_key,
                        created_at, due_at)
SELECT j.u, j.t, j.n, $4, $5, $6, $7, $8, $8
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS j(u, t, n)
"""
_DELIVERY_COLUMNS = (
    "id, user_id, transport, notification_id, type, data, actor, group_key, created_at,"
    " due_at, state, attempts, leased_until, last_error, finished_at"
)
_DELIVERIES = f"""
SELECT {_DELIVERY_COLUMNS} FROM deliveries
WHERE ($1::text IS NULL OR user_id = $1) AND ($2::text IS NULL OR state = $2) AND id > $4
ORDER BY id LIMIT $3
"""
_FORGET_DEDUPE = """
WITH doomed AS (
    SELECT user_id, dedupe_key FROM notification_dedupe WHERE expires_at < $1 LIMIT $2
)
DELETE FROM notification_dedupe d USING doomed
WHERE d.user_id = doomed.user_id AND d.dedupe_key = doomed.dedupe_key
"""
_GET_PREFERENCES = "SELECT doc FROM preferences WHERE user_id = $1"
_PREFERENCES_OF = "SELECT user_id, doc FROM preferences WHERE user_id = ANY($1::text[])"
_SET_PREFERENCES = """
INSERT INTO preferences (user_id, doc, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (user_id) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at
"""

_PUSH_COLUMNS = "endpoint, user_id, p256dh, auth, created_at"
# The row is locked first (FOR UPDATE), so a concurrent registration of the same
# endpoint waits: the owner read here is the one the upsert replaces.
_PUSH_OWNER = "SELECT user_id FROM push_subscriptions WHERE endpoint = $1 FOR UPDATE"
_PUT_PUSH = f"""
INSERT INTO push_subscriptions ({_PUSH_COLUMNS}) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (endpoint) DO UPDATE SET user_id = excluded.user_id,
    p256dh = excluded.p256dh, auth = excluded.auth, created_at = excluded.created_at
"""
# The new one stays; of the others, the newest keep - 1 do.
_TRIM_PUSH = """
DELETE FROM push_subscriptions WHERE user_id = $1 AND endpoint <> $2 AND endpoint NOT IN (
    SELECT endpoint FROM push_subscriptions WHERE user_id = $1 AND endpoint <> $2
    ORDER BY created_at DESC, endpoint DESC LIMIT $3
)
"""
_REMOVE_PUSH = "DELETE FROM push_subscriptions WHERE user_id = $1 AND endpoint = $2 RETURNING true"
_PUSH_OF_USER = f"""
SELECT {_PUSH_COLUMNS} FROM push_subscriptions WHERE user_id = $1
ORDER BY created_at DESC, endpoint DESC
"""


# The outbox ---------------------------------------------------------------------------
# Free: pending, and no lease or an ended one (a claimer that died). SKIP LOCKED: rows
# another claim is taking right now are passed over, never waited for.
_CLAIMED = ", ".join("d." + c for c in _DELIVERY_COLUMNS.split(", "))
_CLAIM_DUE = f"""
WITH due AS (
    SELECT id FROM deliveries
    WHERE state = 'pending' AND due_at <= $1 AND (leased_until IS NULL OR leased_until <= $1)
      AND ($4::text[] IS NULL OR transport = ANY($4::text[]))
    ORDER BY due_at, id LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d SET leased_until = $1 + $3, attempts = d.attempts + 1
FROM due WHERE d.id = due.id
RETURNING {_CLAIMED}
"""
# The digest mates of claimed email jobs: (user, type, group, created_at) of each in
# $1-$4. The claimed ones themselves hold a live lease by now and are left out.
_CLAIM_MATES = f"""
WITH mates AS (
    SELECT m.id FROM deliveries m
    JOIN unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS l(u, y, k, t)
      ON m.user_id = l.u AND m.group_key = l.k AND m.type = l.y
    WHERE m.state = 'pending' AND m.transport = 'email' AND m.group_key IS NOT NULL
      AND m.created_at >= l.t AND m.created_at < l.t + $5
      AND (m.leased_until IS NULL OR m.leased_until <= $6)
    FOR UPDATE OF m SKIP LOCKED
)
UPDATE deliveries d SET leased_until = $6 + $7, attempts = d.attempts + 1
FROM (SELECT DISTINCT id FROM mates) s WHERE d.id = s.id
RETURNING {_CLAIMED}
"""
# $last: the lease the caller holds, or null for any.
_HELD = "id = ANY($1::bigint[]) AND state = 'pending'"
_FINISH = f"""
UPDATE deliveries SET state = $2, leased_until = NULL, last_error = coalesce($3, last_error),
    finished_at = $4
WHERE {_HELD} AND ($5::bigint IS NULL OR leased_until = $5)
"""
_RETRY = f"""
UPDATE deliveries SET due_at = $2, leased_until = NULL, last_error = $3
WHERE {_HELD} AND ($4::bigint IS NULL OR leased_until = $4)
"""
_RESCHEDULE = f"""
UPDATE deliveries SET due_at = $2, leased_until = NULL, attempts = greatest(attempts - 1, 0)
WHERE {_HELD} AND ($3::bigint IS NULL OR leased_until = $3)
"""
_REQUEUE = f"""
UPDATE deliveries SET state = 'pending', due_at = $2, attempts = 0, leased_until = NULL,
    finished_at = NULL
WHERE id = $1 AND state = 'dead'
RETURNING {_DELIVERY_COLUMNS}
"""
_UNREAD_OF = """
SELECT id FROM notifications WHERE id = ANY($1::bigint[]) AND NOT read AND NOT archived
"""
_PENDING_BY_TRANSPORT = (
    "SELECT transport, count(*) FROM deliveries WHERE state = 'pending' GROUP BY transport"
)
_FORGET_DELIVERIES = """
WITH doomed AS (
    SELECT id FROM deliveries
    WHERE state IN ('done', 'skipped') AND finished_at < $1 LIMIT $2
)
DELETE FROM deliveries d USING doomed WHERE d.id = doomed.id
"""
_FINISHED_STATES = frozenset({"done", "skipped", "dead"})


def _message(row: asyncpg.Record, offset: int = 0) -> StoredMessage:
    return StoredMessage(
        room=row[offset],
        seq=row[offset + 1],
        user=row[offset + 2],
        body=row[offset + 3],
        ts=row[offset + 4],
        client_id=row[offset + 5],
    )


def _notification(row: asyncpg.Record) -> Notification:
    return Notification(
        id=row["id"],
        user=row["user_id"],
        type=row["type"],
        data=row["data"],
        actor=row["actor"],
        ts=row["ts"],
        read=row["read"],
        seen=row["seen"],
        archived=row["archived"],
    )


def _delivery(row: asyncpg.Record) -> Delivery:
    return Delivery(*row.values())


@dataclass(eq=False, slots=True)
class _PendingAppend:
    message: NewMessage
    future: asyncio.Future[Appended]
    deadline: float  # loop time by which the caller is answered
    taken: bool = False  # in a batch: the batch, not the caller, decides the outcome


class PostgresStore:
    """The Store on PostgreSQL; see the module docstring."""

    def __init__(
        self,
        dsn: str,
        *,
        timeout: float = 5.0,
        pool_size: int = 10,
        max_batches: int = 4,
        max_batch_size: int = 1000,
        max_pending: int = 10_000,
        migrate_timeout: float = 60.0,
        prune_chunk: int = 5000,
        clock: Clock = now_ms,
    ) -> None:
        if timeout <= 0 or min(pool_size, max_batches, max_batch_size, prune_chunk) < 1:
            raise ValueError(
                "timeout must be > 0; pool_size, max_batches, max_batch_size, prune_chunk >= 1"
            )
        self._dsn = dsn
        self._timeout = timeout
        self._pool_size = pool_size
        self._max_batches = max_batches
        self._max_batch_size = max_batch_size
        self._max_pending = max_pending
        self._migrate_timeout = migrate_timeout
        self._prune_chunk = prune_chunk
        self._clock = clock
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._closing = False
        self._pending: deque[_PendingAppend] = deque()
        self._batches: set[asyncio.Task[None]] = set()
        self._busy_rooms: set[str] = set()
        self._kick_scheduled = False

    # Lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the pool. Succeeds while PostgreSQL is down; fails on a bad DSN,
        credentials or database name (errors that waiting will not fix)."""
        if self._closing:
            raise StorageError("a closed store cannot be reopened")
        if self._pool is not None:
            return
        timeout_ms = str(int(self._timeout * 1000))
        pool: asyncpg.Pool[asyncpg.Record] = asyncpg.create_pool(
            self._dsn,
            min_size=0,  # connect lazily: PostgreSQL may not be up yet
            max_size=self._pool_size,
            max_inactive_connection_lifetime=60.0,
            timeout=self._timeout,
            command_timeout=self._timeout,
            reset=_keep_session,
            server_settings={
                "application_name": "realtime",
                "statement_timeout": timeout_ms,
                "lock_timeout": timeout_ms,
                "idle_in_transaction_session_timeout": timeout_ms,
            },
        )
        await pool
        self._pool = pool
        try:
            await self.ping()
        except StorageUnavailable as exc:
            log.warning("PostgreSQL not reachable yet, will keep trying on every call: %s", exc)
        except BaseException:
            self._pool = None
            await pool.close()
            raise

    async def close(self) -> None:
        """Write out queued appends, wait for batches in flight, close the pool."""
        if self._closing:
            return
        self._closing = True
        try:
            async with asyncio.timeout(self._timeout):
                while self._pending or self._batches:
                    self._start_batches()
                    await asyncio.wait(set(self._batches))
        except TimeoutError:
            log.warning("closing PostgresStore: appends still unfinished after %ss", self._timeout)
        finally:
            self._fail_pending(StorageUnavailable("store is closed"))
            pool, self._pool = self._pool, None
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), self._timeout)
                except TimeoutError:
                    pool.terminate()

    async def migrate(self) -> list[int]:
        """Apply pending migrations on a connection of its own (open() not needed)."""
        migrations = await asyncio.to_thread(load_migrations, "postgres")
        try:
            async with asyncio.timeout(self._migrate_timeout):
                conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
                try:
                    applied = await migrate_postgres(
                        conn, migrations, self._clock(), lock_timeout=self._migrate_timeout
                    )
                except BaseException:
                    conn.terminate()  # also releases the advisory lock
                    raise
                await conn.close(timeout=self._timeout)
                return applied
        except _DRIVER_ERRORS as exc:
            raise _storage_error(exc) from exc

    async def ping(self) -> None:
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")

    # Plumbing -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self, seconds: float | None = None) -> AsyncIterator[_Conn]:
        """A pool connection for one call: one deadline (``seconds``, else the store's
        timeout), errors mapped to the Store's."""
        pool = self._pool
        if pool is None:
            if self._closing:
                raise StorageUnavailable("store is closed")
            raise StorageError("store is not open")
        try:
            deadline = self._timeout if seconds is None else seconds
            async with asyncio.timeout(deadline), pool.acquire() as conn:
                try:
                    yield conn
                except BaseException as exc:
                    if isinstance(exc, asyncio.CancelledError) or _is_outage(exc):
                        # After an outage or an interrupted query its state is
                        # unknown: the pool must open a fresh one next time.
                        _discard(conn)
                    raise
        except _DRIVER_ERRORS as exc:
            raise _storage_error(exc) from exc

    @contextlib.asynccontextmanager
    async def _transaction(self, conn: _Conn) -> AsyncIterator[None]:
        """BEGIN/COMMIT; ROLLBACK only on a healthy connection (else it is terminated)."""
        await conn.execute("BEGIN")
        try:
            yield
        except BaseException as exc:
            if not (isinstance(exc, asyncio.CancelledError) or _is_outage(exc)):
                await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")

    # Appends: group commit -----------------------------------------------------------

    async def append(self, message: NewMessage) -> Appended:
        if self._closing:
            raise StorageUnavailable("store is closed")
        if self._pool is None:
            raise StorageError("store is not open")
        if len(self._pending) >= self._max_pending:
            raise StorageUnavailable("storage overloaded")
        loop = asyncio.get_running_loop()
        item = _PendingAppend(message, loop.create_future(), loop.time() + self._timeout)
        self._pending.append(item)
        self._kick()
        # A batch runs within the earliest deadline of its appends; only the wait for
        # a batch to take the append needs a timer (a plain timer: wait_for costs more).
        timer = loop.call_at(item.deadline, self._expire, item)
        try:
            return await item.future
        except asyncio.CancelledError:
            if not item.taken and item in self._pending:
                self._pending.remove(item)
            raise
        finally:
            timer.cancel()

    def _expire(self, item: _PendingAppend) -> None:
        if item.taken or item.future.done():
            return
        if item in self._pending:
            self._pending.remove(item)
        item.future.set_exception(
            StorageUnavailable(f"postgres: no batch slot within {self._timeout}s")
        )

    def _kick(self) -> None:
        """Start a batch soon: appends made in the same loop iteration join it."""
        if self._kick_scheduled or len(self._batches) >= self._max_batches:
            return
        self._kick_scheduled = True
        asyncio.get_running_loop().call_soon(self._start_batches)

    def _start_batches(self) -> None:
        self._kick_scheduled = False
        while self._pending and len(self._batches) < self._max_batches:
            items = self._take_batch()
            if not items:
                return  # every pending room is in a batch in flight; its end kicks us
            for item in items:
                item.taken = True
            task = asyncio.get_running_loop().create_task(self._run_batch(items))
            self._batches.add(task)
            self._busy_rooms.update(item.message.room for item in items)
            task.add_done_callback(partial(self._batch_done, items))

    def _take_batch(self) -> list[_PendingAppend]:
        """The oldest pending appends whose rooms no batch in flight holds.

        A room is in one batch at a time, so a room's messages commit in the order
        they were appended, even when one client sends several without waiting.
        """
        if not self._busy_rooms:
            size = min(len(self._pending), self._max_batch_size)
            return [self._pending.popleft() for _ in range(size)]
        taken: list[_PendingAppend] = []
        kept: deque[_PendingAppend] = deque()
        blocked: set[str] = set()
        while self._pending and len(taken) < self._max_batch_size:
            item = self._pending.popleft()
            room = item.message.room
            if room in self._busy_rooms or room in blocked:
                blocked.add(room)  # and every later append to it waits too
                kept.append(item)
            else:
                taken.append(item)
        kept.extend(self._pending)
        self._pending = kept
        return taken

    def _batch_done(self, items: list[_PendingAppend], task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._busy_rooms.difference_update(item.message.room for item in items)
        if self._pending:
            self._kick()

    def _fail_pending(self, error: StorageError) -> None:
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(error)

    async def _run_batch(self, items: list[_PendingAppend]) -> None:
        """The top of a batch task: every item's future is resolved when it ends."""
        # Within the earliest deadline of its appends: the one that waited longest for
        # a batch is still answered in time, and is not committed after its caller
        # was told it failed (the COMMIT is never sent once the deadline passed).
        budget = min(item.deadline for item in items) - asyncio.get_running_loop().time()
        try:
            results = await self._write_batch([item.message for item in items], budget)
        except Exception as exc:  # noqa: BLE001 -- forwarded to the callers below
            if _is_outage(exc) or len(items) == 1:
                error = _storage_error(exc)
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(error)
            else:
                # Nothing was written: retry one by one, so a bad message fails alone.
                log.warning("append batch of %d failed, retrying one by one: %s", len(items), exc)
                for item in items:
                    await self._run_batch([item])
        else:
            for item, result in zip(items, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
        finally:
            for item in items:
                if not item.future.done():
                    item.future.set_exception(StorageUnavailable("append interrupted"))

    async def _write_batch(self, messages: list[NewMessage], budget: float) -> list[Appended]:
        """Write one batch within ``budget`` seconds."""
        if budget <= 0:
            raise StorageUnavailable(f"postgres: no batch within {self._timeout}s")
        rooms = sorted({m.room for m in messages})
        ts = self._clock()
        # BEGIN and COMMIT around the one call: a batch whose caller gave up (its
        # deadline passed while PostgreSQL hung) is never committed, because the
        # COMMIT is never sent; a lone statement would commit on its own.
        async with self._connection(budget) as conn, self._transaction(conn):
            rows = await conn.fetch(
                _APPEND,
                rooms,
                [new_epoch() for _ in rooms],
                [m.room for m in messages],
                [m.user for m in messages],
                [m.body for m in messages],
                [m.client_id for m in messages],
                ts,
            )
        if len(rows) != len(messages):
            raise StorageError(f"postgres: {len(rows)} results for {len(messages)} appends")
        results = []
        for message, (_, seq, user, body, stored_ts, duplicate) in zip(messages, rows, strict=True):
            if duplicate:
                first = StoredMessage(message.room, seq, user, body, stored_ts, message.client_id)
            else:
                first = StoredMessage(
                    message.room, seq, message.user, message.body, ts, message.client_id
                )
            results.append(Appended(first, duplicate=duplicate))
        return results

    # Room history ---------------------------------------------------------------------

    async def _room_rows(self, sql: str, room: str, mark: int, limit: int) -> list[asyncpg.Record]:
        """Run a ``_room_with_messages`` query, creating the room's row when missing."""
        async with self._connection() as conn:
            rows = await conn.fetch(sql, room, mark, limit)
            if not rows:
                await conn.execute(_ENSURE_ROOM, room, new_epoch())
                rows = await conn.fetch(sql, room, mark, limit)
        if not rows:
            raise StorageError(f"postgres: room {room!r} has no row right after creating it")
        return rows

    async def recover(self, room: str, since: int | None, limit: int) -> Recovery:
        check_limit(limit)
        rows = await self._room_rows(_RECOVER, room, since or 0, limit if since is not None else 0)
        missed = [_message(row, 2) for row in rows if row[3] is not None]
        return Recovery(seq=rows[0][0], epoch=rows[0][1], missed=missed)

    async def messages_after(self, room: str, after: int, limit: int) -> list[StoredMessage]:
        check_limit(limit)
        async with self._connection() as conn:
            rows = await conn.fetch(_MESSAGES_AFTER, room, after, limit)
        return [_message(row) for row in rows]

    async def history(
        self, room: str, *, before: int | None, after: int | None, limit: int
    ) -> HistoryPage:
        check_limit(limit)
        if before is not None and after is not None:
            raise ValueError("history takes before or after, not both")
        # One row more than asked says whether there is more in that direction.
        if after is not None:
            rows = await self._room_rows(_HISTORY_AFTER, room, after, limit + 1)
        elif before is not None:
            rows = await self._room_rows(_HISTORY_BEFORE, room, before, limit + 1)
        else:
            # The latest page is the page before "infinity".
            rows = await self._room_rows(_HISTORY_BEFORE, room, KEEP_ALL, limit + 1)
        page = [_message(row, 2) for row in rows if row[3] is not None]
        more = len(page) > limit
        if more:
            # Rows come ascending: the extra one is the newest after `after`,
            # the oldest otherwise.
            page = page[:limit] if after is not None else page[1:]
        return HistoryPage(messages=page, more=more, epoch=rows[0][1])

    async def set_read(self, room: str, user: str, seq: int) -> int:
        async with self._connection() as conn:
            stored: int = await conn.fetchval(_SET_READ, room, user, seq)
        return stored

    async def prune(
        self, namespace: str, *, older_than_ms: int | None, keep_last: int | None
    ) -> int:
        args = prune_arguments(namespace, older_than_ms, keep_last, self._prune_chunk)
        if args is None:
            return 0
        # In chunks, each a call of its own: no statement runs into the timeout,
        # and no transaction holds many row locks for long.
        deleted = 0
        while True:
            async with self._connection() as conn:
                status = await conn.execute(_PRUNE, *args)
            count = int(status.split()[-1])
            deleted += count
            if count < self._prune_chunk:
                return deleted

    # Membership and the follow graph --------------------------------------------------

    async def _flag(self, sql: str, *args: object) -> bool:
        async with self._connection() as conn:
            value = await conn.fetchval(sql, *args)
        return bool(value)

    async def add_member(self, room: str, user: str) -> bool:
        return await self._flag(_ADD_MEMBER, room, user, self._clock())

    async def remove_member(self, room: str, user: str) -> bool:
        return await self._flag(_REMOVE_MEMBER, room, user)

    async def is_member(self, room: str, user: str) -> bool:
        return await self._flag(_IS_MEMBER, room, user)

    async def latest_seqs(self, rooms: Sequence[str]) -> dict[str, int]:
        if not rooms:
            return {}
        async with self._connection() as conn:
            rows = await conn.fetch(_LATEST_SEQS, list(rooms))
        return {row[0]: row[1] for row in rows}

    async def members(self, room: str) -> list[str]:
        async with self._connection() as conn:
            rows = await conn.fetch(_MEMBERS, room)
        return [row[0] for row in rows]

    async def follow(self, user: str, target: str) -> bool:
        return await self._flag(_FOLLOW, target, user, self._clock())

    async def unfollow(self, user: str, target: str) -> bool:
        return await self._flag(_UNFOLLOW, target, user)

    async def is_following(self, user: str, target: str) -> bool:
        return await self._flag(_IS_FOLLOWING, target, user)

    async def followers(self, target: str, *, after: str | None, limit: int) -> list[str]:
        check_limit(limit)
        async with self._connection() as conn:
            rows = await conn.fetch(_FOLLOWERS, target, after or "", limit)
        return [row[0] for row in rows]

    # Notifications --------------------------------------------------------------------

    async def add_notifications(
        self, users: Sequence[str], type: str, data: str, actor: str | None
    ) -> list[Notification]:
        recipients = sorted(set(users))
        if not recipients:
            return []
        async with self._connection() as conn, self._transaction(conn):
            await conn.execute(_LOCK_NOTIFICATION_IDS)
            rows = await conn.fetch(
                _ADD_NOTIFICATIONS, recipients, type, data, actor, self._clock()
            )
        return sorted((_notification(row) for row in rows), key=lambda n: n.user)

    async def add_follower_notifications(
        self, target: str, type: str, data: str, actor: str | None, *, after: str | None, limit: int
    ) -> list[Notification]:
        check_limit(limit)
        async with self._connection() as conn, self._transaction(conn):
            await conn.execute(_LOCK_NOTIFICATION_IDS)
            rows = await conn.fetch(
                _ADD_FOLLOWER_NOTIFICATIONS,
                target,
                after or "",
                limit,
                type,
                data,
                actor,
                self._clock(),
            )
        return sorted((_notification(row) for row in rows), key=lambda n: n.user)

    async def notifications(
        self, user: str, *, after: int | None, limit: int, unread_only: bool, archived: bool = False
    ) -> NotificationPage:
        check_limit(limit)
        async with self._connection() as conn:
            if after is not None:
                sql = _UNREAD_AFTER if unread_only else _NOTIFICATIONS_AFTER
                rows = await conn.fetch(sql, user, archived, after, limit)
            else:
                sql = _UNREAD_LATEST if unread_only else _NOTIFICATIONS_LATEST
                rows = list(reversed(await conn.fetch(sql, user, archived, limit)))
            counts = await conn.fetch(_COUNTS, user)
        return page_from_counts(
            [_notification(row) for row in rows], [tuple(row) for row in counts]
        )

    async def mark_notifications_read(
        self, user: str, *, ids: Sequence[int] | None = None, up_to: int | None = None
    ) -> int:
        if ids is not None and up_to is not None:
            raise ValueError("mark_notifications_read takes ids or up_to, not both")
        async with self._connection() as conn:
            if ids is not None:
                unread: int = await conn.fetchval(_MARK_IDS_READ, user, list(ids))
            elif up_to is not None:
                unread = await conn.fetchval(_MARK_UP_TO_READ, user, up_to)
            else:
                unread = await conn.fetchval(_UNREAD_COUNT, user)
        return unread

    # Web Push subscriptions -----------------------------------------------------------

    async def add_push_subscription(
        self, user: str, endpoint: str, p256dh: str, auth: str, *, keep: int
    ) -> bool:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        async with self._connection() as conn, self._transaction(conn):
            owner = await conn.fetchval(_PUSH_OWNER, endpoint)
            await conn.execute(_PUT_PUSH, endpoint, user, p256dh, auth, self._clock())
            await conn.execute(_TRIM_PUSH, user, endpoint, keep - 1)
        return bool(owner != user)

    async def remove_push_subscription(self, user: str, endpoint: str) -> bool:
        return await self._flag(_REMOVE_PUSH, user, endpoint)

    async def push_subscriptions(self, user: str) -> list[PushSubscription]:
        async with self._connection() as conn:
            rows = await conn.fetch(_PUSH_OF_USER, user)
        return [PushSubscription(*row) for row in rows]

    # Inbox: preferences, states, delivery jobs ---------------------------------------

    async def add_notification_batch(
        self,
        recipients: Sequence[Recipient],
        type: str,
        data: str,
        actor: str | None,
        *,
        group_key: str | None = None,
        dedupe_key: str | None = None,
        dedupe_window_ms: int = 0,
    ) -> NotificationBatch:
        unique = first_per_user(recipients)
        if not unique:
            return NotificationBatch([], [], 0)
        now = self._clock()
        async with self._connection() as conn, self._transaction(conn):
            await conn.execute(_LOCK_NOTIFICATION_IDS)
            if dedupe_key is not None:
                users = [r.user for r in unique]
                rows = await conn.fetch(
                    _CLAIM_DEDUPE, users, dedupe_key, now + dedupe_window_ms, now
                )
                passed = {row[0] for row in rows}
                unique = [r for r in unique if r.user in passed]
            in_app = [r.user for r in unique if r.in_app]
            stored: list[Notification] = []
            if in_app:
                rows = await conn.fetch(
                    _ADD_BATCH_NOTIFICATIONS, in_app, type, data, actor, now, dedupe_key
                )
                stored = sorted((_notification(row) for row in rows), key=lambda n: n.user)
            ids = {n.user: n.id for n in stored}
            jobs = [(r.user, t, ids.get(r.user)) for r in unique for t in r.transports]
            if jobs:
                await conn.execute(
                    _ADD_DELIVERIES,
                    [j[0] for j in jobs],
                    [j[1] for j in jobs],
                    [j[2] for j in jobs],
                    type,
                    data,
                    actor,
                    group_key,
                    now,
                )
        return NotificationBatch(stored, [r.user for r in unique], len(jobs))

    async def get_preferences(self, user: str) -> str | None:
        async with self._connection() as conn:
            doc: str | None = await conn.fetchval(_GET_PREFERENCES, user)
        return doc

    async def preferences_of(self, users: Sequence[str]) -> dict[str, str]:
        if not users:
            return {}
        async with self._connection() as conn:
            rows = await conn.fetch(_PREFERENCES_OF, list(users))
        return {row[0]: row[1] for row in rows}

    async def set_preferences(self, user: str, doc: str) -> None:
        async with self._connection() as conn:
            await conn.execute(_SET_PREFERENCES, user, doc, self._clock())

    async def mark_notification_read(self, user: str, id: int) -> bool:
        return await self._flag(_MARK_ONE_READ, user, id)

    async def mark_notifications_seen(self, user: str, *, up_to: int) -> int:
        async with self._connection() as conn:
            unseen: int = await conn.fetchval(_MARK_UP_TO_SEEN, user, up_to)
        return unseen

    async def archive_notifications(
        self, user: str, ids: Sequence[int], *, archived: bool = True
    ) -> int:
        async with self._connection() as conn, self._transaction(conn):
            await conn.execute(_ARCHIVE, user, list(ids), archived)
            unread: int = await conn.fetchval(_UNREAD_COUNT, user)
        return unread

    async def deliveries(
        self,
        *,
        user: str | None = None,
        state: str | None = None,
        limit: int,
        after: int | None = None,
    ) -> list[Delivery]:
        check_limit(limit)
        async with self._connection() as conn:
            rows = await conn.fetch(_DELIVERIES, user, state, limit, after or 0)
        return [_delivery(row) for row in rows]

    async def forget_dedupe_keys(self, *, before_ms: int) -> int:
        deleted = 0
        while True:
            async with self._connection() as conn:
                status = await conn.execute(_FORGET_DEDUPE, before_ms, self._prune_chunk)
            count = int(status.split()[-1])
            deleted += count
            if count < self._prune_chunk:
                return deleted

    # Outbox: claiming and settling delivery jobs --------------------------------------

    async def claim_deliveries(
        self,
        now_ms: int,
        limit: int,
        lease_ms: int,
        *,
        transports: Sequence[str] | None = None,
        digest_window_ms: int = 0,
    ) -> list[Delivery]:
        check_limit(limit)
        if limit == 0 or (transports is not None and not transports):
            return []
        wanted = None if transports is None else list(transports)
        async with self._connection() as conn, self._transaction(conn):
            rows = await conn.fetch(_CLAIM_DUE, now_ms, limit, lease_ms, wanted)
            claimed = [_delivery(row) for row in rows]
            leaders = [d for d in claimed if d.transport == "email" and d.group_key is not None]
            if leaders and digest_window_ms > 0:
                mates = await conn.fetch(
                    _CLAIM_MATES,
                    [d.user for d in leaders],
                    [d.type for d in leaders],
                    [d.group_key for d in leaders],
                    [d.created_at for d in leaders],
                    digest_window_ms,
                    now_ms,
                    lease_ms,
                )
                claimed.extend(_delivery(row) for row in mates)
        return sorted(claimed, key=lambda d: d.id)

    async def finish_deliveries(
        self, ids: Sequence[int], state: str, error: str | None, *, lease: int | None = None
    ) -> int:
        if state not in _FINISHED_STATES:
            raise ValueError(f"a job finishes done, skipped or dead, not {state!r}")
        return await self._count(_FINISH, list(ids), state, error, self._clock(), lease)

    async def retry_deliveries(
        self, ids: Sequence[int], due_at: int, error: str, *, lease: int | None = None
    ) -> int:
        return await self._count(_RETRY, list(ids), due_at, error, lease)

    async def reschedule_deliveries(
        self, ids: Sequence[int], due_at: int, *, lease: int | None = None
    ) -> int:
        return await self._count(_RESCHEDULE, list(ids), due_at, lease)

    async def _count(self, sql: str, *args: object) -> int:
        """Run a statement; how many rows it changed."""
        async with self._connection() as conn:
            status = await conn.execute(sql, *args)
        return int(status.split()[-1])

    async def requeue_delivery(self, id: int) -> Delivery | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(_REQUEUE, id, self._clock())
        return None if row is None else _delivery(row)

    async def unread_notifications(self, ids: Sequence[int]) -> set[int]:
        if not ids:
            return set()
        async with self._connection() as conn:
            rows = await conn.fetch(_UNREAD_OF, list(ids))
        return {row[0] for row in rows}

    async def pending_deliveries(self) -> dict[str, int]:
        async with self._connection() as conn:
            rows = await conn.fetch(_PENDING_BY_TRANSPORT)
        return {row[0]: row[1] for row in rows}

    async def forget_deliveries(self, *, before_ms: int) -> int:
        deleted = 0
        while True:
            count = await self._count(_FORGET_DELIVERIES, before_ms, self._prune_chunk)
            deleted += count
            if count < self._prune_chunk:
                return deleted
