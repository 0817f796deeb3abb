"""How far behind the event loop runs: the sign of an instance short of CPU.

A timer due every ``interval`` seconds fires late by however long the loop took to
come back to it, that is by the work queued ahead of everything else. ``behind``
is that lateness, a timer overdue right now included (the loop may be in the
middle of a long stretch of work). Past ``server.max_lag`` the instance takes no
new WebSockets (``ws.turned_away``): a connection started then would finish after
its client gave up, and all its work would be lost, while the client retries.

A lateness seen counts down with the time since (by then the loop caught up that
much at most), rather than ending at the next timer on time: what piled up while
it was behind, the connections waiting to be accepted first, still has to be
worked off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

INTERVAL = 0.25
"""Seconds between two looks at the loop."""


class LoopLag:
    __slots__ = ("_due", "_on_sample", "_peak", "_peak_at", "interval")

    def __init__(
        self, interval: float = INTERVAL, on_sample: Callable[[float], None] | None = None
    ) -> None:
        self.interval = interval
        self._due: float | None = None
        self._peak = 0.0
        self._peak_at = 0.0
        self._on_sample = on_sample

    def behind(self) -> float:
        """Seconds the loop is behind now."""
        if self._due is None:
            return 0.0
        now = asyncio.get_running_loop().time()
        return max(self._peak - (now - self._peak_at), now - self._due, 0.0)

    async def run(self) -> None:
        """Measure until cancelled (owned by the node)."""
        loop = asyncio.get_running_loop()
        while True:
            self._due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            now = loop.time()
            late = max(now - self._due, 0.0)
            if late >= self._peak - (now - self._peak_at):
                self._peak, self._peak_at = late, now
            if self._on_sample is not None:
                self._on_sample(late)
