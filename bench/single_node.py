"""One instance on the embedded default: fan-out to one room, and idle memory.

    python -m bench.single_node [--subscribers 1000] [--rates 20,40,60] [--idle 5000]

Starts a server pinned to CPU 0 and the load generator on CPU 1 (when the machine
has two), runs ``loadtest fanout`` at each offered rate and ``loadtest idle``, and
prints deliveries/s, latency, server CPU µs per delivery and memory per connection.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.server import SECRET, ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if (os.cpu_count() or 1) > 1 else []


def loadtest(server: ServerProcess, *args: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [
            *pinned(1),
            sys.executable,
            "-m",
            "loadtest",
            *args,
            "--url",
            server.ws_url,
            "--secret",
            SECRET,
            "--out",
            out.name,
        ]
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        result: dict[str, Any] = json.loads(Path(out.name).read_text())
        return result


def start_server(workdir: Path) -> ServerProcess:
    server = ServerProcess(workdir, env={"REALTIME_SERVER_LOG_LEVEL": "warning"})
    server.command_prefix = pinned(0)
    server.start()
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rates", default="20,40,60", help="offered messages/s, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--idle", type=int, default=5000, help="idle connections (0: skip)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in args.rates.split(","):
            server = start_server(Path(tmp) / f"fanout{rate}")
            try:
                result = loadtest(
                    server,
                    "fanout",
                    "--subscribers",
                    str(args.subscribers),
                    "--rate",
                    rate,
                    "--duration",
                    str(args.duration),
                )
            finally:
                server.stop()
            rows.append(result)
            print(
                f"fanout S={result['subscribers']} rate={rate}/s: "
                f"{result['deliveries_per_s']:.0f} deliveries/s, "
                f"delivered {result['delivered_ratio']:.4f}, "
                f"p50 {result['latency_ms']['p50']} ms p99 {result['latency_ms']['p99']} ms, "
                f"server {result.get('server_cpu_us_per_delivery')} µs CPU/delivery, "
                f"generator CPU {result['generator_cpu_s']} s",
                flush=True,
            )
        if args.idle:
            server = start_server(Path(tmp) / "idle")
            try:
                idle = loadtest(server, "idle", "--connections", str(args.idle))
            finally:
                server.stop()
            print(
                f"idle: {idle['connections']} joined connections, "
                f"{idle.get('bytes_per_connection', 0) / 1024:.1f} KB per connection "
                f"(RSS {idle.get('server_rss_before_mb')} -> {idle.get('server_rss_after_mb')} MB)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
