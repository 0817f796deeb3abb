"""realtime side by side with python-socketio, Node Socket.IO and the bare limit, in one run.

    python -m bench.compare [--servers realtime,realtime-redis,socketio,socketio-redis,bare]
                            [--subscribers 100,1000,5000] [--idle 19000] [--quick]
                            [--out compare.json] [--markdown compare.md]
    python -m bench.compare --socketio [--out sio.json] [--markdown sio.md]

``--socketio`` is issue 11's comparison: realtime over its ``/socket.io/``
(``realtime-socketio``), Node Socket.IO 4 (``socketio-node``) and python-socketio,
all spoken to by the generator's Socket.IO mode, rooms of 1,000 and 5,000.

For every S and every server: the highest fan-out rate (one room, S subscribers,
100-byte bodies) that passes (≥ 99.9% delivered, p99 < 250 ms), found by a
bounded ladder of attempts, each against a freshly started server (a rate that
fails is tried once more before it counts as failed, for every server); then the
server memory per idle joined connection. Servers run pinned to CPU 0, the load
generator (``python -m loadtest``) to CPU 1. The Redis that ``realtime-redis`` and
``socketio-redis`` share is pinned to CPU 0 too: it is part of that deployment.
The python-socketio servers need ``pip install -r requirements-bench.txt``, the
Node one Node.js >= 20 (its packages come from npm on first use), realtime's
Socket.IO column a server with ``/socket.io/``; a contender that cannot run is
left out with a message. Every attempt records the load average (``uptime``'s) at
its start and end: the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.attempts import GeneratorRun, run_generator
from bench.contenders import (
    GENERATOR_CPU,
    NODE_PEER,
    ROOT,
    SERVER_CPU,
    TWO_CPUS,
    Contender,
    contenders,
    pin_pid,
)
from bench.ladder import Ladder
from bench.report import markdown
from bench.results import Idle, Point, judge, load_average
from bench.sampling import wait_for_quiet
from tests.server import SECRET
from tests.services import RedisServer

DEFAULT_SERVERS = "realtime,realtime-redis,socketio,socketio-redis,bare"
ALL_SERVERS = DEFAULT_SERVERS + ",realtime-socketio,socketio-node"
SOCKETIO_SERVERS = "realtime-socketio,socketio-node,socketio"
SOCKETIO_SUBSCRIBERS = "1000,5000"
PAYLOAD = 100
TRIALS = 2
"""Tries of a rate before it counts as failed, for every server alike: on a shared
machine one stall (another process, a slow fsync) can fail a short attempt."""
QUIET = 0.15
"""Both cores below this busy fraction before an attempt: nobody else is measuring."""
FILES_PER_GENERATOR = 9000
"""Idle connections per generator process: well under the 20,000 open files per process."""


@dataclass(frozen=True)
class Plan:
    servers: list[str]
    subscribers: list[int]
    idle: int
    duration: float
    ladder: Callable[[int], Ladder]
    quiet_wait: float


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Plan]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--servers", help=f"comma-separated, of {ALL_SERVERS} (default {DEFAULT_SERVERS})"
    )
    parser.add_argument("--subscribers", help="S values, comma-separated (default 100,1000,5000)")
    parser.add_argument(
        "--socketio",
        action="store_true",
        help=f"the Socket.IO comparison: --servers {SOCKETIO_SERVERS} "
        f"--subscribers {SOCKETIO_SUBSCRIBERS} unless given",
    )
    parser.add_argument(
        "--idle", type=int, help="idle connections (default 19000; 2000 with --quick; 0: skip)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: short, small ladder")
    parser.add_argument("--duration", type=float, help="publishing seconds per attempt (5; 3)")
    parser.add_argument("--start", type=float, default=25_000, help="first rate, deliveries/s")
    parser.add_argument("--attempts", type=int, help="attempts per (server, S) (7; 3 with --quick)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="seconds to wait before an attempt for other work to leave both cores",
    )
    parser.add_argument("--out", type=Path, help="write every attempt and the results as JSON")
    parser.add_argument("--markdown", type=Path, help="write the Markdown tables here")
    args = parser.parse_args(argv)
    attempts = args.attempts or (3 if args.quick else 7)

    def ladder(subscribers: int) -> Ladder:
        # Below one message a second the figure says nothing about the rate any more.
        return Ladder(start=args.start, floor=max(float(subscribers), 2000.0), attempts=attempts)

    servers = args.servers or (SOCKETIO_SERVERS if args.socketio else DEFAULT_SERVERS)
    subscribers = args.subscribers or (SOCKETIO_SUBSCRIBERS if args.socketio else "100,1000,5000")
    plan = Plan(
        servers=[s.strip() for s in servers.split(",") if s.strip()],
        subscribers=[int(s) for s in subscribers.split(",") if s.strip()],
        idle=args.idle if args.idle is not None else (2000 if args.quick else 19000),
        duration=args.duration or (3.0 if args.quick else 5.0),
        ladder=ladder,
        quiet_wait=args.quiet_wait,
    )
    return args, plan


def main(argv: list[str] | None = None) -> int:
    args, plan = parse(argv)
    if not TWO_CPUS:
        print("one CPU only: server and generator share it; the figures mean little", flush=True)
    points: list[Point] = []
    idles: list[Idle] = []
    interrupted = False
    started = time.time()
    load_at_start = load_average()
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="compare-") as tmp:
        registry = contenders(lazy_redis(stack))
        unknown = [s for s in plan.servers if s not in registry]
        if unknown:
            raise SystemExit(f"unknown servers {unknown}; known: {ALL_SERVERS}")
        chosen = [registry[s] for s in plan.servers if available(registry[s])]
        try:
            for subscribers in plan.subscribers:
                for contender in chosen:
                    point = Point(contender.name, subscribers)
                    points.append(point)
                    search(contender, point, plan, Path(tmp))
            if plan.idle:
                for contender in chosen:
                    idles.append(idle(contender, plan.idle, plan, Path(tmp)))
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted: servers stopped; writing what was measured", flush=True)
    measured = {p.server for p in points} | {i.server for i in idles}
    servers = [name for name in plan.servers if name in measured]
    command = "python -m bench.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    setting = environment(plan, load_at_start)
    text = markdown(command.strip(), setting, servers, plan.subscribers, points, idles)
    print("\n" + text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.out:
        result = {
            "command": command.strip(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "seconds": round(time.time() - started),
            "interrupted": interrupted,
            "environment": setting,
            "load_average": {"start": load_at_start, "end": load_average()},
            "fanout": [p.to_json() for p in points],
            "idle": [i.to_json() for i in idles],
        }
        args.out.write_text(json.dumps(result, indent=2))
    return 130 if interrupted else 0


def lazy_redis(stack: contextlib.ExitStack) -> Callable[[], str]:
    """A Redis started (and pinned to the server core) the first time a contender asks."""
    holder: list[RedisServer] = []

    def url() -> str:
        if not holder:
            redis = stack.enter_context(RedisServer())
            pin_pid(redis.pid, 0)
            holder.append(redis)
        return holder[0].url

    return url


def available(contender: Contender) -> bool:
    reason = contender.unavailable()
    if reason is None and contender.protocol != "realtime" and not generator_speaks("socketio"):
        reason = "`python -m loadtest` has no --protocol socketio"
    if reason is not None:
        print(f"{contender.name}: skipped, {reason}", flush=True)
        return False
    return True


def generator_speaks(protocol: str) -> bool:
    """Whether the load generator has ``--protocol`` with this choice (it is being added)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "loadtest", "fanout", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    return "--protocol" in help_text and protocol in help_text


