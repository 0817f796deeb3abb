"""What one attempt and one (server, S) point came to: pass or fail, and why.

Pass, as in the issue's targets: every subscriber connected, no publish error,
at least 99.9% of the expected deliveries received and p99 latency under 250 ms.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.attempts import GeneratorRun

MIN_DELIVERED = 0.999
MAX_P99_MS = 250.0
SATURATED = 0.95
"""A core busy this much of the publishing window had nothing left to give."""
FOREIGN = 0.2
"""The generator core this much busier than the generator itself: someone else was there."""


def load_average() -> list[float]:
    """``uptime``'s load average (1, 5 and 15 minutes), rounded: recorded with every figure,
    because the machine is shared."""
    return [round(value, 2) for value in os.getloadavg()]


def load_text(before: list[float] | None, after: list[float] | None) -> str:
    """The 1-minute load average at the start and at the end of a measurement."""
    if not before or not after:
        return "?"
    return f"{before[0]:.2f}→{after[0]:.2f}"


@dataclass
class Attempt:
    server: str
    subscribers: int
    offered: float
    """Offered deliveries/s: messages/s times subscribers."""
    passed: bool
    reason: str
    seconds: float
    deliveries_per_s: float | None = None
    delivered_ratio: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_us_per_delivery: float | None = None
    server_core: float | None = None
    server_share: float | None = None
    generator_core: float | None = None
    generator_share: float | None = None
    generator_cpu_s: float | None = None
    lost: int | None = None
    duplicated: int | None = None
    reordered: int | None = None
    quiet_before: bool = True
    """Both cores were idle before the attempt (the machine is shared)."""

    generator_says_saturated: bool = False
    """The generator's own verdict on itself (newer generators report one)."""
    warnings: list[str] = field(default_factory=list)
    load_before: list[float] | None = None
    """The load average (1, 5, 15 min) when the attempt started, and when it ended."""
    load_after: list[float] | None = None

    @property
    def load_text(self) -> str:
        return load_text(self.load_before, self.load_after)

    @property
    def generator_saturated(self) -> bool:
        core_full = self.generator_core is not None and self.generator_core >= SATURATED
        return core_full or self.generator_says_saturated

    @property
    def noisy(self) -> bool:
        """Other work shared the cores: this attempt's figures are not the server's alone."""
        crowded = (
            self.generator_core is not None
            and self.generator_share is not None
            and self.generator_core - self.generator_share > FOREIGN
        )
        return crowded or not self.quiet_before


def judge(
    server: str, subscribers: int, offered: float, run: GeneratorRun, quiet_before: bool = True
) -> Attempt:
    attempt = Attempt(server, subscribers, offered, False, run.error or "", run.seconds)
    attempt.quiet_before = quiet_before
    report = run.report
    if report is None:
        return attempt
    latency = report.get("latency_ms", {})
    attempt.deliveries_per_s = report.get("deliveries_per_s")
    attempt.delivered_ratio = report.get("delivered_ratio")
    attempt.p50_ms, attempt.p99_ms = latency.get("p50"), latency.get("p99")
    attempt.server_us_per_delivery = report.get("server_cpu_us_per_delivery")
    attempt.server_core, attempt.server_share = run.server_core, run.server_share
    attempt.generator_core, attempt.generator_share = run.generator_core, run.generator_share
    attempt.generator_cpu_s = report.get("generator_cpu_s")
    attempt.lost, attempt.duplicated = report.get("lost"), report.get("duplicated")
    attempt.reordered = report.get("reordered")
    attempt.warnings = list(report.get("warnings", []))
    generator = report.get("generator", {})
    # Its average over the window, not its one-second peaks: a burst is not a limit.
    cores = generator.get("cores") or 1
    attempt.generator_says_saturated = generator.get("utilisation", 0.0) >= SATURATED * cores
    connected = int(report.get("subscribers", 0))
    if connected < subscribers:
        attempt.reason = f"{subscribers - connected} of {subscribers} subscribers did not connect"
    elif report.get("publish_errors"):
        attempt.reason = f"{report['publish_errors']} publish errors"
    elif (attempt.delivered_ratio or 0.0) < MIN_DELIVERED:
        attempt.reason = f"delivered {100 * (attempt.delivered_ratio or 0.0):.2f}%"
    elif attempt.p99_ms is None or attempt.p99_ms >= MAX_P99_MS:
        attempt.reason = f"p99 {attempt.p99_ms} ms"
    else:
        attempt.passed, attempt.reason = True, "pass"
    if attempt.generator_saturated:
        attempt.reason += ", generator core saturated"
    if attempt.noisy:
        attempt.reason += ", other work on the cores"
    return attempt


@dataclass
class Point:
    """One server at one S: every attempt of the ladder, and the best that passed."""

    server: str
    subscribers: int
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def best(self) -> Attempt | None:
        passes = [a for a in self.attempts if a.passed]
        return max(passes, key=lambda a: a.deliveries_per_s or 0.0, default=None)

    @property
    def generator_limited(self) -> bool:
        """The generator, not the server, set the limit: the figure is a lower bound."""
        best = self.best
        if best is None:
            return False
        above = [a for a in self.attempts if not a.passed and a.offered > best.offered]
        lowest = min(above, key=lambda a: a.offered, default=None)
        return best.generator_saturated or (lowest is not None and lowest.generator_saturated)

    @property
    def failed_cost(self) -> float | None:
        """Server µs per delivery at the lowest rate tried, for a point that never passed."""
        tried = [a for a in self.attempts if a.server_us_per_delivery is not None]
        lowest = min(tried, key=lambda a: a.offered, default=None)
        return lowest.server_us_per_delivery if lowest else None

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "server": self.server,
            "subscribers": self.subscribers,
            "best": asdict(best) if best else None,
            "generator_limited": self.generator_limited,
            "noisy": best.noisy if best else None,
            "attempts": [asdict(a) for a in self.attempts],
        }


@dataclass
class Idle:
    server: str
    connections: int
    report: dict[str, Any] | None
    error: str | None = None
    load_before: list[float] | None = None
    load_after: list[float] | None = None

    @property
    def load_text(self) -> str:
        return load_text(self.load_before, self.load_after)

    @property
    def bytes_per_connection(self) -> float | None:
        if self.report is None:
            return None
        value = self.report.get("bytes_per_connection")
        return float(value) if value is not None else None

    @property
    def complete(self) -> bool:
        return self.report is not None and self.report.get("connections") == self.connections

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
