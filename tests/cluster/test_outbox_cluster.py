"""The outbox across instances on one PostgreSQL (and one Redis for presence): workers
on every instance never deliver one job twice, and a kill -9 of an instance with jobs
in flight loses none of them (they are sent again: at least once, and once counting
idempotency keys).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Cluster, logs, make_cluster
from tests.e2e.outbox_support import Services
from tests.e2e.support import eventually, metric
from tests.server import Http, ServerProcess, unique
from tests.services import PostgresServer, RedisServer

API = "/api/v1"
WITHIN = 120.0


@pytest.fixture
def services() -> Iterator[Services]:
    running = Services()
    yield running
    running.close()


async def start_cluster(
    tmp_path: Path, postgres: PostgresServer, redis: RedisServer, services: Services, **env: str
) -> Cluster:
    settings = services.env(**env)
    return await asyncio.to_thread(make_cluster, tmp_path, postgres, redis.url, 2, **settings)


async def notify_offline(instance: ServerProcess, count: int) -> list[str]:
    users = [unique("u") for _ in range(count)]
    async with Http(instance) as http:
        status, reply = await http.call(
            "POST", f"{API}/notifications", {"to": users, "type": "user_followed"}
        )
    assert status == 202 and reply["recipients"] == count, reply
    return users


async def every_job(instance: ServerProcess) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    async with Http(instance) as http:
        while True:
            after = found[-1]["id"] if found else 0
            status, reply = await http.call("GET", f"{API}/deliveries?limit=200&after={after}")
            assert status == 200, reply
            if not reply["deliveries"]:
                return found
            found.extend(reply["deliveries"])


async def delivered_by(instance: ServerProcess) -> float:
    status, text = await instance.rest("GET", "/metrics")
    assert status == 200
    return metric(text, "realtime_outbox_deliveries_total", transport="webhook", result="delivered")


async def test_two_instances_never_deliver_a_job_twice(
    tmp_path: Path,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    services: Services,
) -> None:
    receiver = services.receiver
    receiver.delay = 0.1  # each instance can hold only so many: both get to work
    cluster = await start_cluster(tmp_path, postgres_server, redis_server, services)
    try:
        count = 300
        await notify_offline(cluster[0], count // 2)
        await notify_offline(cluster[1], count // 2)

        async def all_done() -> bool:
            jobs = await every_job(cluster[0])
            return len(jobs) == count and all(job["state"] == "done" for job in jobs)

        await eventually(all_done, timeout=WITHIN, interval=0.2)
        jobs = await every_job(cluster[0])
        by_instance = [await delivered_by(instance) for instance in cluster]
    finally:
        cluster.stop()
    assert receiver.errors == []
    assert {f"rt-{job['id']}" for job in jobs} == set(receiver.acknowledged)
    assert max(receiver.requests.values()) == 1, "a job was sent twice"
    assert [job["attempts"] for job in jobs] == [1] * count
    assert sum(by_instance) == count and min(by_instance) > 0, by_instance


async def test_a_kill_of_an_instance_with_jobs_in_flight_loses_none(
    tmp_path: Path,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    services: Services,
) -> None:
    receiver = services.receiver
    receiver.delay = 2.0  # counted at once, answered late: the kill comes in between
    concurrency = 4
    cluster = await start_cluster(
        tmp_path,
        postgres_server,
        redis_server,
        services,
        REALTIME_OUTBOX_CONCURRENCY=str(concurrency),
        REALTIME_OUTBOX_LEASE="4",  # a send is cut off after 3 s: more than the delay
    )
    try:
        count = 40
        await notify_offline(cluster[0], count)

        async def both_busy() -> bool:
            # More requests held than one instance may have in flight: some are i0's.
            return receiver.holding > concurrency

        await eventually(both_busy, timeout=WITHIN)
        cluster[0].kill()

        async def all_done() -> bool:
            jobs = await every_job(cluster[1])
            return len(jobs) == count and all(job["state"] == "done" for job in jobs)

        await eventually(all_done, timeout=WITHIN, interval=0.2)
        jobs = await every_job(cluster[1])
    except BaseException:
        print(logs(cluster))
        raise
    finally:
        cluster.stop()
    keys = {f"rt-{job['id']}" for job in jobs}
    assert receiver.errors == []
    # At least once: every job reached the receiver; once, counting idempotency keys.
    assert set(receiver.acknowledged) == keys and len(receiver.payloads) == count
    # The killed instance's jobs in flight were taken again after their lease.
    again = [key for key, times in receiver.acknowledged.items() if times > 1]
    assert again, "no job of the killed instance was sent again"
    assert all(job["attempts"] == 2 for job in jobs if f"rt-{job['id']}" in again)
