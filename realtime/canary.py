"""A canary: an instance sends itself a message through the broker and waits for it.

A subscriber can go deaf without any error: a listener stuck on a connection that
still looks open, a proxy that stopped forwarding one connection, subscriptions
lost on the server side. Pings on the connection do not always show it; a message
that went all the way round does. Every ``interval`` one canary is sent; when it
is not back within ``timeout``, ``reason`` says so (``/readyz`` reports it) and
``on_lost`` is called (the broker then resubscribes everything, and the instance
re-reads what it may have missed). ``reason`` clears when a canary comes back.

A canary that cannot even be sent (the broker refuses publications) only sets
``reason``: the broker already knows it is down and reconnects by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .broker import BrokerUnavailable

log = logging.getLogger(__name__)


class Canary:
    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        *,
        interval: float,
        timeout: float,
        on_lost: Callable[[str], None],
    ) -> None:
        """``probe`` sends one canary and returns when it came back."""
        self._probe = probe
        self._interval = interval
        self._timeout = timeout
        self._on_lost = on_lost
        self.reason: str | None = None
        """Why the last canary failed, or None when it came back."""

    async def run(self) -> None:
        """Check every ``interval`` until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            await self.check()

    async def check(self) -> bool:
        """Send one canary; True when it came back in time."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._probe()
        except TimeoutError:
            reason = f"canary not back within {self._timeout:g}s"
            log.warning("%s: resubscribing", reason)
            self.reason = reason
            self._on_lost(reason)
            return False
        except BrokerUnavailable as error:
            self.reason = f"canary not sent: {error}"
            return False
        if self.reason is not None:
            log.info("canary back (was: %s)", self.reason)
        self.reason = None
        return True
