"""Opening many connections at once, bounded, and naming why some failed."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from .wsclient import CommandFailed, ConnectionClosed

T = TypeVar("T")


def failure_kind(error: BaseException) -> str:
    """A short name for why a connection (or its join) failed, to count by."""
    if isinstance(error, TimeoutError):
        return "timeout"
    status = getattr(error, "status", None)  # HandshakeError, rest.RestError
    if isinstance(status, int):
        return f"http {status}"
    if isinstance(error, CommandFailed):
        return f"{error.op} {error.code}"
    if isinstance(error, ConnectionClosed):
        return f"closed {error.code}"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, ConnectionResetError):
        return "reset"
    if isinstance(error, OSError) and error.errno is not None:
        return errno.errorcode.get(error.errno, f"errno {error.errno}")
    return type(error).__name__


class Failures:
    """Failures counted by kind."""

    def __init__(self) -> None:
        self.kinds: dict[str, int] = {}

    def add(self, error: BaseException) -> None:
        kind = failure_kind(error)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    @staticmethod
    def merge(many: Sequence[dict[str, int]]) -> dict[str, int]:
        merged: dict[str, int] = {}
        for kinds in many:
            for kind, count in kinds.items():
                merged[kind] = merged.get(kind, 0) + count
        return dict(sorted(merged.items(), key=lambda item: -item[1]))


CONNECT_ERRORS = (OSError, TimeoutError, CommandFailed, ConnectionError, ValueError)
"""What opening and joining may raise for reasons of the server or the network."""


async def open_all(
    openers: Sequence[Callable[[], Awaitable[T]]], concurrency: int, failures: Failures
) -> list[T | None]:
    """Run the openers, at most ``concurrency`` at a time; None where one failed."""
    gate = asyncio.Semaphore(max(concurrency, 1))

    async def one(opener: Callable[[], Awaitable[T]]) -> T | None:
        async with gate:
            try:
                return await opener()
            except CONNECT_ERRORS as error:
                failures.add(error)
                return None

    return list(await asyncio.gather(*(one(opener) for opener in openers)))
