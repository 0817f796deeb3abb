"""One run of the load generator against one server, and what the two cores did meanwhile.

The generator (``python -m loadtest``) runs pinned to the generator core in a
process group of its own, so a timeout or Ctrl-C kills it and every subscriber
process it spawned, and nothing else. While it runs, ``Sampler`` reads the cores'
and the processes' CPU time; the fan-out's publishing window is taken from the
generator's progress lines (``\\r 2.0s sent …``), so the figures cover the
publishing only, not the connection storm before it. That is how a generator
that cannot keep up shows itself, rather than passing its limit off as the
server's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.contenders import GENERATOR_CPU, ROOT, SERVER_CPU, pinned
from bench.sampling import Sampler

PROGRESS = re.compile(rb"^\s*(\d+(?:\.\d+)?)s sent ")
TAIL = 1500


class ProgressWatch(threading.Thread):
    """Reads the generator's stdout; notes when publishing started, from its progress lines."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.publish_started: float | None = None
        self.tail = b""
        """The last output (stdout and stderr), for an error message."""

    def run(self) -> None:
        pending = b""
        for chunk in iter(lambda: os.read(self.stream.fileno(), 65536), b""):
            now = time.monotonic()
            self.tail = (self.tail + chunk)[-TAIL:]
            lines = re.split(rb"[\r\n]", pending + chunk)
            pending = lines[-1]
            # A progress line starts with \r and is not ended until the next one, a
            # second later: read the unfinished last line too. A line cut short
            # cannot match (the pattern needs the "s sent " after the number).
            for line in lines:
                match = PROGRESS.match(line)
                if match:
                    started = now - float(match.group(1))
                    if self.publish_started is None or started < self.publish_started:
                        self.publish_started = started


@dataclass
class GeneratorRun:
    """The generator's JSON report (None if it failed) and what the CPUs did meanwhile.

    ``*_core``: how busy that core was (any process); ``*_share``: CPU seconds per
    second of the server process / the generator's processes. Over the publishing
    window; None when it is not known.
    """

    report: dict[str, Any] | None
    error: str | None = None
    seconds: float = 0.0
    published: bool = False
    """Publishing started (a progress line was seen): the run got past connecting."""
    server_core: float | None = None
    server_share: float | None = None
    generator_core: float | None = None
    generator_share: float | None = None


def run_generator(args: list[str], server_pid: int, timeout: float) -> GeneratorRun:
    """``python -m loadtest ARGS --out …`` pinned to the generator core, bounded by ``timeout``."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp) / "out.json"
        command = [*pinned(GENERATOR_CPU), sys.executable, "-m", "loadtest", *args]
        command += ["--out", str(out)]
        sampler = Sampler(server_pid)
        sampler.start()
        started = time.monotonic()
        # One stream: the progress line went to stdout in earlier generators, stderr now.
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sampler.generator_pid = process.pid
        assert process.stdout is not None
        watch = ProgressWatch(process.stdout)
        watch.start()
        error = None
        try:
            if not exited(process.pid, timeout):
                error = f"loadtest did not finish in {timeout:.0f}s"
        finally:
            kill_group(process)
            sampler.stop()
            watch.join(5)
            process.stdout.close()
        if error is None and process.returncode != 0:
            error = f"loadtest exited {process.returncode}"
        if error is not None:
            error += ": " + watch.tail.decode(errors="replace").strip()
        run = GeneratorRun(None, error, seconds=round(time.monotonic() - started, 1))
        run.published = watch.publish_started is not None
        if error is None:
            run.report = json.loads(out.read_text())
            window_cores(run, sampler, watch.publish_started)
        return run


def window_cores(run: GeneratorRun, sampler: Sampler, publish_started: float | None) -> None:
    """The CPU figures over the publishing window, when the window is known."""
    assert run.report is not None
    # publish_seconds in newer generators (duration_s runs to the last delivery there).
    duration = run.report.get("publish_seconds") or run.report.get("duration_s")
    if publish_started is None or not duration:
        return
    end = publish_started + float(duration)
    run.server_core = sampler.core_busy(SERVER_CPU, publish_started, end)
    run.server_share = sampler.share("server", publish_started, end)
    run.generator_core = sampler.core_busy(GENERATOR_CPU, publish_started, end)
    run.generator_share = sampler.share("generator", publish_started, end)


def exited(pid: int, timeout: float) -> bool:
    """Wait for the child to exit, without reaping it (see ``kill_group``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return True
        time.sleep(0.05)
    return False


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left of the generator's process group, then reap the leader.

    The leader is reaped only after the kill: until then its pid, and so its group
    id, cannot be reused, and the signal reaches the generator's processes only.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)
