"""How late a generator process's event loop runs: a generator behind its own work
measures itself.

A process that cannot keep up (short of CPU, or sharing it with others) fires its
timers late: a handshake timeout of 10 s fires after 14, a backoff of 1 s after 5,
and the figures say more about the generator than about the server. ``LoopWatch``
notes the worst lateness of a timer due every ``INTERVAL``; scenarios report it
and warn past ``WARN_S``.
"""

from __future__ import annotations

import asyncio

INTERVAL = 0.1
WARN_S = 1.0


class LoopWatch:
    def __init__(self) -> None:
        self.worst = 0.0
        """Seconds: the latest a timer fired since ``reset``."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def reset(self) -> float:
        """The worst lateness so far; starts counting afresh."""
        worst, self.worst = self.worst, 0.0
        return worst

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + INTERVAL
            await asyncio.sleep(INTERVAL)
            self.worst = max(self.worst, loop.time() - due)


def lag_warnings(worst: dict[str, float]) -> list[str]:
    """A warning for each process whose loop ran more than ``WARN_S`` late."""
    return [
        f"generator process {name}'s event loop ran up to {late:.1f} s late: its timeouts "
        "and waits fired that late, so the figures may be the generator's (add --procs or "
        "cores, or run when the machine is quieter)"
        for name, late in worst.items()
        if late > WARN_S
    ]
