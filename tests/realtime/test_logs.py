"""Log records carry the connection whose work logged them, and JSON lines parse.

(The server-process tests in ``tests/e2e/test_operations.py`` check the same over
real sockets; this one checks what no socket shows on cue: child tasks, and lines
logged outside any connection's work.)
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Iterator
from typing import Any, cast

import orjson
import pytest

from realtime.auth import Identity
from realtime.connection import Connection
from realtime.logs import ConnectionFilter, JsonFormatter, bind, bound

Lines = Callable[[], list[dict[str, Any]]]


class _Conn:
    """The two fields of a connection the filter reads."""

    def __init__(self, session: str, user: str | None) -> None:
        self.id = session
        self.identity = Identity(user, 0.0) if user is not None else None


def conn(session: str, user: str | None) -> Connection:
    return cast(Connection, _Conn(session, user))


@pytest.fixture
def lines() -> Iterator[Lines]:
    """What the logger ``test.logs`` wrote so far, as parsed JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ConnectionFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [orjson.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


async def test_a_connections_task_and_its_children_name_it(lines: Lines) -> None:
    log = logging.getLogger("test.logs")

    async def child(name: str) -> None:
        log.info("%s child", name)

    async def work(c: Connection, name: str) -> None:
        bind(c)
        log.info(name)
        await asyncio.gather(child(name))

    await asyncio.gather(work(conn("s1", "alice"), "alice"), work(conn("s2", None), "anon"))
    log.info("outside")
    with bound(conn("s3", "carol")):
        log.warning("bound")
    log.info("after")

    who = {line["message"]: (line["user"], line["session"]) for line in lines()}
    assert who == {
        "alice": ("alice", "s1"),
        "alice child": ("alice", "s1"),
        "anon": (None, "s2"),  # not authenticated yet
        "anon child": (None, "s2"),
        "outside": (None, None),
        "bound": ("carol", "s3"),
        "after": (None, None),
    }


def test_json_lines_have_extras_and_the_traceback_in_one_field(lines: Lines) -> None:
    log = logging.getLogger("test.logs")
    log.info("GET / 200", extra={"status": 200, "duration_ms": 1.5})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed: %s", "badly")
    access, failure = lines()
    assert access["status"] == 200 and access["duration_ms"] == 1.5
    assert access["level"] == "INFO" and access["logger"] == "test.logs"
    assert "exception" not in access
    assert failure["message"] == "failed: badly" and failure["level"] == "ERROR"
    assert (
        failure["exception"].startswith("Traceback") and "ValueError: boom" in failure["exception"]
    )
