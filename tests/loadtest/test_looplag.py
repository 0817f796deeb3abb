"""The generator watching its own loop, and the refusal nobody awaited."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from loadtest.fastws import FastConnection, HandshakeError
from loadtest.looplag import WARN_S, LoopWatch, lag_warnings


async def test_a_loop_held_up_is_noted_until_reset() -> None:
    watch = LoopWatch()
    watch.start()
    try:
        await asyncio.sleep(0)  # the first timer is set
        time.sleep(0.5)  # a process busy with its own work
        while watch.worst == 0:
            await asyncio.sleep(0.01)
        assert watch.reset() >= 0.4
        assert watch.worst < 0.4
    finally:
        await watch.stop()


def test_only_a_loop_late_past_the_mark_is_warned_about() -> None:
    warnings = lag_warnings({"p0": 0.05, "p1": WARN_S + 3})
    assert len(warnings) == 1
    assert "p1" in warnings[0] and "4.0 s late" in warnings[0]


async def test_a_refusal_nobody_awaits_is_not_reported_as_never_retrieved() -> None:
    # What a handshake refused as its timeout cancels create_connection leaves behind.
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        connection = FastConnection("ws://127.0.0.1:9/ws", {}, ())
        connection._refuse(HandshakeError(502))
        del connection
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []
