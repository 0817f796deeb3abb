"""The Store on an embedded SQLite file (the default: one instance, nothing to run).

No sqlite3 call runs on the event loop. Threads own the connections:

- One writer thread owns the only connection that writes. It wakes with a job,
  takes every job queued by then and runs them all in one transaction, each in its
  own SAVEPOINT so that a failing job is rolled back alone (group commit: one
  fsync for the lot). Results go back to the loop only after COMMIT, so with the
  default ``synchronous=FULL`` an acknowledged append survives a power cut.
- A few reader threads (2) with their own connections serve reads. WAL mode lets
  them read a consistent snapshot while the writer writes.

Seqs come from the room's row in ``rooms``, bumped in the transaction that inserts
the message; with one writer thread there is nothing to race.

The job queues are bounded: when one is full the call fails at once with
``StorageUnavailable("storage overloaded")`` instead of queueing without limit.
Every call waits at most ``timeout``. A job still queued when its caller gives up
is dropped (nothing was done); one the writer had already taken may still commit,
as the Store contract allows for an append whose commit was sent.

Several stores (or processes) may open one file, SQLite's locks keep them correct,
but their writers then wait for each other: a cluster belongs on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from storage.common import (
    check_limit,
    first_per_user,
    new_epoch,
    now_ms,
    page_from_counts,
    prune_arguments,
)
from storage.migrate import load_migrations, migrate_sqlite
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

T = TypeVar("T")
Clock = Callable[[], int]
_Work = Callable[[sqlite3.Connection], Any]

SYNCHRONOUS_MODES: Final = ("OFF", "NORMAL", "FULL", "EXTRA")

# Primary result codes that mean "the database cannot be used right now" rather
# than "this statement or the schema is wrong".
_OUTAGE_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def _storage_error(exc: BaseException) -> StorageError:
    """The Store's exception for a driver error, chained to it."""
    if isinstance(exc, StorageError):
        return exc
    error: StorageError
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _OUTAGE_CODES:
            error = StorageUnavailable(f"sqlite: {exc}")
        else:
            error = StorageError(f"sqlite: {exc}")
    elif isinstance(exc, OSError):
        error = StorageUnavailable(f"sqlite: {exc}")
    else:
        error = StorageError(f"sqlite: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


# Threads -----------------------------------------------------------------------------


class _Job:
    __slots__ = ("abandoned", "future", "work")

    def __init__(self, work: _Work) -> None:
        self.work = work
        # A concurrent future: the caller's cancel() and the worker's
        # set_running_or_notify_cancel() decide atomically whether a queued job
        # is dropped or taken.
        self.future: cf.Future[Any] = cf.Future()
        # Set by a caller that gave up after a thread took the job: the thread
        # still skips it if it has not run it yet (say, while BEGIN waited for a
        # lock), so that only a job caught in its COMMIT can outlive its caller.
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True
        self.future.cancel()


_ABANDONED: Final = "the caller gave up waiting"


_STOP: Final = object()


class _JobThreads:
    """Threads, each with its own connection, fed by one bounded queue."""

    def __init__(
        self,
        name: str,
        count: int,
        connect: Callable[[], sqlite3.Connection],
        run: Callable[[sqlite3.Connection, list[_Job]], None],
        *,
        max_queue: int,
        group: bool,
    ) -> None:
        self._name = name
        self._count = count
        self._connect = connect
        self._run = run
        self._group = group
        self._queue: queue.Queue[_Job | object] = queue.Queue(maxsize=max_queue)
        self._threads: list[threading.Thread] = []

    def start(self) -> list[cf.Future[None]]:
        """Start the threads; each future resolves once its connection is open."""
        ready: list[cf.Future[None]] = []
        for i in range(self._count):
            future: cf.Future[None] = cf.Future()
            thread = threading.Thread(
                target=self._main, args=(future,), name=f"{self._name}-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
            ready.append(future)
        return ready

    def submit(self, work: _Work) -> _Job:
        job = _Job(work)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise StorageUnavailable("storage overloaded") from None
        return job

    def stop(self, timeout: float) -> None:
        """Let the threads finish every queued job, then join them. Blocking."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                try:
                    self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
                except queue.Full:
                    raise StorageError(f"{thread.name} did not stop within {timeout}s") from None
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise StorageError(f"{thread.name} did not stop within {timeout}s")

    def _take(self) -> tuple[list[_Job], bool]:
        """Wait for a job; a grouping thread also takes every job queued by then."""
        # An idle thread waits here as long as there is no work: stop() ends the
        # wait with _STOP, and callers bound their own waits with the timeout.
        first = self._queue.get()
        if first is _STOP:
            return [], True
        assert isinstance(first, _Job)
        jobs = [first]
        if self._group:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    return jobs, True
                assert isinstance(item, _Job)
                jobs.append(item)
        return jobs, False

    def _main(self, ready: cf.Future[None]) -> None:
        try:
            conn = self._connect()
        except Exception as exc:  # noqa: BLE001 -- handed to open(), which raises it
            ready.set_exception(_storage_error(exc))
            return
        ready.set_result(None)
        try:
            stop = False
            while not stop:
                jobs, stop = self._take()
                live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
                if not live:
                    continue
                try:
                    self._run(conn, live)
                except Exception as exc:  # noqa: BLE001 -- forwarded to every waiting caller
                    error = _storage_error(exc)
                    for job in live:
                        if not job.future.done():
                            job.future.set_exception(error)
        finally:
            conn.close()


def _run_group(conn: sqlite3.Connection, jobs: list[_Job]) -> None:
    """Run jobs in one transaction, one SAVEPOINT each; resolve them after COMMIT."""
    conn.execute("BEGIN IMMEDIATE")
    outcomes: list[tuple[_Job, Any, BaseException | None]] = []
    try:
        for job in jobs:
            if job.abandoned:
                outcomes.append((job, None, StorageUnavailable(_ABANDONED)))
                continue
            conn.execute("SAVEPOINT job")
            try:
                value = job.work(conn)
            except Exception as exc:  # noqa: BLE001 -- this job fails alone; the error goes to its caller
                conn.execute("ROLLBACK TO job")
                outcomes.append((job, None, exc))
            else:
                outcomes.append((job, value, None))
            conn.execute("RELEASE job")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    for job, value, error in outcomes:
        if error is None:
            job.future.set_result(value)
        else:
            job.future.set_exception(_storage_error(error))


def _run_each(conn: sqlite3.Connection, jobs: list[_Job]) -> None:
    """Run each read job in its own read transaction: one snapshot per job."""
    for job in jobs:
        if job.abandoned:
            job.future.set_exception(StorageUnavailable(_ABANDONED))
            continue
        try:
            conn.execute("BEGIN")
            try:
                value = job.work(conn)
            finally:
                conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 -- the error goes to this job's caller
            job.future.set_exception(_storage_error(exc))
        else:
            job.future.set_result(value)


def _use_wal(conn: sqlite3.Connection, timeout: float) -> str:
    """Switch to WAL; returns the journal mode now in use.

    The switch needs an exclusive lock, and SQLite reports a lock held by another
    connection at once instead of waiting through the busy timeout: instances (or
    migrators) opening a new file together retry here until ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            mode: str = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            return mode
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _connect(path: Path, timeout: float, synchronous: str | None) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN ourselves); ``None``: a reader."""
    if synchronous is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, cached_statements=64)
    try:
        if synchronous is None:
            conn.execute("PRAGMA query_only = ON")
        else:
            mode = _use_wal(conn, timeout)
            conn.execute(f"PRAGMA synchronous = {synchronous}")
    except BaseException:
        conn.close()
        raise
    if synchronous is not None and mode != "wal":
        conn.close()
        raise StorageError(f"sqlite: cannot use WAL mode (got {mode!r}) for {path}")
    return conn


# Queries: plain functions of a connection, run on the threads -----------------------

_MESSAGE_COLUMNS = "room, seq, user_id, body, ts, client_id"
_NOTIFICATION_COLUMNS = "id, user_id, type, data, actor, ts, read, seen, archived"

_FIND_CLIENT_ID = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages"
    " WHERE room = ? AND coalesce(user_id, '') = ? AND client_id = ?"
)
_ENSURE_ROOM = "INSERT INTO rooms (room, last_seq, epoch) VALUES (?, 0, ?) ON CONFLICT DO NOTHING"
_NEXT_SEQ = "UPDATE rooms SET last_seq = last_seq + 1 WHERE room = ? RETURNING last_seq"
_INSERT_MESSAGE = f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
_ROOM = "SELECT last_seq, epoch FROM rooms WHERE room = ?"
_AFTER = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?"
_BEFORE = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
)
_LATEST = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room = ? ORDER BY seq DESC LIMIT ?"
_SET_READ = (
    "INSERT INTO reads (room, user_id, seq) VALUES (?, ?, ?)"
    " ON CONFLICT (room, user_id) DO UPDATE SET seq = max(seq, excluded.seq) RETURNING seq"
)
_PRUNE = (
    "DELETE FROM messages WHERE rowid IN (SELECT rowid FROM messages WHERE room >= ? AND room < ?"
    " AND (ts < ? OR seq <= (SELECT last_seq FROM rooms WHERE rooms.room = messages.room) - ?)"
    " LIMIT ?)"
)
_ADD_MEMBER = (
    "INSERT INTO members (room, user_id, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
)
_REMOVE_MEMBER = "DELETE FROM members WHERE room = ? AND user_id = ?"
_IS_MEMBER = "SELECT 1 FROM members WHERE room = ? AND user_id = ?"
_MEMBERS = "SELECT user_id FROM members WHERE room = ? ORDER BY user_id"
_FOLLOW = (
    "INSERT INTO follows (target, follower, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
)
_UNFOLLOW = "DELETE FROM follows WHERE target = ? AND follower = ?"
_IS_FOLLOWING = "SELECT 1 FROM follows WHERE target = ? AND follower = ?"
_FOLLOWERS = (
    "SELECT follower FROM follows WHERE target = ? AND follower > ? ORDER BY follower LIMIT ?"
)
_ADD_NOTIFICATION = (
    "INSERT INTO notifications (user_id, type, data, actor, ts, read)"
    f" VALUES (?, ?, ?, ?, ?, 0) RETURNING {_NOTIFICATION_COLUMNS}"
)
_ADD_FOLLOWER_NOTIFICATIONS = (
    "INSERT INTO notifications (user_id, type, data, actor, ts, read)"
    " SELECT follower, ?, ?, ?, ?, 0 FROM follows"
    " WHERE target = ? AND follower > ? ORDER BY follower LIMIT ?"
    f" RETURNING {_NOTIFICATION_COLUMNS}"
)
# The list queries take (user, archived, ...): archived ones are listed only when asked.
_NOTIFICATIONS_AFTER = (
    f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications"
    " WHERE user_id = ? AND archived = ? AND id > ? ORDER BY id LIMIT ?"
)
_UNREAD_AFTER = (
    f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications"
    " WHERE user_id = ? AND read = 0 AND archived = ? AND id > ? ORDER BY id LIMIT ?"
)
_NOTIFICATIONS_LATEST = (
    f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications"
    " WHERE user_id = ? AND archived = ? ORDER BY id DESC LIMIT ?"
)
_UNREAD_LATEST = (
    f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications"
    " WHERE user_id = ? AND read = 0 AND archived = ? ORDER BY id DESC LIMIT ?"
)
_UNREAD_COUNT = "SELECT count(*) FROM notifications WHERE user_id = ? AND read = 0 AND archived = 0"
# Per type: unread, unseen (both partial indexes serve the OR).
_COUNTS = (
    "SELECT type, count(*) FILTER (WHERE read = 0), count(*) FILTER (WHERE seen = 0)"
    " FROM notifications WHERE user_id = ? AND archived = 0 AND (read = 0 OR seen = 0)"
    " GROUP BY type"
)
_UNSEEN_COUNT = "SELECT count(*) FROM notifications WHERE user_id = ? AND seen = 0 AND archived = 0"
_MARK_IDS_READ = (
    "UPDATE notifications SET read = 1, seen = 1 WHERE user_id = ? AND read = 0"
    " AND id IN (SELECT value FROM json_each(?))"
)
_MARK_UP_TO_READ = (
    "UPDATE notifications SET read = 1, seen = 1 WHERE user_id = ? AND read = 0 AND id <= ?"
)
_MARK_ONE_READ = (
    "UPDATE notifications SET read = 1, seen = 1 WHERE user_id = ? AND id = ? RETURNING id"
)
_MARK_UP_TO_SEEN = "UPDATE notifications SET seen = 1 WHERE user_id = ? AND seen = 0 AND id <= ?"
_ARCHIVE = (
    "UPDATE notifications SET archived = ? WHERE user_id = ?"
    " AND id IN (SELECT value FROM json_each(?))"
)
# "WHERE true": an INSERT … SELECT with an upsert clause needs a WHERE to parse.
_CLAIM_DEDUPE = (
    "INSERT INTO notification_dedupe (user_id, dedupe_key, expires_at)"
    " SELECT value, ?, ? FROM json_each(?) WHERE true"
    " ON CONFLICT (user_id, dedupe_key) DO UPDATE SET expires_at = excluded.expires_at"
    " WHERE notification_dedupe.expires_at <= ?"
    " RETURNING user_id"
)
_ADD_BATCH_NOTIFICATIONS = (
    "INSERT INTO notifications (user_id, type, data, actor, ts, read, dedupe_key)"
    " SELECT value, ?, ?, ?, ?, 0, ? FROM json_each(?) ORDER BY key"
    f" RETURNING {_NOTIFICATION_COLUMNS}"
)
_ADD_DELIVERY = (
    "INSERT INTO deliveries (user_id, transport, notification_id, type, data, actor,"
    " group_key, created_at, due_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_DELIVERY_COLUMNS = (
    "id, user_id, transport, notification_id, type, data, actor, group_key, created_at,"
    " due_at, state, attempts, leased_until, last_error, finished_at"
)
_DELIVERIES = (
    f"SELECT {_DELIVERY_COLUMNS} FROM deliveries"
    " WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR state = ?2) AND id > ?4"
    " ORDER BY id LIMIT ?3"
)
_FORGET_DEDUPE = (
    "DELETE FROM notification_dedupe WHERE (user_id, dedupe_key) IN"
    " (SELECT user_id, dedupe_key FROM notification_dedupe WHERE expires_at < ? LIMIT ?)"
)
_GET_PREFERENCES = "SELECT doc FROM preferences WHERE user_id = ?"
_PREFERENCES_OF = (
    "SELECT user_id, doc FROM preferences WHERE user_id IN (SELECT value FROM json_each(?))"
)
_SET_PREFERENCES = (
    "INSERT INTO preferences (user_id, doc, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (user_id) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at"
)

_PUSH_COLUMNS = "endpoint, user_id, p256dh, auth, created_at"
_PUSH_OWNER = "SELECT user_id FROM push_subscriptions WHERE endpoint = ?"
_PUT_PUSH = (
    f"INSERT INTO push_subscriptions ({_PUSH_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (endpoint) DO UPDATE SET user_id = excluded.user_id,"
    " p256dh = excluded.p256dh, auth = excluded.auth, created_at = excluded.created_at"
)
# The new one stays; of the others, the newest keep - 1 do.
_TRIM_PUSH = (
    "DELETE FROM push_subscriptions WHERE user_id = ? AND endpoint <> ? AND endpoint NOT IN"
    " (SELECT endpoint FROM push_subscriptions WHERE user_id = ? AND endpoint <> ?"
    " ORDER BY created_at DESC, endpoint DESC LIMIT ?)"
)
_REMOVE_PUSH = "DELETE FROM push_subscriptions WHERE user_id = ? AND endpoint = ?"
_PUSH_OF_USER = (
    f"SELECT {_PUSH_COLUMNS} FROM push_subscriptions WHERE user_id = ?"
    " ORDER BY created_at DESC, endpoint DESC"
)


# The outbox ---------------------------------------------------------------------------
# Free: pending, and no lease or an ended one (a claimer that died). One writer: no
# other claim runs while this one does.
_CLAIM_DUE = (
    "UPDATE deliveries SET leased_until = ?1 + ?3, attempts = attempts + 1"
    " WHERE id IN (SELECT id FROM deliveries"
    " WHERE state = 'pending' AND due_at <= ?1 AND (leased_until IS NULL OR leased_until <= ?1)"
    " AND (?4 IS NULL OR transport IN (SELECT value FROM json_each(?4)))"
    " ORDER BY due_at, id LIMIT ?2)"
    f" RETURNING {_DELIVERY_COLUMNS}"
)
# The digest mates of claimed email jobs: ?1 is a JSON list of [user, type, group,
# created_at]. The claimed ones themselves hold a live lease by now and are left out.
_CLAIM_MATES = (
    "UPDATE deliveries SET leased_until = ?2 + ?3, attempts = attempts + 1"
    " WHERE id IN (SELECT m.id FROM deliveries m JOIN json_each(?1) l"
    " ON m.user_id = l.value ->> 0 AND m.type = l.value ->> 1 AND m.group_key = l.value ->> 2"
    " WHERE m.state = 'pending' AND m.transport = 'email'"
    " AND m.created_at >= l.value ->> 3 AND m.created_at < (l.value ->> 3) + ?4"
    " AND (m.leased_until IS NULL OR m.leased_until <= ?2))"
    f" RETURNING {_DELIVERY_COLUMNS}"
)
# ?1: a JSON list of ids; the last parameter: the lease the caller holds, or null for any.
_HELD = "id IN (SELECT value FROM json_each(?1)) AND state = 'pending'"
_FINISH = (
    "UPDATE deliveries SET state = ?2, leased_until = NULL,"
    " last_error = coalesce(?3, last_error), finished_at = ?4"
    f" WHERE {_HELD} AND (?5 IS NULL OR leased_until = ?5)"
)
_RETRY = (
    "UPDATE deliveries SET due_at = ?2, leased_until = NULL, last_error = ?3"
    f" WHERE {_HELD} AND (?4 IS NULL OR leased_until = ?4)"
)
_RESCHEDULE = (
    "UPDATE deliveries SET due_at = ?2, leased_until = NULL, attempts = max(attempts - 1, 0)"
    f" WHERE {_HELD} AND (?3 IS NULL OR leased_until = ?3)"
)
_REQUEUE = (
    "UPDATE deliveries SET state = 'pending', due_at = ?2, attempts = 0, leased_until = NULL,"
    " finished_at = NULL WHERE id = ?1 AND state = 'dead'"
    f" RETURNING {_DELIVERY_COLUMNS}"
)
_UNREAD_OF = (
    "SELECT id FROM notifications WHERE id IN (SELECT value FROM json_each(?))"
    " AND read = 0 AND archived = 0"
)
_PENDING_BY_TRANSPORT = (
    "SELECT transport, count(*) FROM deliveries WHERE state = 'pending' GROUP BY transport"
)
_FORGET_DELIVERIES = (
    "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries"
    " WHERE state IN ('done', 'skipped') AND finished_at < ? LIMIT ?)"
)
_FINISHED_STATES = frozenset({"done", "skipped", "dead"})

_LATEST_CHUNK = 500


def _ids(ids: Sequence[int]) -> str:
    return json.dumps([int(i) for i in ids])


def _message(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(row[0], row[1], row[2], row[3], row[4], row[5])


def _notification(row: Sequence[Any]) -> Notification:
    return Notification(
        row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), bool(row[7]), bool(row[8])
    )


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(*row)


def _append(conn: sqlite3.Connection, message: NewMessage, clock: Clock) -> Appended:
    if message.client_id is not None:
        key = (message.room, message.user or "", message.client_id)
        row = conn.execute(_FIND_CLIENT_ID, key).fetchone()
        if row is not None:
            return Appended(_message(row), duplicate=True)
    conn.execute(_ENSURE_ROOM, (message.room, new_epoch()))
    (seq,) = conn.execute(_NEXT_SEQ, (message.room,)).fetchone()
    stored = StoredMessage(
        message.room, seq, message.user, message.body, clock(), message.client_id
    )
    conn.execute(
        _INSERT_MESSAGE,
        (stored.room, stored.seq, stored.user, stored.body, stored.ts, stored.client_id),
    )
    return Appended(stored, duplicate=False)


def _recover(
    conn: sqlite3.Connection, room: str, since: int | None, limit: int, create: bool
) -> Recovery | None:
    """None when the room has no row and ``create`` is off (a reader cannot create it)."""
    if create:
        conn.execute(_ENSURE_ROOM, (room, new_epoch()))
    row = conn.execute(_ROOM, (room,)).fetchone()
    if row is None:
        return None
    missed: list[StoredMessage] = []
    if since is not None and limit > 0:
        missed = [_message(r) for r in conn.execute(_AFTER, (room, since, limit))]
    return Recovery(seq=row[0], epoch=row[1], missed=missed)


def _history(
    conn: sqlite3.Connection,
    room: str,
    *,
    before: int | None,
    after: int | None,
    limit: int,
    create: bool,
) -> HistoryPage | None:
    if create:
        conn.execute(_ENSURE_ROOM, (room, new_epoch()))
    row = conn.execute(_ROOM, (room,)).fetchone()
    if row is None:
        return None
    # One row more than asked says whether there is more in that direction.
    if after is not None:
        rows = conn.execute(_AFTER, (room, after, limit + 1)).fetchall()
    elif before is not None:
        rows = conn.execute(_BEFORE, (room, before, limit + 1)).fetchall()
    else:
        rows = conn.execute(_LATEST, (room, limit + 1)).fetchall()
    page = [_message(r) for r in rows[:limit]]
    if after is None:
        page.reverse()
    return HistoryPage(messages=page, more=len(rows) > limit, epoch=row[1])


def _notification_page(
    conn: sqlite3.Connection,
    user: str,
    after: int | None,
    limit: int,
    unread_only: bool,
    archived: bool,
) -> NotificationPage:
    flag = int(archived)
    if after is not None:
        sql = _UNREAD_AFTER if unread_only else _NOTIFICATIONS_AFTER
        items = [_notification(r) for r in conn.execute(sql, (user, flag, after, limit))]
    else:
        sql = _UNREAD_LATEST if unread_only else _NOTIFICATIONS_LATEST
        items = [_notification(r) for r in conn.execute(sql, (user, flag, limit))]
        items.reverse()
    return page_from_counts(items, conn.execute(_COUNTS, (user,)).fetchall())


def _unread_count(conn: sqlite3.Connection, user: str) -> int:
    count: int = conn.execute(_UNREAD_COUNT, (user,)).fetchone()[0]
    return count


def _add_notifications(
    conn: sqlite3.Connection, users: list[str], *, type: str, data: str, actor: str | None, ts: int
) -> list[Notification]:
    return [
        _notification(conn.execute(_ADD_NOTIFICATION, (user, type, data, actor, ts)).fetchone())
        for user in users
    ]


def _mark_read(
    conn: sqlite3.Connection, user: str, ids: Sequence[int] | None, up_to: int | None
) -> int:
    if ids is not None:
        conn.execute(_MARK_IDS_READ, (user, json.dumps([int(i) for i in ids])))
    if up_to is not None:
        conn.execute(_MARK_UP_TO_READ, (user, up_to))
    return _unread_count(conn, user)


def _add_push(conn: sqlite3.Connection, values: tuple[str, str, str, str, int], keep: int) -> bool:
    endpoint, user = values[0], values[1]
    owner = conn.execute(_PUSH_OWNER, (endpoint,)).fetchone()
    conn.execute(_PUT_PUSH, values)
    conn.execute(_TRIM_PUSH, (user, endpoint, user, endpoint, keep - 1))
    return owner is None or owner[0] != user


def _add_batch(
    conn: sqlite3.Connection,
    recipients: list[Recipient],
    *,
    type: str,
    data: str,
    actor: str | None,
    group_key: str | None,
    dedupe_key: str | None,
    window_ms: int,
    now: int,
) -> NotificationBatch:
    if dedupe_key is not None:
        users = json.dumps([r.user for r in recipients])
        args = (dedupe_key, now + window_ms, users, now)
        passed = {row[0] for row in conn.execute(_CLAIM_DEDUPE, args)}
        recipients = [r for r in recipients if r.user in passed]
    in_app = json.dumps([r.user for r in recipients if r.in_app])
    args_in = (type, data, actor, now, dedupe_key, in_app)
    stored = sorted(
        (_notification(r) for r in conn.execute(_ADD_BATCH_NOTIFICATIONS, args_in)),
        key=lambda n: n.user,
    )
    ids = {n.user: n.id for n in stored}
    jobs = [
        (r.user, transport, ids.get(r.user), type, data, actor, group_key, now, now)
        for r in recipients
        for transport in r.transports
    ]
    conn.executemany(_ADD_DELIVERY, jobs)
    return NotificationBatch(stored, [r.user for r in recipients], len(jobs))


def _claim(
    conn: sqlite3.Connection,
    now: int,
    limit: int,
    lease: int,
    transports: str | None,
    window: int,
) -> list[Delivery]:
    claimed = [_delivery(r) for r in conn.execute(_CLAIM_DUE, (now, limit, lease, transports))]
    leaders = [
        [d.user, d.type, d.group_key, d.created_at]
        for d in claimed
        if d.transport == "email" and d.group_key is not None
    ]
    if leaders and window > 0:
        args = (json.dumps(leaders), now, lease, window)
        claimed.extend(_delivery(r) for r in conn.execute(_CLAIM_MATES, args))
    # RETURNING order is unspecified in SQLite.
    return sorted(claimed, key=lambda d: d.id)


def _exists(conn: sqlite3.Connection, sql: str, args: tuple[str, str]) -> bool:
    return conn.execute(sql, args).fetchone() is not None


def _changed(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> bool:
    return conn.execute(sql, args).rowcount > 0


# The store -----------------------------------------------------------------------------


class SqliteStore:
    """The Store on one SQLite file; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        synchronous: str = "FULL",
        readers: int = 2,
        max_queue: int = 1024,
        migrate_timeout: float = 60.0,
        prune_chunk: int = 5000,
        clock: Clock = now_ms,
    ) -> None:
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(
                f"sqlite synchronous must be one of {SYNCHRONOUS_MODES}: {synchronous!r}"
            )
        if timeout <= 0 or readers < 1 or max_queue < 1 or prune_chunk < 1:
            raise ValueError("timeout must be > 0; readers, max_queue, prune_chunk >= 1")
        self._path = Path(path)
        self._timeout = timeout
        self._synchronous = mode
        self._readers_count = readers
        self._max_queue = max_queue
        self._migrate_timeout = migrate_timeout
        self._prune_chunk = prune_chunk
        self._clock = clock
        self._writer: _JobThreads | None = None
        self._readers: _JobThreads | None = None
        self._closed = False

    @property
    def path(self) -> Path:
        return self._path

    # Lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Start the threads. Creates the file and its directory when missing."""
        if self._closed:
            raise StorageError("a closed store cannot be reopened")
        if self._writer is not None:
            return
        self._writer = _JobThreads(
            "sqlite-writer",
            1,
            functools.partial(_connect, self._path, self._timeout, self._synchronous),
            _run_group,
            max_queue=self._max_queue,
            group=True,
        )
        self._readers = _JobThreads(
            "sqlite-reader",
            self._readers_count,
            functools.partial(_connect, self._path, self._timeout, None),
            _run_each,
            max_queue=self._max_queue,
            group=False,
        )
        try:
            # The writer first: it creates the file and switches it to WAL.
            await self._until_ready(self._writer)
            await self._until_ready(self._readers)
        except BaseException:
            await self._stop_threads()
            self._writer = self._readers = None  # open() may be tried again
            raise

    async def _until_ready(self, threads: _JobThreads) -> None:
        futures = [asyncio.wrap_future(f) for f in threads.start()]
        try:
            await asyncio.wait_for(asyncio.gather(*futures), self._timeout)
        except TimeoutError:
            raise StorageUnavailable(f"sqlite: could not open {self._path} in time") from None

    async def close(self) -> None:
        """Finish every queued job, then close the connections and join the threads."""
        if self._closed:
            return
        self._closed = True
        await self._stop_threads()

    async def _stop_threads(self) -> None:
        for threads in (self._writer, self._readers):
            if threads is not None:
                await asyncio.to_thread(threads.stop, self._timeout)

    async def migrate(self) -> list[int]:
        """Apply pending migrations on a connection of its own (open() not needed)."""
        task = asyncio.to_thread(self._migrate_blocking)
        try:
            return await asyncio.wait_for(task, self._migrate_timeout)
        except TimeoutError:
            raise StorageUnavailable(
                f"sqlite: migration did not finish within {self._migrate_timeout}s"
            ) from None

    def _migrate_blocking(self) -> list[int]:
        try:
            migrations = load_migrations("sqlite")
            conn = _connect(self._path, self._migrate_timeout, self._synchronous)
            try:
                return migrate_sqlite(conn, migrations, self._clock())
            finally:
                conn.close()
        except (sqlite3.Error, OSError) as exc:
            raise _storage_error(exc) from exc

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

    # Plumbing -------------------------------------------------------------------------

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._call(self._readers, work)

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._call(self._writer, work)

    async def _call(
        self, threads: _JobThreads | None, work: Callable[[sqlite3.Connection], T]
    ) -> T:
        if self._closed:
            raise StorageUnavailable("store is closed")
        if threads is None:
            raise StorageError("store is not open")
        job = threads.submit(work)
        try:
            result: T = await asyncio.wait_for(asyncio.wrap_future(job.future), self._timeout)
        except TimeoutError:
            job.abandon()
            raise StorageUnavailable(f"sqlite did not answer within {self._timeout}s") from None
        except asyncio.CancelledError:
            job.abandon()
            raise
        return result

    # Room history ---------------------------------------------------------------------

    async def append(self, message: NewMessage) -> Appended:
        return await self._write(lambda conn: _append(conn, message, self._clock))

    async def recover(self, room: str, since: int | None, limit: int) -> Recovery:
        check_limit(limit)
        found = await self._read(lambda conn: _recover(conn, room, since, limit, create=False))
        if found is not None:
            return found
        created = await self._write(lambda conn: _recover(conn, room, since, limit, create=True))
        assert created is not None
        return created

    async def messages_after(self, room: str, after: int, limit: int) -> list[StoredMessage]:
        check_limit(limit)
        rows = await self._read(lambda conn: conn.execute(_AFTER, (room, after, limit)).fetchall())
        return [_message(r) for r in rows]

    async def history(
        self, room: str, *, before: int | None, after: int | None, limit: int
    ) -> HistoryPage:
        check_limit(limit)
        if before is not None and after is not None:
            raise ValueError("history takes before or after, not both")
        page = await self._read(
            lambda conn: _history(conn, room, before=before, after=after, limit=limit, create=False)
        )
        if page is None:
            page = await self._write(
                lambda conn: _history(
                    conn, room, before=before, after=after, limit=limit, create=True
                )
            )
        assert page is not None
        return page

    async def set_read(self, room: str, user: str, seq: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            stored: int = conn.execute(_SET_READ, (room, user, seq)).fetchone()[0]
            return stored

        return await self._write(work)

    async def prune(
        self, namespace: str, *, older_than_ms: int | None, keep_last: int | None
    ) -> int:
        args = prune_arguments(namespace, older_than_ms, keep_last, self._prune_chunk)
        if args is None:
            return 0
        # In chunks, each its own write job: appends are not held up behind a
        # large deletion, and no single job runs into the timeout.
        deleted = 0
        while True:
            count = await self._write(lambda conn: conn.execute(_PRUNE, args).rowcount)
            deleted += count
            if count < self._prune_chunk:
                return deleted

    # Membership and the follow graph --------------------------------------------------

    async def add_member(self, room: str, user: str) -> bool:
        return await self._write(
            lambda conn: _changed(conn, _ADD_MEMBER, (room, user, self._clock()))
        )

    async def remove_member(self, room: str, user: str) -> bool:
        return await self._write(lambda conn: _changed(conn, _REMOVE_MEMBER, (room, user)))

    async def is_member(self, room: str, user: str) -> bool:
        return await self._read(lambda conn: _exists(conn, _IS_MEMBER, (room, user)))

    async def latest_seqs(self, rooms: Sequence[str]) -> dict[str, int]:
        def work(conn: sqlite3.Connection) -> dict[str, int]:
            found: dict[str, int] = {}
            # SQLite caps the parameters of one statement; ask in chunks.
            for start in range(0, len(rooms), _LATEST_CHUNK):
                chunk = list(rooms[start : start + _LATEST_CHUNK])
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT room, last_seq FROM rooms WHERE room IN ({marks})"
                found.update(conn.execute(sql, chunk).fetchall())
            return found

        return await self._read(work) if rooms else {}

    async def members(self, room: str) -> list[str]:
        rows = await self._read(lambda conn: conn.execute(_MEMBERS, (room,)).fetchall())
        return [r[0] for r in rows]

    async def follow(self, user: str, target: str) -> bool:
        return await self._write(
            lambda conn: _changed(conn, _FOLLOW, (target, user, self._clock()))
        )

    async def unfollow(self, user: str, target: str) -> bool:
        return await self._write(lambda conn: _changed(conn, _UNFOLLOW, (target, user)))

    async def is_following(self, user: str, target: str) -> bool:
        return await self._read(lambda conn: _exists(conn, _IS_FOLLOWING, (target, user)))

    async def followers(self, target: str, *, after: str | None, limit: int) -> list[str]:
        check_limit(limit)
        args = (target, after or "", limit)
        rows = await self._read(lambda conn: conn.execute(_FOLLOWERS, args).fetchall())
        return [r[0] for r in rows]

    # Notifications --------------------------------------------------------------------

    async def add_notifications(
        self, users: Sequence[str], type: str, data: str, actor: str | None
    ) -> list[Notification]:
        recipients = sorted(set(users))
        if not recipients:
            return []
        return await self._write(
            lambda conn: _add_notifications(
                conn, recipients, type=type, data=data, actor=actor, ts=self._clock()
            )
        )

    async def add_follower_notifications(
        self, target: str, type: str, data: str, actor: str | None, *, after: str | None, limit: int
    ) -> list[Notification]:
        check_limit(limit)

        def work(conn: sqlite3.Connection) -> list[Notification]:
            args = (type, data, actor, self._clock(), target, after or "", limit)
            return [_notification(r) for r in conn.execute(_ADD_FOLLOWER_NOTIFICATIONS, args)]

        created = await self._write(work)
        # RETURNING order is unspecified in SQLite.
        return sorted(created, key=lambda n: n.user)

    async def notifications(
        self, user: str, *, after: int | None, limit: int, unread_only: bool, archived: bool = False
    ) -> NotificationPage:
        check_limit(limit)
        return await self._read(
            lambda conn: _notification_page(conn, user, after, limit, unread_only, archived)
        )

    async def mark_notifications_read(
        self, user: str, *, ids: Sequence[int] | None = None, up_to: int | None = None
    ) -> int:
        if ids is not None and up_to is not None:
            raise ValueError("mark_notifications_read takes ids or up_to, not both")
        if ids is None and up_to is None:
            return await self._read(lambda conn: _unread_count(conn, user))
        return await self._write(lambda conn: _mark_read(conn, user, ids, up_to))

    # Web Push subscriptions -----------------------------------------------------------

    async def add_push_subscription(
        self, user: str, endpoint: str, p256dh: str, auth: str, *, keep: int
    ) -> bool:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        return await self._write(
            lambda conn: _add_push(conn, (endpoint, user, p256dh, auth, self._clock()), keep)
        )

    async def remove_push_subscription(self, user: str, endpoint: str) -> bool:
        return await self._write(lambda conn: _changed(conn, _REMOVE_PUSH, (user, endpoint)))

    async def push_subscriptions(self, user: str) -> list[PushSubscription]:
        rows = await self._read(lambda conn: conn.execute(_PUSH_OF_USER, (user,)).fetchall())
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
        return await self._write(
            lambda conn: _add_batch(
                conn,
                unique,
                type=type,
                data=data,
                actor=actor,
                group_key=group_key,
                dedupe_key=dedupe_key,
                window_ms=dedupe_window_ms,
                now=self._clock(),
            )
        )

    async def get_preferences(self, user: str) -> str | None:
        row = await self._read(lambda conn: conn.execute(_GET_PREFERENCES, (user,)).fetchone())
        return None if row is None else str(row[0])

    async def preferences_of(self, users: Sequence[str]) -> dict[str, str]:
        if not users:
            return {}
        args = (json.dumps(list(users)),)
        rows = await self._read(lambda conn: conn.execute(_PREFERENCES_OF, args).fetchall())
        return {row[0]: row[1] for row in rows}

    async def set_preferences(self, user: str, doc: str) -> None:
        await self._write(
            lambda conn: conn.execute(_SET_PREFERENCES, (user, doc, self._clock())).rowcount
        )

    async def mark_notification_read(self, user: str, id: int) -> bool:
        return await self._write(
            lambda conn: conn.execute(_MARK_ONE_READ, (user, id)).fetchone() is not None
        )

    async def mark_notifications_seen(self, user: str, *, up_to: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            conn.execute(_MARK_UP_TO_SEEN, (user, up_to))
            unseen: int = conn.execute(_UNSEEN_COUNT, (user,)).fetchone()[0]
            return unseen

        return await self._write(work)

    async def archive_notifications(
        self, user: str, ids: Sequence[int], *, archived: bool = True
    ) -> int:
        def work(conn: sqlite3.Connection) -> int:
            conn.execute(_ARCHIVE, (int(archived), user, json.dumps([int(i) for i in ids])))
            return _unread_count(conn, user)

        return await self._write(work)

    async def deliveries(
        self,
        *,
        user: str | None = None,
        state: str | None = None,
        limit: int,
        after: int | None = None,
    ) -> list[Delivery]:
        check_limit(limit)
        args = (user, state, limit, after or 0)
        rows = await self._read(lambda conn: conn.execute(_DELIVERIES, args).fetchall())
        return [_delivery(row) for row in rows]

    async def forget_dedupe_keys(self, *, before_ms: int) -> int:
        # In chunks, like prune: no single job holds the writer long.
        deleted = 0
        args = (before_ms, self._prune_chunk)
        while True:
            count = await self._write(lambda conn: conn.execute(_FORGET_DEDUPE, args).rowcount)
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
        wanted = None if transports is None else json.dumps(list(transports))
        return await self._write(
            lambda conn: _claim(conn, now_ms, limit, lease_ms, wanted, digest_window_ms)
        )

    async def finish_deliveries(
        self, ids: Sequence[int], state: str, error: str | None, *, lease: int | None = None
    ) -> int:
        if state not in _FINISHED_STATES:
            raise ValueError(f"a job finishes done, skipped or dead, not {state!r}")
        args = (_ids(ids), state, error, self._clock(), lease)
        return await self._write(lambda conn: conn.execute(_FINISH, args).rowcount)

    async def retry_deliveries(
        self, ids: Sequence[int], due_at: int, error: str, *, lease: int | None = None
    ) -> int:
        args = (_ids(ids), due_at, error, lease)
        return await self._write(lambda conn: conn.execute(_RETRY, args).rowcount)

    async def reschedule_deliveries(
        self, ids: Sequence[int], due_at: int, *, lease: int | None = None
    ) -> int:
        args = (_ids(ids), due_at, lease)
        return await self._write(lambda conn: conn.execute(_RESCHEDULE, args).rowcount)

    async def requeue_delivery(self, id: int) -> Delivery | None:
        args = (id, self._clock())
        row = await self._write(lambda conn: conn.execute(_REQUEUE, args).fetchone())
        return None if row is None else _delivery(row)

    async def unread_notifications(self, ids: Sequence[int]) -> set[int]:
        if not ids:
            return set()
        args = (_ids(ids),)
        rows = await self._read(lambda conn: conn.execute(_UNREAD_OF, args).fetchall())
        return {row[0] for row in rows}

    async def pending_deliveries(self) -> dict[str, int]:
        rows = await self._read(lambda conn: conn.execute(_PENDING_BY_TRANSPORT).fetchall())
        return {row[0]: row[1] for row in rows}

    async def forget_deliveries(self, *, before_ms: int) -> int:
        # In chunks, like prune: no single job holds the writer long.
        deleted = 0
        args = (before_ms, self._prune_chunk)
        while True:
            count = await self._write(lambda conn: conn.execute(_FORGET_DELIVERIES, args).rowcount)
            deleted += count
            if count < self._prune_chunk:
                return deleted
