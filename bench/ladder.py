"""The search for the highest offered rate that passes, in a bounded number of attempts.

Climb geometrically from ``start`` while attempts pass; once one fails, bisect
(geometric mean) between the best pass and the lowest failure above it until the
two are within ``precision`` of each other or the attempts are spent. If the very
first attempts fail, step down instead, down to ``floor`` and no further. Pure: the
caller runs the attempts and feeds back (rate, passed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Ladder:
    start: float
    """First offered rate (deliveries/s)."""
    floor: float
    """Lowest rate worth trying (below it the answer is "fails at every rate")."""
    factor: float = 2.0
    attempts: int = 6
    precision: float = 1.15
    """Stop bisecting once the lowest failure is within this factor of the best pass."""

    def next_rate(self, history: list[tuple[float, bool]]) -> float | None:
        """The next rate to try after ``history`` (rate, passed), or None when done."""
        if not history:
            return self.start
        if len(history) >= self.attempts:
            return None
        passes = [rate for rate, passed in history if passed]
        best = max(passes, default=None)
        failures = [
            rate for rate, passed in history if not passed and (best is None or rate > best)
        ]
        lowest_failure = min(failures, default=None)
        if best is None:
            assert lowest_failure is not None
            if lowest_failure <= self.floor * 1.001:
                return None
            return max(lowest_failure / self.factor, self.floor)
        if lowest_failure is None:
            return best * self.factor
        if lowest_failure / best <= self.precision:
            return None
        return math.sqrt(best * lowest_failure)
