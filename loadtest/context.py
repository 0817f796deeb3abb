"""What every scenario runs with: the target, the generator's processes, the meter."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .cpu import CpuMeter
from .progress import Progress
from .target import Target
from .workers import Pool

T = TypeVar("T")

OWNED_NAMESPACES = ("followers", "user")


def owner_of(room: str) -> str | None:
    """The user who may send to ``room`` in the default namespaces, if one does."""
    namespace, _, name = room.partition(":")
    return name if namespace in OWNED_NAMESPACES and name else None


TICK = 1.0
"""Seconds between progress lines."""


@dataclass
class Context:
    target: Target
    procs: int = 1
    server_pids: tuple[int, ...] = ()
    progress: Progress = field(default_factory=Progress)
    concurrency: int = 100
    """Connections each process opens at a time (scenarios that open many)."""
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))

    def users(self, prefix: str, count: int) -> list[str]:
        """Fresh user ids for this run."""
        return [f"lt{self.run_id}-{prefix}{i}" for i in range(count)]

    def room(self, name: str) -> str:
        """A fresh room without presence, owned by ``owner_of(room)``: joining one with
        presence pushes every join to every member, N²/2 pushes for N members, which
        would time the presence feature, not the fan-out."""
        return f"followers:lt{self.run_id}-{name}"

    def deal(self, users: list[str], parts: int | None = None) -> list[list[tuple[int, str]]]:
        """(index in the run, user) dealt round-robin to the processes."""
        parts = max(1, min(parts or self.procs, len(users) or 1))
        indexed = list(enumerate(users))
        return [indexed[i::parts] for i in range(parts)]

    def meter(self, pool: Pool | None) -> CpuMeter:
        generator = {"parent": os.getpid()}
        if pool is not None:
            generator.update({f"p{i}": pid for i, pid in enumerate(pool.pids)})
        return CpuMeter(generator, self.server_pids)


async def while_running(
    work: Awaitable[T], tick: Callable[[], Awaitable[None]], interval: float = TICK
) -> T:
    """Await ``work``, calling ``tick`` every ``interval`` seconds until it is done."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                return task.result()
            await tick()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@contextlib.contextmanager
def tolerant() -> Iterator[None]:
    """For progress ticks: a late or failed snapshot must not end the run."""
    with contextlib.suppress(Exception):
        yield


def usage_text(usage: dict[str, float]) -> str:
    """'gen 0.93 (max p0 0.85) srv 0.98' from a CpuMeter sample."""
    if not usage:
        return ""
    generator = {k: v for k, v in usage.items() if k != "server"}
    busiest = max(generator, key=lambda k: generator[k])
    text = f"gen cpu {sum(generator.values()):.2f} (max {busiest} {generator[busiest]:.2f})"
    if usage.get("server"):
        text += f" srv cpu {usage['server']:.2f}"
    return text


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """Drop empty entries from a report."""
    return {k: v for k, v in report.items() if v is not None and v != {}}
