"""A reconnect storm: kill -9 one of three instances behind nginx, with and without pacing.

    python -m bench.storm [--clients 10000] [--modes paced,unpaced] [--publish-rate 2]

For each mode: three instances on one PostgreSQL and one Redis, behind nginx
(``deploy/nginx.conf``), and ``python -m loadtest connect`` with ``--clients``
clients through nginx, all in one room. A publisher on the first instance sends
``--publish-rate`` messages a second; the second instance is killed (SIGKILL)
and its clients reconnect through nginx to the other two, rejoining with
``since``. Reported: seconds from the kill until every dropped client had
rejoined and recovered, the failed handshakes by kind (503s, timeouts, resets),
and whether every client ended with every seq exactly once.

- ``paced``: the instances admit at most ``--handshake-rate`` new WebSockets a
  second each (503 + Retry-After past it) and the clients follow the advice and
  Retry-After, with full-jitter backoff for a drop without advice.
- ``unpaced``: no admission limit, and the clients reconnect at once and retry
  every 0.5 s (±50%).

The initial connect is the same in both modes, ``--concurrency`` attempts at a time
per generator process; the rejoins after the kill are what is compared.

Servers, PostgreSQL and Redis run on CPU 0, the generator on CPU 1 (when there
are two); nginx is not pinned. Everything listens on 127.0.0.1. Each phase is
bounded by ``--timeout``. ``--cpu-quota 0.3`` holds the three instances together to
0.3 of a CPU (a cgroup v1 CPU quota, as root): a machine loaded by others, made
the same at every run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cluster import TWO_CPUS, instances, pin
from tests.server import SECRET, ServerProcess
from tests.services import NginxServer, PostgresServer, RedisServer

ROOT = Path(__file__).resolve().parent.parent
MODES = ("paced", "unpaced")
CPU_CGROUPS = Path("/sys/fs/cgroup/cpu")


def limit_cpu(pids: list[int], quota: float, name: str) -> Path:
    """Hold ``pids`` together to ``quota`` of one CPU; the cgroup, to remove after."""
    if not (CPU_CGROUPS / "cgroup.procs").exists():
        raise SystemExit(f"--cpu-quota needs the cgroup v1 cpu controller at {CPU_CGROUPS}")
    group = CPU_CGROUPS / name
    group.mkdir(exist_ok=True)
    period = int((group / "cpu.cfs_period_us").read_text())
    (group / "cpu.cfs_quota_us").write_text(str(int(quota * period)))
    for pid in pids:
        (group / "cgroup.procs").write_text(str(pid))
    return group


def storm(
    servers: list[ServerProcess], nginx: NginxServer, args: argparse.Namespace, paced: bool
) -> dict[str, Any]:
    victim = servers[1].process
    assert victim is not None
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [
            *(["taskset", "-c", "1"] if TWO_CPUS else []),
            sys.executable,
            "-m",
            "loadtest",
            "connect",
            "--url",
            nginx.ws_url,
            "--publish-url",
            servers[0].ws_url,
            "--secret",
            SECRET,
            "--clients",
            str(args.clients),
            "--restart-command",
            f"kill -9 {victim.pid}",
            "--restart-timeout",
            "10",
            "--timeout",
            str(args.timeout),
            "--publish-rate",
            str(args.publish_rate),
            "--procs",
            str(args.procs),
            "--connect-timeout",
            str(args.connect_timeout),
            "--concurrency",
            str(args.concurrency),
            "--server-pid",
            "0",
            "--quiet",
            "--out",
            out.name,
            *([] if paced else ["--no-pacing"]),
        ]
        started = time.monotonic()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        report: dict[str, Any] = json.loads(Path(out.name).read_text())
        report["wall_seconds"] = round(time.monotonic() - started, 1)
        report["command"] = " ".join(command)
        return report


def show(mode: str, report: dict[str, Any]) -> None:
    first, restart = report["connect"], report["restart"]
    messages = restart.get("messages", {})
    print(
        f"{mode}: {report['clients']} clients; initial connect: all joined in "
        f"{first.get('all_joined_s')} s, {first['failed_attempts']} failed attempts "
        f"{first['failures']}.\n"
        f"  kill -9 of 1 of 3: {restart.get('dropped')} dropped, {restart['joined']} rejoined, "
        f"all rejoined and recovered {restart.get('all_joined_s')} s after the kill "
        f"(per client p50 {restart['time_to_join_ms'].get('p50')} ms, "
        f"p99 {restart['time_to_join_ms'].get('p99')} ms); "
        f"{restart['failed_attempts']} failed handshakes/joins {restart['failures']}, "
        f"{restart['attempts']} attempts, {restart['unrecovered']} joins not recovered.\n"
        f"  messages: {messages.get('published')} published, lost {messages.get('lost')} "
        f"({messages.get('lost_by_connected_clients')} by clients connected at the end), "
        f"duplicated {messages.get('duplicated')}, reordered {messages.get('reordered')}, "
        f"clients behind at the end {messages.get('clients_behind')}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--modes", default=",".join(MODES), help="paced, unpaced or both")
    parser.add_argument("--publish-rate", type=float, default=2.0, help="messages/s")
    parser.add_argument(
        "--handshake-rate", type=float, default=20.0, help="paced: server.max_handshake_rate"
    )
    parser.add_argument(
        "--reconnect-rate", type=float, default=300.0, help="server.reconnect_rate (advice)"
    )
    parser.add_argument(
        "--max-opening",
        type=int,
        default=256,
        help="server.max_opening in both modes (0: no limit, as before it existed)",
    )
    parser.add_argument(
        "--max-lag",
        type=float,
        default=2.0,
        help="server.max_lag in both modes (0: never refuse for it, as before it existed)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per phase")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds")
    parser.add_argument("--procs", type=int, default=1, help="generator processes")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=50,
        help="initial connect: attempts in flight per generator process (the rejoins after "
        "the kill are not limited)",
    )
    parser.add_argument(
        "--cpu-quota", type=float, default=0.0, help="CPUs the three instances share (0: no limit)"
    )
    parser.add_argument("--out", type=Path, help="write every report here as JSON")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: some of {', '.join(MODES)}")
    reports: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as postgres, RedisServer() as redis:
        for pid in (postgres.pid, redis.pid):
            pin(pid, 0)
        for mode in modes:
            paced = mode == "paced"
            dsn = postgres.create_database(f"storm_{mode}")
            env = {
                "REALTIME_SERVER_MAX_HANDSHAKE_RATE": str(args.handshake_rate if paced else 0),
                "REALTIME_SERVER_RECONNECT_RATE": str(args.reconnect_rate),
                "REALTIME_SERVER_MAX_OPENING": str(args.max_opening),
                "REALTIME_SERVER_MAX_LAG": str(args.max_lag),
                # Rejoins a minute late still get everything in the join reply.
                "REALTIME_DELIVERY_RECOVERY_LIMIT": "10000",
            }
            servers = instances(Path(tmp) / mode, dsn, redis.url, 3, env)
            group = None
            try:
                if args.cpu_quota > 0:
                    pids = [s.process.pid for s in servers if s.process is not None]
                    group = limit_cpu(pids, args.cpu_quota, f"bench-storm-{mode}")
                with NginxServer([s.port for s in servers]) as nginx:
                    reports[mode] = storm(servers, nginx, args, paced)
            finally:
                for server in servers:
                    server.kill()
                if group is not None:
                    group.rmdir()  # empty once its processes are gone
            show(mode, reports[mode])
    if args.out:
        args.out.write_text(json.dumps(reports, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
