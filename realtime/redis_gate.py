"""One bound for every Redis call of a command, shared by the broker and presence.

A command may make several Redis calls in a row (a join: subscribe, presence add,
a presence push, the presence list). Each one waiting ``timeout`` on a Redis that
stopped answering would add up to several times the timeout. So the first call
that times out or loses its connection marks Redis as down, with the reason, and
every call after it fails at once with that reason (``BrokerUnavailable``), so a
command is answered within one timeout. While down, one call per ``timeout`` is
let through as a trial; it, or the subscriber's reconnect, or a canary that comes
back (``up``) marks Redis up again.

A Redis error reply (a script error, a moved cluster slot) means Redis answered:
it fails that call only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .broker import BrokerUnavailable

T = TypeVar("T")

# Exceptions that mean "Redis cannot be used right now" (BrokerUnavailable: known down).
# A cluster none of whose nodes answers raises RedisClusterException, not a RedisError.
OUTAGES = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
    ConnectionError,
    BrokerUnavailable,
)
# Of those, the ones that say Redis is not answering at all.
_SILENT = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


def describe(error: BaseException, timeout: float) -> str:
    """A reason never empty: ``str(TimeoutError())`` is ``""``."""
    if isinstance(error, TimeoutError | RedisTimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(error, BrokerUnavailable):
        return str(error)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class RedisGate:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.reason: str | None = None
        """Why Redis is down, or None while it answers."""
        self._trial_at = 0.0

    @property
    def down(self) -> bool:
        return self.reason is not None

    def fail(self, reason: str) -> None:
        self._trial_at = time.monotonic() + self.timeout  # the next trial, a timeout away
        self.reason = reason

    def note(self, error: BaseException) -> None:
        """A call made outside ``call`` failed: mark Redis down if it was silence."""
        if isinstance(error, _SILENT):
            self.fail(describe(error, self.timeout))

    def up(self) -> None:
        self.reason = None

    async def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """``await make()`` within the timeout; raise ``BrokerUnavailable`` if not."""
        if self.reason is not None:
            now = time.monotonic()
            if now < self._trial_at:
                raise BrokerUnavailable(f"redis unavailable: {self.reason}")
            self._trial_at = now + self.timeout  # this call is the trial
        try:
            async with asyncio.timeout(self.timeout):
                result = await make()
        except _SILENT as error:
            self.fail(describe(error, self.timeout))
            raise BrokerUnavailable(f"redis unavailable: {self.reason}") from error
        except RedisError as error:
            raise BrokerUnavailable(f"redis: {describe(error, self.timeout)}") from error
        self.up()
        return result
