"""Schema migrations: plain SQL files, versioned by file name, applied once each.

The files live in ``storage/migrations/<backend>/NNNN_description.sql``. A file that
was released never changes; a schema change is a new file with the next number.
Applied versions are recorded in ``schema_migrations``. Versions the database has
but this code does not know (a newer instance migrated first) are left alone.

Both runners hold a database-wide lock while they read ``schema_migrations`` and
apply what is missing, so instances that start at once apply each version exactly
once: SQLite with ``BEGIN IMMEDIATE`` (one writer per database file), PostgreSQL
with a session advisory lock.

The runners raise the driver's own errors; the stores map them to ``StorageError``.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import asyncpg

Backend = Literal["sqlite", "postgres"]

# "realtime" in ASCII: the advisory lock key every instance agrees on.
MIGRATION_LOCK_ID = 0x7265616C74696D65

_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at BIGINT  NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(backend: Backend) -> list[Migration]:
    """The backend's migration files, by version. Reads files: call it off the loop."""
    directory = resources.files(__package__) / "migrations" / backend
    found: dict[int, Migration] = {}
    for entry in directory.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            raise ValueError(f"migration file name must be NNNN_name.sql: {backend}/{entry.name}")
        version = int(match[1])
        if version in found:
            raise ValueError(f"two {backend} migrations have version {version}")
        found[version] = Migration(version, match[2], entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def pending(migrations: Sequence[Migration], applied: Collection[int]) -> list[Migration]:
    return [m for m in migrations if m.version not in applied]


# SQLite -----------------------------------------------------------------------------


def split_sqlite_script(sql: str) -> Iterator[str]:
    """Split a script into statements, so that it can run inside a transaction.

    (``executescript`` would commit first.) Triggers with inner semicolons are
    handled: a statement ends where SQLite itself says it is complete.
    """
    statement = ""
    for line in sql.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement.strip()
            statement = ""
    code = [ln for ln in statement.splitlines() if ln.strip() and not ln.strip().startswith("--")]
    if code:
        raise ValueError(f"incomplete SQL statement at the end of a migration: {code[0]!r}")


def migrate_sqlite(
    conn: sqlite3.Connection, migrations: Sequence[Migration], now_ms: int
) -> list[int]:
    """Apply what is pending in one IMMEDIATE transaction; return the versions applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with a busy
    timeout: instances that start at once wait here for each other.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_CREATE_TABLE)
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        done: list[int] = []
        for migration in pending(migrations, applied):
            for statement in split_sqlite_script(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, now_ms),
            )
            done.append(migration.version)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return done


# PostgreSQL ---------------------------------------------------------------------------


async def migrate_postgres(
    conn: asyncpg.Connection[Any],
    migrations: Sequence[Migration],
    now_ms: int,
    *,
    lock_timeout: float,
) -> list[int]:
    """Apply what is pending, one transaction per file; return the versions applied.

    Holds the session advisory lock throughout, waiting at most ``lock_timeout``
    for another instance's migration. ``conn`` is dedicated to this call and closed
    by the caller; closing it also releases the lock when a migration failed.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID, timeout=lock_timeout)
    await conn.execute(_CREATE_TABLE)
    applied = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
    done: list[int] = []
    for migration in pending(migrations, applied):
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                now_ms,
            )
        done.append(migration.version)
    await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return done
