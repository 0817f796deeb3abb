"""Latency histograms that merge across processes, and per-subscriber seq checks.

Buckets are log-linear over integer microseconds, computed with integer arithmetic
(no logarithm per sample): values below 128 µs have a bucket each; above, every
power of two is cut into 64 buckets, so a bucket is at most 1/64 (1.6%) wide.
``receiver.py`` inlines ``bucket()``; a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LINEAR = 128
"""Values below this many µs have a bucket each."""
SUB_BITS = 6
"""64 buckets per power of two above ``LINEAR``."""
BUCKETS = 64 * 40
"""Enough for 2**38 µs (three days); larger values are clamped."""
MAX_MICROS = (1 << 38) - 1


def bucket(micros: int) -> int:
    if micros < LINEAR:
        return micros if micros > 0 else 0
    shift = micros.bit_length() - 7
    return (shift << SUB_BITS) + (micros >> shift)


def bucket_low(index: int) -> int:
    """The smallest value in a bucket."""
    if index < LINEAR:
        return index
    shift = (index >> SUB_BITS) - 1
    return (index - (shift << SUB_BITS)) << shift


def bucket_width(index: int) -> int:
    return 1 if index < LINEAR else 1 << ((index >> SUB_BITS) - 1)


@dataclass(slots=True)
class Histogram:
    """Counts of latencies in whole microseconds, accurate to 1.6%.

    ``counts`` is a dense list indexed by ``bucket()``: the hot path adds to it
    directly, then adds its count to ``total`` and raises ``maximum``.
    """

    counts: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    total: int = 0
    maximum: int = 0

    def add(self, micros: int) -> None:
        micros = min(max(micros, 0), MAX_MICROS)
        self.counts[bucket(micros)] += 1
        self.total += 1
        self.maximum = max(self.maximum, micros)

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for index, count in enumerate(other.counts):
            if count:
                counts[index] += count
        self.total += other.total
        self.maximum = max(self.maximum, other.maximum)

    def minus(self, earlier: Histogram) -> Histogram:
        """What was added since ``earlier`` (a copy of this one taken before)."""
        counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        return Histogram(counts, self.total - earlier.total, self.maximum)

    def copy(self) -> Histogram:
        return Histogram(list(self.counts), self.total, self.maximum)

    def percentile(self, fraction: float) -> float:
        """The value below which ``fraction`` of the samples fall (bucket midpoint)."""
        if not self.total:
            return 0.0
        rank = max(fraction * self.total, 1)
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                middle = bucket_low(index) + (bucket_width(index) - 1) / 2
                return min(middle, float(self.maximum))
        return float(self.maximum)

    def summary_ms(self) -> dict[str, float]:
        return {
            "p50": round(self.percentile(0.50) / 1000, 3),
            "p90": round(self.percentile(0.90) / 1000, 3),
            "p99": round(self.percentile(0.99) / 1000, 3),
            "p999": round(self.percentile(0.999) / 1000, 3),
            "max": round(self.maximum / 1000, 3),
        }

    def to_json(self) -> dict[str, Any]:
        sparse = {index: count for index, count in enumerate(self.counts) if count}
        return {"counts": sparse, "total": self.total, "maximum": self.maximum}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        histogram = cls(total=int(data["total"]), maximum=int(data["maximum"]))
        for index, count in data["counts"].items():
            histogram.counts[int(index)] = int(count)
        return histogram


@dataclass(slots=True)
class SeqCheck:
    """One subscriber's view of a room's seqs: what was lost, duplicated or reordered.

    ``last`` is the highest seq seen (the join's seq to begin with). A seq above
    ``last + 1`` leaves a gap (``missing``); a missing seq arriving later counts as
    reordered, any other seq at or below ``last`` as duplicated.
    """

    last: int = 0
    duplicated: int = 0
    reordered: int = 0
    missing: set[int] = field(default_factory=set)

    def add(self, seq: int) -> None:
        last = self.last
        if seq == last + 1:
            self.last = seq
        elif seq > last:
            self.missing.update(range(last + 1, seq))
            self.last = seq
        elif seq in self.missing:
            self.missing.discard(seq)
            self.reordered += 1
        else:
            self.duplicated += 1

    def lost(self, final_seq: int) -> int:
        """Seqs up to ``final_seq`` never received."""
        return len(self.missing) + max(0, final_seq - self.last)


@dataclass(slots=True)
class SeqTotals:
    """Lost, duplicated and reordered deliveries summed over subscribers."""

    lost: int = 0
    duplicated: int = 0
    reordered: int = 0

    def add(self, check: SeqCheck, final_seq: int) -> None:
        self.lost += check.lost(final_seq)
        self.duplicated += check.duplicated
        self.reordered += check.reordered

    def merge(self, other: SeqTotals) -> None:
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.reordered += other.reordered
