"""The persistence path: ``loadtest chat`` against one instance on PostgreSQL.

    python -m bench.chat [--rooms 1000] [--rates 2.5,5,7.5] [--duration 10]

P swap rooms with two members each, every member sending at r messages/s, so
2·P·r sends/s are offered; each is acknowledged only once stored in PostgreSQL.
The server is pinned to CPU 0 and the generator to CPU 1; PostgreSQL (a
throwaway cluster that this script starts, with its default durable commits)
is left to the scheduler, and its CPU is reported beside the server's. A fresh
server and database for every rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.attempts import run_generator
from bench.contenders import REALTIME_ENV, SERVER_CPU, pinned
from bench.sampling import tree_cpu
from tests.server import SECRET, ServerProcess
from tests.services import PostgresServer


def attempt(postgres: PostgresServer, workdir: Path, args: argparse.Namespace, rate: float) -> Any:
    dsn = postgres.create_database(f"chat_{str(rate).replace('.', '_')}")
    server = ServerProcess(workdir, dsn=dsn, env=REALTIME_ENV)
    server.command_prefix = pinned(SERVER_CPU)
    server.start()
    try:
        assert server.process is not None
        postgres_before = tree_cpu(postgres.pid) or 0.0
        command = ["chat", "--url", server.ws_url, "--secret", SECRET]
        command += ["--rooms", str(args.rooms), "--rate", str(rate)]
        command += ["--duration", str(args.duration), "--server-pid", str(server.process.pid)]
        run = run_generator(command, server.process.pid, timeout=300 + args.duration)
        postgres_seconds = (tree_cpu(postgres.pid) or 0.0) - postgres_before
    finally:
        server.kill()
    if run.report is None:
        return {"rate": rate, "error": run.error}
    report = run.report
    acked = report["acknowledged"] or 1
    return {
        "offered_per_s": report["offered_rate"],
        "acked_per_s": report["acked_per_s"],
        "ack_ms": report["ack_latency_ms"],
        "delivery_ms": report["delivery_latency_ms"],
        "errors": report.get("errors", {}),
        "lost": report["lost"],
        "duplicated": report["duplicated"],
        "reordered": report["reordered"],
        "server_us_per_ack": report["server"]["us_per_ack"],
        "server_share": run.server_share,
        "postgres_us_per_ack": round(postgres_seconds * 1e6 / acked, 1),
        "generator_share": run.generator_share,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chat", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--rates", default="2.5,5,7.5", help="sends/s of each member")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = []
    postgres = PostgresServer()
    postgres.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
            for rate in (float(r) for r in args.rates.split(",")):
                result = attempt(postgres, Path(tmp) / str(rate), args, rate)
                results.append(result)
                print(json.dumps(result), flush=True)
    finally:
        postgres.stop()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
