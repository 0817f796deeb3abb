"""Outbox throughput: delivery jobs per second, webhooks to a local receiver and email
to a local SMTP server.

    python -m bench.outbox [--jobs 20000] [--email-jobs 5000] [--stores postgres,sqlite]
                           [--concurrency 8,32]

For each store and concurrency: one instance with the outbox off queues the jobs
(``POST /api/v1/notifications`` to 10,000 users a call; for email, each user has
an address in their preferences and push is off), and stops. A second instance on
the same database, with the outbox on, then delivers them: to the webhook receiver
of ``tests/e2e/outbox_support.py`` (which checks every signature) or to the aiosmtpd
server of ``tests/outbound/smtp_server.py``. Reported: jobs over the time from the
first delivery received to the last, and that each job arrived once.

The server and PostgreSQL run on CPU 0, the receivers (this process) on CPU 1 when
there are two. ``uptime``'s load is printed with each figure: the machine may be
shared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.cluster import TWO_CPUS, pin
from tests.e2e.outbox_support import Services
from tests.server import Http, ServerProcess
from tests.services import PostgresServer

BATCH = 10_000
DEADLINE = 1800.0


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()


async def queue_jobs(server: ServerProcess, users: list[str], email: bool) -> None:
    async with Http(server) as http:
        if email:
            prefs = {"types": {"user_followed": {"push": False}}}
            for user in users:
                doc = {**prefs, "email": f"{user}@example.com"}
                status, reply = await http.call("PUT", f"/api/v1/users/{user}/preferences", doc)
                assert status == 200, reply
        for start in range(0, len(users), BATCH):
            body = {"to": users[start : start + BATCH], "type": "user_followed", "actor": "bob"}
            status, reply = await http.call("POST", "/api/v1/notifications", body)
            assert status == 202, reply


def server_for(
    workdir: Path, dsn: str, services: Services, transport: str, enabled: bool, concurrency: int
) -> ServerProcess:
    env = services.env(
        REALTIME_OUTBOX_ENABLED="true" if enabled else "false",
        REALTIME_OUTBOX_CONCURRENCY=str(concurrency),
        REALTIME_SERVER_LOG_LEVEL="warning",
    )
    # One transport on: the other's jobs are not queued at all.
    env.pop("REALTIME_EMAIL_SMTP_HOST" if transport == "webhook" else "REALTIME_WEBHOOK_URL")
    if transport == "email":
        env.pop("REALTIME_WEBHOOK_SECRET")
    server = ServerProcess(workdir, dsn=dsn, env=env, name="queue" if not enabled else "work")
    server.command_prefix = ["taskset", "-c", "0"] if TWO_CPUS else []
    return server


def wait_for(count: Callable[[], int], total: int) -> tuple[float, float]:
    """Poll until ``count()`` reaches ``total``; (first seen, done) in monotonic time."""
    first: float | None = None
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        seen = count()
        now = time.monotonic()
        if seen and first is None:
            first = now
        if seen >= total:
            assert first is not None
            return first, now
        time.sleep(0.005)
    raise SystemExit(f"only {count()} of {total} delivered within {DEADLINE}s")


def run(tmp: Path, dsn: str, transport: str, jobs: int, concurrency: int, label: str) -> None:
    services = Services()
    try:
        users = [f"{transport[0]}{concurrency}-{label}-{i}" for i in range(jobs)]
        queuer = server_for(tmp / f"q-{transport}", dsn, services, transport, False, concurrency)
        queuer.start()
        try:
            asyncio.run(queue_jobs(queuer, users, transport == "email"))
        finally:
            queuer.stop()
        worker = server_for(tmp / f"w-{transport}", dsn, services, transport, True, concurrency)
        worker.start()
        try:
            if transport == "webhook":
                receiver = services.receiver
                first, _ = wait_for(lambda: len(receiver.acknowledged), jobs)
                assert receiver.first_at is not None and receiver.last_at is not None
                first, last = receiver.first_at, receiver.last_at
                repeated = sum(1 for n in receiver.requests.values() if n > 1)
                assert not receiver.errors, receiver.errors[:3]
            else:
                smtp = services.smtp
                first, last = wait_for(lambda: len(smtp.mails), jobs)
                ids = [str(m.message["X-Realtime-Idempotency-Key"]) for m in smtp.mails]
                repeated = len(ids) - len(set(ids))
        finally:
            worker.stop()
    finally:
        services.close()
    seconds = last - first
    rate = (jobs - 1) / seconds if seconds > 0 else float("inf")
    print(
        f"{label}, {transport}, concurrency {concurrency}: {jobs} jobs in {seconds:.2f} s = "
        f"{rate:.0f} deliveries/s; sent twice: {repeated} | {load()}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="webhook jobs")
    parser.add_argument("--email-jobs", type=int, default=5_000)
    parser.add_argument("--stores", default="postgres,sqlite")
    parser.add_argument("--concurrency", default="8,32")
    args = parser.parse_args()
    if TWO_CPUS:
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as postgres:
        pin(postgres.pid, 0)
        for store in args.stores.split(","):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                for transport, jobs in (("webhook", args.jobs), ("email", args.email_jobs)):
                    name = f"{store}_{transport}_{concurrency}"
                    workdir = Path(tmp) / name
                    if store == "postgres":
                        dsn = postgres.create_database(name)
                    else:
                        workdir.mkdir(parents=True)
                        dsn = f"sqlite:///{workdir / 'realtime.db'}"
                    run(workdir, dsn, transport, jobs, concurrency, store)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
