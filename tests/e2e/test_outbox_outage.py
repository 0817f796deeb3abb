"""A PostgreSQL outage in the middle of the outbox's run: the worker pauses (and its
jobs in flight wait to record their results), and once the database is back it
delivers every job by itself, without a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.outbox_support import Services
from tests.e2e.support import eventually, metric
from tests.server import Http, ServerProcess, unique
from tests.services import PostgresServer

API = "/api/v1"
WITHIN = 120.0

pytestmark = pytest.mark.slow


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own, which it stops."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def services() -> Iterator[Services]:
    running = Services()
    yield running
    running.close()


async def test_a_postgres_outage_mid_run_heals(
    own_postgres: PostgresServer, services: Services, tmp_path: Path
) -> None:
    receiver = services.receiver
    receiver.delay = 0.2  # slow enough that the outage comes while work is left
    env = services.env(REALTIME_STORAGE_TIMEOUT="1", REALTIME_OUTBOX_CONCURRENCY="2")
    server = ServerProcess(tmp_path, dsn=own_postgres.create_database("outage"), env=env)
    await asyncio.to_thread(server.start)
    try:
        count = 40
        users = [unique("u") for _ in range(count)]
        async with Http(server) as http:
            body = {"to": users, "type": "user_followed"}
            status, reply = await http.call("POST", f"{API}/notifications", body)
            assert status == 202, reply

            async def some_delivered() -> bool:
                return len(receiver.acknowledged) >= 4

            await eventually(some_delivered, timeout=WITHIN)
            await asyncio.to_thread(own_postgres.stop)

            async def failing() -> bool:
                # Its claims pause, its jobs' results wait to be written: either counts.
                status, text = await http.call("GET", "/metrics")
                return status == 200 and metric(text, "realtime_storage_errors_total") > 0

            await eventually(failing, timeout=WITHIN)
            left = count - len(receiver.acknowledged)
            await asyncio.to_thread(own_postgres.start)

            async def all_done() -> bool:
                status, reply = await http.call("GET", f"{API}/deliveries?limit=200")
                jobs = reply["deliveries"] if status == 200 else []
                return len(jobs) == count and all(j["state"] == "done" for j in jobs)

            await eventually(all_done, timeout=WITHIN, interval=0.2)
            status, reply = await http.call("GET", f"{API}/deliveries?limit=200")
        keys = {f"rt-{job['id']}" for job in reply["deliveries"]}
    except BaseException:
        print(server.log()[-5000:])
        raise
    finally:
        server.kill()
    assert left > 0, "the outage came after everything was delivered"
    # At least once: a job whose result could not be written may have gone twice.
    assert set(receiver.acknowledged) == keys and receiver.errors == []
