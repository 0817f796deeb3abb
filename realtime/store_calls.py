"""Store calls made on behalf of a client: one deadline, and the protocol's errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from protocol import CommandError, ErrorCode
from storage import StorageError, StorageUnavailable

from .metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreCalls:
    """Await store calls within ``timeout``, turning failures into ``CommandError``.

    The store bounds each of its own waits too; this deadline is the one the client
    sees, so a call that waits in several places (a queue, then a batch) is still
    answered within ``timeout``.
    """

    def __init__(self, metrics: Metrics, timeout: float) -> None:
        self._metrics = metrics
        self._timeout = timeout

    async def __call__(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except TimeoutError:
            self._metrics.storage_errors.inc()
            raise CommandError(
                ErrorCode.UNAVAILABLE, f"storage unavailable: no answer within {self._timeout}s"
            ) from None
        except StorageUnavailable as error:
            self._metrics.storage_errors.inc()
            raise CommandError(ErrorCode.UNAVAILABLE, f"storage unavailable: {error}") from None
        except StorageError as error:
            log.exception("store call failed")
            raise CommandError(ErrorCode.INTERNAL, f"storage error: {error}") from None
