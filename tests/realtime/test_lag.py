"""The event loop lag that turns new WebSockets away: seen while the loop is held up,
and counting down after."""

from __future__ import annotations

import asyncio
import time

from realtime.lag import LoopLag


async def test_a_loop_held_up_is_behind_at_once_and_after() -> None:
    samples: list[float] = []
    lag = LoopLag(interval=0.05, on_sample=samples.append)
    assert lag.behind() == 0.0  # not measuring yet
    task = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0)  # the first timer is set
        time.sleep(0.5)  # holding the loop up is the point
        # Overdue by at least the hold less one interval, before the timer even ran.
        assert lag.behind() >= 0.45
        while not samples:
            await asyncio.sleep(0.01)
        assert samples[0] >= 0.45
        # The lateness counts down with time, not at the next timer that is on time.
        assert lag.behind() > 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
