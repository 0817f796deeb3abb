"""Durable state: the ``Store`` seam, its backends and ``create_store``.

``storage.dsn`` selects the backend:

- ``""``: embedded SQLite at ``./data/realtime.db`` (the directory is created);
- ``sqlite:///relative/path.db`` (relative to the working directory) or
  ``sqlite:////absolute/path.db``: SQLite at that path;
- ``postgresql://…`` or ``postgres://…``: PostgreSQL, shared by any number of
  instances.
"""

from __future__ import annotations

from pathlib import Path

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
    Store,
    StoredMessage,
)
from storage.store_postgres import PostgresStore
from storage.store_sqlite import SqliteStore

__all__ = [
    "Appended",
    "Delivery",
    "HistoryPage",
    "NewMessage",
    "Notification",
    "NotificationBatch",
    "NotificationPage",
    "PostgresStore",
    "PushSubscription",
    "Recipient",
    "Recovery",
    "SqliteStore",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "StoredMessage",
    "create_store",
]

DEFAULT_SQLITE_PATH = Path("data") / "realtime.db"

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_PREFIXES = ("postgresql://", "postgres://")
_EXPECTED = (
    "expected '' (embedded SQLite under ./data), 'sqlite:///relative/path.db', "
    "'sqlite:////absolute/path.db' or 'postgresql://user@host:5432/database'"
)


def create_store(
    dsn: str,
    *,
    timeout: float = 5.0,
    pool_size: int = 10,
    sqlite_synchronous: str = "FULL",
) -> Store:
    """The store a DSN names, not yet opened (see the module docstring for the forms).

    ``timeout`` bounds every call; ``pool_size`` is PostgreSQL's connection pool;
    ``sqlite_synchronous`` is SQLite's ``PRAGMA synchronous`` (FULL: an acknowledged
    write survives a power cut). A relative SQLite path is resolved against the
    working directory now.
    """
    if dsn.startswith(_POSTGRES_PREFIXES):
        return PostgresStore(dsn, timeout=timeout, pool_size=pool_size)
    if dsn == "":
        path = DEFAULT_SQLITE_PATH
    elif dsn.startswith(_SQLITE_PREFIX):
        path = Path(dsn.removeprefix(_SQLITE_PREFIX))
        if not path.name or "?" in dsn:
            raise ValueError(f"bad SQLite DSN {dsn!r}: {_EXPECTED}")
    else:
        # Show the scheme only: a DSN may carry a password.
        scheme = dsn.partition("://")[0] if "://" in dsn else "(none)"
        raise ValueError(f"unsupported storage DSN (scheme {scheme!r}): {_EXPECTED}")
    return SqliteStore(path.absolute(), timeout=timeout, synchronous=sqlite_synchronous)
