"""Log lines: plain text (the default) or one JSON object per line.

The connection whose work is running (its commands, its opening and closing) is
kept in a context variable, set where that work starts (``ws.py``). Tasks copy the
context they are created in, so whatever that work awaits or spawns sees it too.
A filter on the handler copies the connection's user and session onto every
record: a warning logged deep inside a join says whose join it was.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import Context, ContextVar
from typing import TYPE_CHECKING, Literal

import orjson

if TYPE_CHECKING:
    from .connection import Connection

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

CONNECTION: ContextVar[Connection | None] = ContextVar("realtime_connection", default=None)
"""The connection whose work the running code does, if any."""


def bind(conn: Connection) -> None:
    """Name ``conn`` on every line logged from here on in the current task."""
    CONNECTION.set(conn)


@contextmanager
def bound(conn: Connection) -> Iterator[None]:
    """Name ``conn`` on the lines logged inside, from code that works for many
    connections (a fan-out closing a slow reader, a timer)."""
    token = CONNECTION.set(conn)
    try:
        yield
    finally:
        CONNECTION.reset(token)


def unbound() -> Context:
    """A fresh context that names no connection, for work a connection's command
    starts but many share (a room's broker subscription and the listener it may
    start, a gap fill, a write to many sockets): its lines are nobody's, and it
    keeps no connection alive."""
    return Context()


class ConnectionFilter(logging.Filter):
    """Adds ``user`` and ``session`` (None outside a connection's work) to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        conn = CONNECTION.get()
        if conn is None:
            record.user = record.session = None
        else:
            identity = conn.identity
            record.user = identity.user if identity is not None else None
            record.session = conn.id
        return True


# What every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "user",
    "session",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message, user,
    session, the ``extra=`` fields, and the traceback as one string when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, object] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "user": getattr(record, "user", None),
            "session": getattr(record, "session", None),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str, log_format: LogFormat) -> None:
    """Send every logger's records to stderr, in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ConnectionFilter())
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
