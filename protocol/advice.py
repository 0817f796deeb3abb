"""Reconnect advice carried in a close reason: when a client should come back.

A close that invites a reconnect (1012 at a restart, 4009 too slow, 1001 after the
ping timeout) ends its reason with ``; retry_ms=LOW-HIGH``: reconnect after a
delay drawn uniformly between LOW and HIGH milliseconds. The text before it is
the reason as it always was, so a client that knows nothing of advice still reads
``server restarting: reconnect``; one that does spreads its reconnect over the
window instead of coming back with everyone else at once::

    server restarting: reconnect; retry_ms=500-17166

The window is as wide as the clients leaving at once need: N clients told to
come back within N / rate seconds reach the other instances at about ``rate``
new connections per second (``window``). A close reason is at most 123 bytes
(RFC 6455 5.5: a control frame's payload is 125 bytes, the code takes two), and
the advice always fits: the text is shortened, never the advice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_REASON_BYTES = 123
MAX_WINDOW_MS = 3_600_000
"""An hour: no advice says to wait longer (a bound against nonsense settings)."""

_ADVICE = re.compile(r";\s*retry_ms=(\d{1,9})-(\d{1,9})\s*$")


@dataclass(frozen=True, slots=True)
class ReconnectAdvice:
    """Reconnect after ``after_ms``, plus a uniformly random part of ``jitter_ms``."""

    after_ms: int
    jitter_ms: int

    @property
    def low_ms(self) -> int:
        return self.after_ms

    @property
    def high_ms(self) -> int:
        return self.after_ms + self.jitter_ms

    def delay_ms(self, fraction: float) -> float:
        """The delay for a random ``fraction`` in [0, 1): a point of the window."""
        return self.after_ms + min(max(fraction, 0.0), 1.0) * self.jitter_ms


def window(leaving: float, rate: float, delay: float) -> ReconnectAdvice:
    """The advice for ``leaving`` clients sent away at once.

    They wait at least ``delay`` seconds (time for the load balancer to notice),
    then spread over ``leaving / rate`` seconds, and never over less than
    ``delay``: even one client gets a window, so that clients closed one by one
    in quick succession do not come back in step.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    after = _ms(delay)
    spread = _ms(max(delay, max(leaving, 0.0) / rate))
    return ReconnectAdvice(after, max(min(spread, MAX_WINDOW_MS - after), 0))


def with_advice(reason: str, advice: ReconnectAdvice) -> str:
    """``reason`` followed by ``advice``, within the 123 bytes of a close reason.

    Advice already in ``reason`` is replaced; when the whole does not fit, the
    text is cut (on a character boundary) and the advice kept.
    """
    text = _ADVICE.sub("", reason).rstrip()
    suffix = f"; retry_ms={advice.low_ms}-{advice.high_ms}"
    room = MAX_REASON_BYTES - len(suffix)
    head = text.encode()[:room].decode("utf-8", "ignore")
    return head + suffix


def parse_advice(reason: str) -> ReconnectAdvice | None:
    """The advice at the end of a close reason, or None when there is none."""
    match = _ADVICE.search(reason)
    if match is None:
        return None
    low, high = int(match.group(1)), int(match.group(2))
    if high < low:
        return None
    return ReconnectAdvice(low, high - low)


def reason_text(reason: str) -> str:
    """The reason without its advice: what an old client shows."""
    return _ADVICE.sub("", reason).rstrip()


def _ms(seconds: float) -> int:
    return min(math.ceil(seconds * 1000), MAX_WINDOW_MS)
