"""Token expiry for every connection, on one timer instead of one per connection.

A heap of (deadline, connection) entries and a single timer for the earliest. A
refresh pushes a new entry and the old one goes stale (its deadline is no longer
the connection's); so does a closed connection's. Stale entries are skipped when
they come up, and dropped in bulk once they are half the heap.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time

from protocol import CloseCode

from .connection import Connection

COMPACT_AFTER = 64


class ExpiryClock:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Connection]] = []
        self._order = itertools.count()
        self._stale = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def schedule(self, conn: Connection, deadline: float) -> None:
        """Close ``conn`` with 4010 at ``deadline`` (Unix time) unless rescheduled."""
        self.forget(conn)
        conn.deadline = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), conn))
        self._arm()

    def forget(self, conn: Connection) -> None:
        """The connection closed or was rescheduled: its entry is stale."""
        if conn.deadline:
            conn.deadline = 0.0
            self._stale += 1
            if self._stale > COMPACT_AFTER and 2 * self._stale > len(self._heap):
                self._heap = [entry for entry in self._heap if entry[0] == entry[2].deadline]
                heapq.heapify(self._heap)
                self._stale = 0

    def _arm(self) -> None:
        if not self._heap:
            return
        earliest = self._heap[0][0]
        if self._timer is not None:
            if self._timer_at <= earliest:
                return
            self._timer.cancel()
        self._timer_at = earliest
        delay = max(earliest - time.time(), 0.0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = time.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, conn = heapq.heappop(heap)
            if deadline != conn.deadline:
                self._stale = max(self._stale - 1, 0)
            elif not conn.closing:
                conn.close(CloseCode.TOKEN_EXPIRED, "token expired")
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
