"""When to reconnect: exponential backoff with full jitter, unless the server advises.

Full jitter (a delay drawn uniformly from zero to the exponential cap) spreads
clients that lost their server at the same moment over the whole window, so they
do not come back in step. A server may say when to come back instead:

- a close reason ending in ``; retry_ms=LOW-HIGH`` (server-paced reconnect): wait a
  uniformly random delay between LOW and HIGH milliseconds;
- an HTTP 503 refusal of the upgrade with ``Retry-After: SECONDS``.

Advice replaces the backoff for that attempt; the attempt still counts, so a server
that keeps refusing is retried ever more slowly.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

_ADVICE = re.compile(r";\s*retry_ms=(\d{1,9})-(\d{1,9})\s*$")
MAX_ADVICE = 3600.0
"""Seconds: advice to wait longer than an hour is taken as an hour."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """``initial * 2**attempt`` capped at ``maximum``; the delay is uniform below it."""

    initial: float = 0.5
    maximum: float = 30.0

    def cap(self, attempt: int) -> float:
        return min(self.maximum, self.initial * 2.0 ** min(attempt, 32))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        return (rng or _random).uniform(0.0, self.cap(attempt))


_random = random.Random()


def advised_delay(reason: str, rng: random.Random | None = None) -> float | None:
    """Seconds to wait that a close reason advises, or None when it gives no advice."""
    match = _ADVICE.search(reason)
    if match is None:
        return None
    low, high = int(match.group(1)), int(match.group(2))
    if high < low:
        return None
    return min((rng or _random).uniform(low, high) / 1000, MAX_ADVICE)


def retry_after(value: str | None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` header given in seconds (dates are ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds < 0:
        return None
    return min(seconds, MAX_ADVICE)


def reason_text(reason: str) -> str:
    """The close reason without its advice."""
    return _ADVICE.sub("", reason).rstrip()