def measure(contender: Contender, workdir: Path, args: list[str], timeout: float) -> GeneratorRun:
    """Start a fresh server, run the generator against it, stop the server."""
    try:
        running = contender.start(workdir)
    except (RuntimeError, OSError) as error:  # OSError: no free port on a busy loopback
        return GeneratorRun(None, f"server did not start: {error}"[:1500])
    try:
        scenario, *rest = args
        command = [scenario, "--url", running.ws_url, "--secret", SECRET]
        command += ["--server-pid", str(running.pid), *rest]
        if contender.protocol != "realtime":
            command += ["--protocol", contender.protocol]
        return run_generator(command, running.pid, timeout)
    finally:
        running.stop()


def search(contender: Contender, point: Point, plan: Plan, tmp: Path) -> None:
    """Climb the ladder for one (server, S), a fresh server per attempt."""
    ladder = plan.ladder(point.subscribers)
    history: list[tuple[float, bool]] = []
    while (offered := ladder.next_rate(history)) is not None:
        rate = offered / point.subscribers
        workdir = tmp / f"{contender.name}-{point.subscribers}-{len(history)}"
        # Connecting S subscribers dominates at large S; publishing and drain are bounded.
        timeout = 60 + plan.duration + point.subscribers / 200
        args = ["fanout", "--subscribers", str(point.subscribers), "--rate", f"{rate:.3f}"]
        args += ["--duration", str(plan.duration), "--payload", str(PAYLOAD)]
        # One publisher for every server: the same load shape (the servers started
        # here lift realtime's per-connection rate limit).
        args += ["--publishers", "1"]
        passed = False
        for trial in range(TRIALS):
            quiet = wait_for_quiet((SERVER_CPU, GENERATOR_CPU), QUIET, plan.quiet_wait)
            load_before = load_average()
            run = measure(contender, workdir / str(trial), args, timeout)
            attempt = judge(contender.name, point.subscribers, offered, run, quiet)
            attempt.load_before, attempt.load_after = load_before, load_average()
            point.attempts.append(attempt)
            passed = attempt.passed
            print(
                f"{contender.name:>15} S={point.subscribers:<5} offered {offered:>9,.0f}/s: "
                f"{attempt.deliveries_per_s or 0:>9,.0f}/s p99 {attempt.p99_ms} ms, "
                f"{attempt.server_us_per_delivery} µs/delivery; server {attempt.server_share} "
                f"of core {attempt.server_core}, generator {attempt.generator_share} of core "
                f"{attempt.generator_core} "
                f"({attempt.seconds:.0f} s; load {attempt.load_text}) → {attempt.reason}",
                flush=True,
            )
            if passed or not run.published:
                break
        history.append((offered, passed))
        if run.report is None and not run.published:
            # It never got to publishing (no start, or connecting S subscribers did
            # not finish): another rate will not change that.
            break


