"""When a client that lost its connection, or failed to open one, tries again.

Following the server (``honour``): a close whose reason carries reconnect advice
(``protocol.advice``) is followed, a 503 with ``Retry-After`` is retried after
that many seconds plus a random part of one more (Retry-After is whole seconds:
without it, everyone told "1" would come back in the same instant), and anything
else backs off exponentially with full jitter (a random delay up to
``base · 2^attempt``, at most ``cap``). Not following it is how clients without
pacing behave: reconnect at once, retry a failure after ``base`` (±50%).

Pure: the caller passes the random fraction in [0, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.advice import parse_advice


@dataclass(frozen=True, slots=True)
class Backoff:
    honour: bool = True
    base: float = 0.5
    cap: float = 30.0

    def after_close(self, reason: str, fraction: float) -> float:
        """Seconds from a lost connection (closed with ``reason``) to the reconnect."""
        if not self.honour:
            return 0.0
        advice = parse_advice(reason)
        if advice is not None:
            return advice.delay_ms(fraction) / 1000
        return self._jitter(0, fraction)

    def after_failure(self, attempt: int, retry_after: float | None, fraction: float) -> float:
        """Seconds from the ``attempt``-th failed attempt in a row (1, 2 …) to the next."""
        if not self.honour:
            return self.base * (0.5 + fraction)
        if retry_after is not None:
            return max(retry_after, 0.0) + fraction
        return self._jitter(attempt, fraction)

    def _jitter(self, attempt: int, fraction: float) -> float:
        return fraction * min(self.cap, self.base * 2.0 ** min(attempt, 32))
