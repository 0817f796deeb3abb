"""What the two cores, the server and the generator did during a run, from /proc.

Two views, because this machine is shared: a core's busy time counts every
process on it (someone else's benchmark included), a process's CPU time counts
only that process. "Core busy" says whether there was CPU left to give; the
process's own share says how much of it the server (or the generator) used.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.probe import cpu_seconds

SAMPLE_INTERVAL = 0.2


@dataclass(frozen=True)
class Sample:
    at: float
    cores: dict[int, tuple[int, int]]
    """CPU number → (busy, total) jiffies."""
    server: float | None
    """CPU seconds of the server process."""
    generator: float | None
    """CPU seconds of the generator process and its living descendants."""


class Sampler(threading.Thread):
    """Samples every ``SAMPLE_INTERVAL`` until stopped; set the pids as they become known."""

    def __init__(self, server_pid: int | None = None) -> None:
        super().__init__(daemon=True)
        self.server_pid = server_pid
        self.generator_pid: int | None = None
        self.samples: list[Sample] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            self.samples.append(
                Sample(
                    time.monotonic(),
                    read_cpu_times(),
                    process_cpu(self.server_pid),
                    tree_cpu(self.generator_pid),
                )
            )
            self._stopping.wait(SAMPLE_INTERVAL)

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)

    def _ends(self, start: float, end: float) -> tuple[Sample, Sample] | None:
        inside = [s for s in self.samples if start <= s.at <= end]
        if len(inside) < 2 or inside[-1].at - inside[0].at < 0.5:
            return None
        return inside[0], inside[-1]

    def core_busy(self, cpu: int, start: float, end: float) -> float | None:
        """The fraction of ``[start, end]`` that ``cpu`` was busy, whoever used it."""
        ends = self._ends(start, end)
        if ends is None or cpu not in ends[0].cores:
            return None
        (busy0, total0), (busy1, total1) = ends[0].cores[cpu], ends[1].cores[cpu]
        return round((busy1 - busy0) / (total1 - total0), 3) if total1 > total0 else None

    def share(self, who: str, start: float, end: float) -> float | None:
        """CPU seconds per second that ``server`` or ``generator`` used in ``[start, end]``."""
        ends = self._ends(start, end)
        if ends is None:
            return None
        first, last = (sample.server if who == "server" else sample.generator for sample in ends)
        if first is None or last is None:
            return None
        return round((last - first) / (ends[1].at - ends[0].at), 3)


def read_cpu_times() -> dict[int, tuple[int, int]]:
    """CPU number → (busy, total) jiffies; idle and iowait are not busy."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        jiffies = [int(v) for v in values[:8]]
        total = sum(jiffies)
        times[int(name[3:])] = (total - jiffies[3] - jiffies[4], total)
    return times


def process_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError, ValueError):
        return None


def tree_cpu(pid: int | None) -> float | None:
    """CPU seconds of a process and every descendant alive now."""
    if pid is None:
        return None
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        used = process_cpu(current)
        if used is None:
            continue
        total += used
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
    return total


def cores_busy(seconds: float) -> dict[int, float]:
    """How busy every CPU is over the next ``seconds``."""
    before = read_cpu_times()
    time.sleep(seconds)
    after = read_cpu_times()
    return {
        cpu: (after[cpu][0] - busy) / max(after[cpu][1] - total, 1)
        for cpu, (busy, total) in before.items()
        if cpu in after
    }


def wait_for_quiet(cpus: tuple[int, ...], threshold: float, max_wait: float) -> bool:
    """Wait until no one else keeps these CPUs busy; False if they never got quiet.

    This machine is shared: another benchmark on the server's or the generator's
    core would be measured as this server's cost, or starve the generator.
    """
    started = time.monotonic()
    told = False
    while True:
        busy = cores_busy(1.0)
        loads = {cpu: busy.get(cpu, 0.0) for cpu in cpus}
        if all(load < threshold for load in loads.values()):
            return True
        waited = time.monotonic() - started
        if waited >= max_wait:
            return False
        if waited > 3 and not told:  # not for the last attempt's own teardown
            shown = ", ".join(f"CPU {cpu} {100 * load:.0f}%" for cpu, load in loads.items())
            print(f"waiting for other work to leave the cores ({shown} busy)", flush=True)
            told = True
