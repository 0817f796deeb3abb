"""CPU spent by the generator's processes and by the server, so a saturated
generator shows: per-process utilisation every second, and over the measured window.

A generator process above ``SATURATED`` of a core, or all of them together above
that share of the cores they may run on, means the figures may say more about the
generator than about the server: the report carries a warning.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from .probe import cpu_seconds

SATURATED = 0.9
MIN_WINDOW = 2.0


def generator_cores() -> int:
    """Cores this process (and the processes it starts) may run on."""
    return len(os.sched_getaffinity(0))


def _cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:  # exited
        return 0.0


@dataclass
class CpuMeter:
    """Samples CPU of named generator processes and of the server's processes."""

    generator: dict[str, int]
    """Name → pid of each generator process (the parent included)."""
    server: tuple[int, ...] = ()
    _last: dict[str, float] = field(default_factory=dict)
    _last_time: float = 0.0
    _start: dict[str, float] = field(default_factory=dict)
    _start_time: float = 0.0
    _end: dict[str, float] = field(default_factory=dict)
    _end_time: float = 0.0
    peaks: dict[str, float] = field(default_factory=dict)
    """Highest one-second utilisation of each process inside the window."""
    total_peak: float = 0.0
    _measuring: bool = False

    def _read(self) -> dict[str, float]:
        now = {name: _cpu(pid) for name, pid in self.generator.items()}
        now["server"] = sum(_cpu(pid) for pid in self.server)
        return now

    def sample(self) -> dict[str, float]:
        """Utilisation (1.0 = one core) of each process since the previous sample."""
        now, stamp = self._read(), time.monotonic()
        elapsed = stamp - self._last_time if self._last_time else 0.0
        usage = (
            {name: (now[name] - self._last.get(name, now[name])) / elapsed for name in now}
            if elapsed > 0.2
            else {}
        )
        self._last, self._last_time = now, stamp
        if self._measuring and usage:
            for name, value in usage.items():
                if name != "server":
                    self.peaks[name] = max(self.peaks.get(name, 0.0), value)
            generator = sum(v for k, v in usage.items() if k != "server")
            self.total_peak = max(self.total_peak, generator)
        return usage

    def start(self) -> None:
        """Begin the measured window (the load, not the set-up)."""
        self._start, self._start_time = self._read(), time.monotonic()
        self._last, self._last_time = self._start, self._start_time
        self.peaks.clear()
        self.total_peak = 0.0
        self._measuring = True

    def stop(self) -> None:
        self._end, self._end_time = self._read(), time.monotonic()
        self._measuring = False

    @property
    def window(self) -> float:
        return self._end_time - self._start_time

    def spent(self, name: str) -> float:
        return self._end.get(name, 0.0) - self._start.get(name, 0.0)

    def generator_seconds(self) -> float:
        return sum(self.spent(name) for name in self.generator)

    def server_seconds(self) -> float | None:
        return self.spent("server") if self.server else None

    def report(self, per_unit: int = 0, unit: str = "delivery") -> dict[str, Any]:
        """The window's figures; ``per_unit`` events give µs of CPU per event."""
        window = self.window or 1e-9
        cores = generator_cores()
        processes = [
            {
                "name": name,
                "pid": pid,
                "cpu_s": round(self.spent(name), 3),
                "utilisation": round(self.spent(name) / window, 3),
                "peak_utilisation": round(self.peaks.get(name, 0.0), 3),
            }
            for name, pid in self.generator.items()
        ]
        total = self.generator_seconds()
        report: dict[str, Any] = {
            "window_s": round(self.window, 3),
            "cores": cores,
            "cpu_s": round(total, 3),
            "utilisation": round(total / window, 3),
            "processes": processes,
            "saturated": bool(self.warnings()),
        }
        if per_unit:
            report[f"us_per_{unit}"] = round(total * 1e6 / per_unit, 3)
        return report

    def server_report(self, per_unit: int = 0, unit: str = "delivery") -> dict[str, Any]:
        spent = self.server_seconds()
        if spent is None:
            return {}
        report: dict[str, Any] = {
            "pids": list(self.server),
            "cpu_s": round(spent, 3),
            "utilisation": round(spent / (self.window or 1e-9), 3),
        }
        if per_unit:
            report[f"us_per_{unit}"] = round(spent * 1e6 / per_unit, 3)
        return report

    def flat(self, per_unit: int, unit: str = "delivery") -> dict[str, Any]:
        """The main figures as top-level keys (what scripts that read reports use)."""
        flat: dict[str, Any] = {"generator_cpu_s": round(self.generator_seconds(), 3)}
        if per_unit:
            flat[f"generator_cpu_us_per_{unit}"] = round(
                self.generator_seconds() * 1e6 / per_unit, 3
            )
        spent = self.server_seconds()
        if spent is not None:
            flat["server_cpu_s"] = round(spent, 3)
            if per_unit:
                flat[f"server_cpu_us_per_{unit}"] = round(spent * 1e6 / per_unit, 3)
        return flat

    def warnings(self) -> list[str]:
        found: list[str] = []
        window = self.window
        if window < MIN_WINDOW:  # /proc counts in 10 ms ticks: too coarse to tell
            return found
        for name in self.generator:
            average = self.spent(name) / window
            peak = self.peaks.get(name, 0.0)
            if average > SATURATED or peak > SATURATED:
                found.append(
                    f"generator process {name} used {average:.0%} of a core on average, "
                    f"{peak:.0%} at peak: it may be the bottleneck (add --procs or cores)"
                )
        cores = generator_cores()
        total = self.generator_seconds() / window
        if total > SATURATED * cores or self.total_peak > SATURATED * cores:
            found.append(
                f"the generator used {total:.0%} of its {cores} core(s) on average, "
                f"{self.total_peak:.0%} at peak: it may be the bottleneck"
            )
        return found
