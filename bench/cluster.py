"""Many instances as one: fan-out across instances, and recovery after a kill -9.

    python -m bench.cluster [--subscribers 1000] [--rates 20,40] [--duration 10] [--failover 300]

1. Fan-out: one room, S subscribers spread round-robin over three instances
   (PostgreSQL + Redis), the publisher on the first; then the same with one
   instance on the same PostgreSQL and Redis. Servers, PostgreSQL and Redis are
   pinned to CPU 0 and the generator to CPU 1, so "server CPU per delivery" is
   the cost of the deployment, whatever its number of processes.
2. Failover: N clients connected through nginx to three instances, a publisher
   at 20 messages/s; one instance is killed (SIGKILL) and the time until each of
   its clients has reconnected through nginx, joined with ``since`` and recovered
   every missed message is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.tokens import TokenSource
from loadtest.wsclient import RealtimeClient
from tests.server import SECRET, ServerProcess
from tests.services import NginxServer, PostgresServer, RedisServer

ROOT = Path(__file__).resolve().parent.parent
TWO_CPUS = (os.cpu_count() or 1) > 1


def pin(pid: int, cpu: int) -> None:
    if TWO_CPUS:
        subprocess.run(
            ["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, stdout=subprocess.DEVNULL
        )


def instances(
    workdir: Path, dsn: str, broker: str, count: int, env: dict[str, str] | None = None
) -> list[ServerProcess]:
    started = []
    for index in range(count):
        server = ServerProcess(
            workdir / f"i{index}",
            dsn=dsn,
            broker_url=broker,
            name=f"i{index}",
            env={
                "REALTIME_SERVER_LOG_LEVEL": "warning",
                "REALTIME_SERVER_RATE_LIMIT": "10000",
                "REALTIME_SERVER_RATE_BURST": "10000",
                **(env or {}),
            },
        )
        server.command_prefix = ["taskset", "-c", "0"] if TWO_CPUS else []
        server.start()
        started.append(server)
    return started


def fanout(servers: list[ServerProcess], subscribers: int, rate: str, duration: float) -> Any:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        urls = [arg for server in servers for arg in ("--url", server.ws_url)]
        command = [
            *(["taskset", "-c", "1"] if TWO_CPUS else []),
            sys.executable,
            "-m",
            "loadtest",
            "fanout",
            *urls,
            "--secret",
            SECRET,
            "--subscribers",
            str(subscribers),
            "--rate",
            rate,
            "--duration",
            str(duration),
            "--out",
            out.name,
        ]
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())


def show(label: str, result: dict[str, Any]) -> None:
    latency = result["latency_ms"]
    print(
        f"{label}: {result['deliveries_per_s']:.0f} deliveries/s "
        f"(offered {result['offered_rate']:.0f}/s x {result['subscribers']}), "
        f"delivered {result['delivered_ratio']:.4f}, lost {result['lost']}, "
        f"dup {result['duplicated']}, reordered {result['reordered']}, "
        f"p50 {latency['p50']} ms, p99 {latency['p99']} ms, "
        f"server {result.get('server_cpu_us_per_delivery')} us CPU/delivery",
        flush=True,
    )


# Failover ------------------------------------------------------------------------------


class Watcher:
    """One client through nginx that notes when it lost its instance and recovered."""

    def __init__(self, url: str, tokens: TokenSource, user: str, room: str) -> None:
        self.url, self.tokens, self.user, self.room = url, tokens, user, room
        self.last = 0
        self.epoch: str | None = None
        self.lost_at: float | None = None
        self.recovered_at: float | None = None
        self.client: RealtimeClient | None = None
        self.reconnecting: asyncio.Future[None] | None = None

    async def connect(self) -> None:
        while True:
            try:
                client = await RealtimeClient.connect(self.url, self.tokens.user(self.user))
                token = self.tokens.room(self.user, self.room)
                joined = await client.command(
                    "join", room=self.room, token=token, since=self.last, epoch=self.epoch
                )
                break
            except (OSError, RuntimeError, TimeoutError):
                await asyncio.sleep(0.05)
        self.epoch = joined["epoch"]
        if joined["missed"]:
            self.last = joined["missed"][-1]["seq"]
        if self.lost_at is not None and joined["recovered"]:
            self.recovered_at = time.monotonic()
        client.on_push = self._on_push
        client.connection.closed.add_done_callback(self._on_lost)
        self.client = client

    def _on_push(self, message: dict[str, Any]) -> None:
        if message.get("push") == "message":
            self.last = message["seq"]

    def _on_lost(self, _: object) -> None:
        if self.lost_at is None:
            self.lost_at = time.monotonic()
        self.reconnecting = asyncio.ensure_future(self.connect())


async def failover(servers: list[ServerProcess], nginx: NginxServer, clients: int) -> None:
    tokens = TokenSource(secret=SECRET)
    room = "swap:failover"
    watchers = [Watcher(nginx.ws_url, tokens, f"w{i}", room) for i in range(clients)]
    for start in range(0, clients, 100):
        await asyncio.gather(*(w.connect() for w in watchers[start : start + 100]))
    stop = asyncio.Event()

    async def publish() -> None:
        sender = await RealtimeClient.connect(servers[0].ws_url, tokens.user("pub"))
        await sender.command("join", room=room, token=tokens.room("pub", room))
        while not stop.is_set():
            sender.send(None, "send", room=room, body={"t": time.time_ns()})
            await asyncio.sleep(0.05)
        await sender.close()

    publishing = asyncio.create_task(publish())
    await asyncio.sleep(2)
    killed_at = time.monotonic()
    servers[1].kill()
    deadline = killed_at + 60
    while time.monotonic() < deadline:
        lost = [w for w in watchers if w.lost_at is not None]
        if lost and all(w.recovered_at is not None for w in lost):
            break
        await asyncio.sleep(0.02)
    stop.set()
    await publishing
    lost = [w for w in watchers if w.lost_at is not None]
    times = sorted((w.recovered_at - killed_at) * 1000 for w in lost if w.recovered_at)
    print(
        f"failover: kill -9 of 1 of 3 instances behind nginx; {len(lost)} of {clients} clients "
        f"lost their instance; {len(times)} recovered every missed message; "
        f"time from the kill to recovered: median {statistics.median(times):.0f} ms, "
        f"max {times[-1]:.0f} ms"
        if times
        else "failover: nothing recovered"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rates", default="20,40")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--failover", type=int, default=300, help="clients (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as postgres, RedisServer() as redis:
        for pid in (postgres.pid, redis.pid):
            pin(pid, 0)
        for count in (3, 1):
            for rate in args.rates.split(","):
                dsn = postgres.create_database(f"bench_{count}_{rate}")
                servers = instances(Path(tmp) / f"{count}-{rate}", dsn, redis.url, count)
                try:
                    result = fanout(servers, args.subscribers, rate, args.duration)
                finally:
                    for server in servers:
                        server.kill()
                show(f"{count} instance(s), rate {rate}/s", result)
        if args.failover:
            dsn = postgres.create_database("bench_failover")
            servers = instances(Path(tmp) / "failover", dsn, redis.url, 3)
            try:
                with NginxServer([s.port for s in servers]) as nginx:
                    asyncio.run(failover(servers, nginx, args.failover))
            finally:
                for server in servers:
                    server.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