def idle(contender: Contender, connections: int, plan: Plan, tmp: Path) -> Idle:
    wait_for_quiet((SERVER_CPU, GENERATOR_CPU), QUIET, plan.quiet_wait)
    procs = max(1, math.ceil(connections / FILES_PER_GENERATOR))
    args = ["idle", "--connections", str(connections), "--procs", str(procs)]
    load_before = load_average()
    run = measure(contender, tmp / f"{contender.name}-idle", args, 120 + connections / 50)
    result = Idle(contender.name, connections, run.report, run.error, load_before, load_average())
    figure = result.bytes_per_connection
    print(
        f"{contender.name:>15} idle {connections}: "
        + (f"{figure / 1024:.1f} KB per connection" if figure is not None else str(run.error))
        + ("" if result.complete else " (not all connected)")
        + f" (load {result.load_text})",
        flush=True,
    )
    return result


def environment(plan: Plan, load_at_start: list[float]) -> str:
    def package(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} (not installed)"

    packages = ", ".join(
        package(n) for n in ("aiohttp", "uvloop", "websockets", "orjson", "python-socketio")
    )
    if any(s.startswith("socketio-node") for s in plan.servers):
        packages += f", {node_versions()}"
    load = ", ".join(f"{value:.2f}" for value in load_at_start)
    pinning = "server on CPU 0, generator on CPU 1" if TWO_CPUS else "one CPU, not pinned"
    return (
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()} with {pinning}; "
        f"Python {platform.python_version()}, {packages}. Fan-out: one room, "
        f"{PAYLOAD}-byte bodies, {plan.duration:g} s of publishing per attempt, a fresh server "
        f"for every attempt. Load average at the start (1, 5, 15 min): {load}."
    )


def node_versions() -> str:
    """Node's version and the Socket.IO the peer's lock file pins."""
    try:
        node = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except OSError:
        node = "(not installed)"
    lock = json.loads((NODE_PEER / "package-lock.json").read_text())
    pinned = lock["packages"].get("node_modules/socket.io", {}).get("version", "?")
    return f"Node.js {node or '?'}, socket.io {pinned}"


if __name__ == "__main__":
    raise SystemExit(main())
