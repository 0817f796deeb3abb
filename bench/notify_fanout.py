"""One notification to every follower of a user: 100,000 followers, 10% of them online,
spread over three instances on one PostgreSQL and one Redis.

    python -m bench.notify_fanout [--followers 100000] [--online 10000] [--notifications 3]
                                  [--modes in_app,queued,webhook]

For each mode, three fresh instances and ``python -m loadtest notify`` against them:
the followers are set up over REST (``PUT /users/{f}/following/{actor}``), the online
ones connect round-robin to the three instances, then ``--notifications``
notifications go, one at a time, to ``followers_of`` the actor. Reported per
notification: the REST answer (202: stored for every follower, in batches of 5,000,
and published), and the time until the last online follower had its push (the
notification carries its send time; each follower measures on arrival).

- ``in_app``: no offline transport configured: store and push only.
- ``queued``: the signed webhook on, so every follower also gets a delivery job,
  written in the same transactions, but ``outbox.enabled`` off: what queueing costs.
- ``webhook``: the same with the outboxes on: they start delivering the offline ones
  (to a receiver in this process) while the rest is stored, on the same CPU, and the
  time until all were delivered is reported too (the online followers disconnect
  when they have their pushes, so their jobs go as well).

Servers, PostgreSQL and Redis run on CPU 0, the load generator and the receiver on
CPU 1 (when there are two). ``uptime``'s load is printed with each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cluster import TWO_CPUS, instances, pin
from tests.e2e.outbox_support import Services
from tests.server import SECRET, SERVICE_KEY, ServerProcess
from tests.services import PostgresServer, RedisServer

ROOT = Path(__file__).resolve().parent.parent
DRAIN = 1800.0
QUIET = 3.0


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()


def notify(servers: list[ServerProcess], args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        urls = [arg for server in servers for arg in ("--url", server.ws_url)]
        command = [
            *(["taskset", "-c", "1"] if TWO_CPUS else []),
            sys.executable,
            "-m",
            "loadtest",
            "notify",
            *urls,
            "--secret",
            SECRET,
            "--service-key",
            SERVICE_KEY,
            "--followers",
            str(args.followers),
            "--online",
            str(args.online),
            "--notifications",
            str(args.notifications),
            "--drain",
            "120",
            "--quiet",
            "--out",
            out.name,
        ]
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        report: dict[str, Any] = json.loads(Path(out.name).read_text())
        return report


def show(mode: str, report: dict[str, Any]) -> None:
    request, online = report["request_latency_ms"], report["online_latency_ms"]
    print(
        f"{mode}: {report['followers']} followers ({report['online']} online over 3 "
        f"instances), {report['accepted']} notifications: stored for {report['recipients']} "
        f"recipients at {report['recipients_per_s']:.0f}/s; 202 after p50 {request['p50']:.0f} "
        f"ms, max {request['max']:.0f} ms; online push p50 {online['p50']:.0f} ms, p99 "
        f"{online['p99']:.0f} ms, last {online['max']:.0f} ms; lost "
        f"{report['online_lost']}, duplicated {report['online_duplicated']} "
        f"(follows set up in {report['follow_seconds']:.0f} s) | {load()}",
        flush=True,
    )


def offline_deliveries(services: Services, expected: int) -> None:
    """Wait for the offline followers' webhooks (and then for the trickle to stop: an
    online follower that left before its job was looked at gets one too)."""
    receiver = services.receiver
    deadline = time.monotonic() + DRAIN
    while len(receiver.acknowledged) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    while time.monotonic() - (receiver.last_at or 0.0) < QUIET and time.monotonic() < deadline:
        time.sleep(0.1)
    got = len(receiver.acknowledged)
    first, last = receiver.first_at or 0.0, receiver.last_at or 0.0
    seconds = last - first
    repeated = sum(1 for n in receiver.requests.values() if n > 1)
    print(
        f"webhook: {got} deliveries (offline followers: {expected}) in {seconds:.1f} s from "
        f"the first to the last, {got / seconds if seconds > 0 else 0:.0f}/s over three "
        f"outboxes; sent twice: {repeated} | {load()}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--followers", type=int, default=100_000)
    parser.add_argument("--online", type=int, default=10_000)
    parser.add_argument("--notifications", type=int, default=3)
    parser.add_argument("--modes", default="in_app,queued,webhook")
    args = parser.parse_args()
    if TWO_CPUS:
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as postgres, RedisServer() as redis:
        for pid in (postgres.pid, redis.pid):
            pin(pid, 0)
        for mode in args.modes.split(","):
            services = Services() if mode in ("queued", "webhook") else None
            env = {"REALTIME_SERVER_LOG_LEVEL": "warning"}
            if services is not None:
                env |= {
                    "REALTIME_WEBHOOK_URL": services.receiver.url,
                    "REALTIME_WEBHOOK_SECRET": services.env()["REALTIME_WEBHOOK_SECRET"],
                    "REALTIME_OUTBOX_ENABLED": "true" if mode == "webhook" else "false",
                }
            dsn = postgres.create_database(f"notify_{mode}")
            servers = instances(Path(tmp) / mode, dsn, redis.url, 3, env)
            try:
                report = notify(servers, args)
                show(mode, report)
                if mode == "webhook" and services is not None:
                    offline = args.followers - args.online
                    offline_deliveries(services, offline * report["accepted"])
            finally:
                for server in servers:
                    server.kill()
                if services is not None:
                    services.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
