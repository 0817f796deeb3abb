"""Pacing reconnects: advice for the clients an instance sends away, and caps on the
new WebSockets it takes.

When an instance drains (or dies) its clients all come back at once, to the
others. Three things keep that from being a stampede:

- ``ReconnectPacer`` says in each close that invites a reconnect when to come back
  (``protocol.advice``): the more clients are leaving at about the same time, the
  wider the window, so that they reach the cluster at ``server.reconnect_rate``
  new connections a second.
- ``HandshakeLimiter`` admits at most ``server.max_handshake_rate`` new WebSockets
  a second (a token bucket holding one second's worth) and answers the rest with
  HTTP 503 and a ``Retry-After`` that grows with the queue of refused clients, so
  that those told to come back later are told different times. This is what paces
  the clients of an instance that was killed: they had no close to read.
- ``OpeningLimit`` admits a new WebSocket only while fewer than
  ``server.max_opening`` are still opening (upgraded, not yet authenticated and
  answered: the store and Redis round trips of a connection's start). A rate is a
  guess of what the instance can take; this follows what it does take. Without it,
  an instance short of CPU starts every connection that arrives, finishes each
  later than its client waits, and spends itself on connections already abandoned
  while their clients retry: nothing completes any more. With it the excess is
  refused before any work, and told to come back at the pace openings finish.

All three are plain objects fed with the time (``time.monotonic()`` by default), with no
task and no I/O.
"""

from __future__ import annotations

import math
import time

from protocol import CloseCode
from protocol.advice import ReconnectAdvice, parse_advice, window, with_advice

MAX_RETRY_AFTER = 60
"""Seconds: the longest ``Retry-After`` given, however long the queue."""

PACED_CODES = frozenset({CloseCode.GOING_AWAY, CloseCode.RESTARTING, CloseCode.TOO_SLOW})
"""Closes that invite a reconnect, and so carry advice."""


class ReconnectPacer:
    """How many of this instance's clients are on their way elsewhere, and the advice.

    ``leaving(n)`` counts ``n`` clients sent away now; the count drains at
    ``rate`` a second, the pace at which the cluster takes them back.
    """

    __slots__ = ("_delay", "_leaving", "_rate", "_stamp")

    def __init__(self, rate: float, delay: float) -> None:
        self._rate = rate
        self._delay = delay
        self._leaving = 0.0
        self._stamp: float | None = None

    def leaving(self, count: int, now: float | None = None) -> ReconnectAdvice:
        """Count ``count`` more clients sent away; the advice they should follow."""
        self._drain(now)
        self._leaving += max(count, 0)
        return self.advice(now)

    def advice(self, now: float | None = None) -> ReconnectAdvice:
        """The advice for a client sent away now (with those already counted)."""
        self._drain(now)
        return window(self._leaving, self._rate, self._delay)

    def advise(self, code: int, reason: str, now: float | None = None) -> str:
        """The reason a close with ``code`` is sent with: with advice when it invites
        a reconnect and has none yet.

        1012 and 1001 come in batches (a drain, a heartbeat sweep) whose closer counts
        them beforehand with ``leaving``; any other paced close (4009) is one client,
        counted here.
        """
        if code not in PACED_CODES or parse_advice(reason) is not None:
            return reason
        if code == CloseCode.TOO_SLOW:
            return with_advice(reason, self.leaving(1, now))
        return with_advice(reason, self.advice(now))

    def _drain(self, now: float | None) -> None:
        now = time.monotonic() if now is None else now
        stamp = now if self._stamp is None else self._stamp
        elapsed = max(now - stamp, 0.0)
        self._stamp = max(now, stamp)
        self._leaving = max(self._leaving - elapsed * self._rate, 0.0)


class HandshakeLimiter:
    """New WebSockets a second; ``admit`` says whether one more may open now.

    ``rate`` 0 admits everything. A refusal joins a queue that drains at ``rate``
    a second; its ``Retry-After`` is the time the queue ahead of it takes, so a
    burst of refused clients is told 1, 2, 3 … seconds, about ``rate`` per second.
    """

    __slots__ = ("_burst", "_queued", "_rate", "_stamp", "_tokens", "refused")

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._burst = max(rate, 1.0)
        self._tokens = self._burst
        self._queued = 0.0
        self._stamp: float | None = None
        self.refused = 0

    def admit(self, now: float | None = None) -> int | None:
        """None when a new WebSocket may open; else the seconds to tell it to wait."""
        if self._rate <= 0:
            return None
        now = time.monotonic() if now is None else now
        stamp = now if self._stamp is None else self._stamp
        elapsed = max(now - stamp, 0.0)
        self._stamp = max(now, stamp)
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._queued = max(self._queued - elapsed * self._rate, 0.0)
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        self.refused += 1
        self._queued = min(self._queued + 1, MAX_RETRY_AFTER * self._rate)
        return min(max(math.ceil(self._queued / self._rate), 1), MAX_RETRY_AFTER)


RATE_WINDOW = 2.0
"""Seconds: openings that finished this long ago weigh 1/e in the finishing rate."""
MIN_RATE = 1.0
"""Openings a second assumed when none finished lately (they are all stuck waiting)."""


class OpeningLimit:
    """WebSockets still opening, and whether one more may start now.

    ``limit`` 0 admits everything. A connection counts from ``begin`` (its upgrade
    accepted) to ``end`` (its session authenticated and done with what the client
    sent first, or the connection gone). A refusal joins a queue that drains at
    the rate openings have been ending (decaying over ``RATE_WINDOW``); its
    ``Retry-After`` is the time the queue ahead of it takes, so a burst of refused
    clients comes back about as fast as openings end, not all at once.
    """

    __slots__ = ("_limit", "_queued", "_rate", "_stamp", "opening", "refused")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.opening = 0
        self.refused = 0
        self._rate = 0.0
        self._queued = 0.0
        self._stamp: float | None = None

    def admit(self, now: float | None = None, *, overloaded: bool = False) -> int | None:
        """None when a new WebSocket may open (then ``begin`` it); else seconds to wait.

        ``overloaded``: the instance cannot take one now whatever the count (its
        event loop is behind); refused the same way.
        """
        if not overloaded and (self._limit <= 0 or self.opening < self._limit):
            return None
        rate = self._advance(time.monotonic() if now is None else now)
        self.refused += 1
        self._queued = min(self._queued + 1, MAX_RETRY_AFTER * rate)
        return min(max(math.ceil(self._queued / rate), 1), MAX_RETRY_AFTER)

    def begin(self) -> None:
        self.opening += 1

    def end(self, now: float | None = None) -> None:
        """One opening is over (done or gone): its place is free."""
        self._advance(time.monotonic() if now is None else now)
        self.opening = max(self.opening - 1, 0)
        self._rate += 1 / RATE_WINDOW

    def _advance(self, now: float) -> float:
        """Decay the rate and drain the queue up to ``now``; the rate to plan with."""
        stamp = now if self._stamp is None else self._stamp
        elapsed = max(now - stamp, 0.0)
        self._stamp = max(now, stamp)
        rate = max(self._rate, MIN_RATE)
        self._queued = max(self._queued - elapsed * rate, 0.0)
        self._rate *= math.exp(-elapsed / RATE_WINDOW)
        return max(self._rate, MIN_RATE)
