"""Several real server processes sharing one PostgreSQL and one Redis (or a Redis Cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server import ServerProcess, unique
from tests.services import PostgresServer, RedisServer


class Cluster:
    """N instances on one database and one broker; tests may kill and restart them."""

    def __init__(
        self, workdir: Path, dsn: str, broker_url: str, size: int, env: dict[str, str]
    ) -> None:
        self.dsn = dsn
        self.instances = [
            ServerProcess(
                workdir / f"i{index}",
                dsn=dsn,
                broker_url=broker_url,
                name=f"i{index}",
                env={
                    "REALTIME_PRESENCE_TTL": "2",
                    "REALTIME_DELIVERY_TAIL_CHECK_INTERVAL": "1",
                    "REALTIME_BROKER_TIMEOUT": "1",
                    "REALTIME_SERVER_CLOSE_TIMEOUT": "0.5",
                    # The tests send as fast as they can.
                    "REALTIME_SERVER_RATE_LIMIT": "10000",
                    "REALTIME_SERVER_RATE_BURST": "10000",
                    **env,
                },
            )
            for index in range(size)
        ]

    def start(self) -> None:
        for instance in self.instances:
            instance.start()

    def stop(self) -> None:
        for instance in self.instances:
            instance.kill()

    def __getitem__(self, index: int) -> ServerProcess:
        return self.instances[index]

    def __iter__(self) -> Iterator[ServerProcess]:
        return iter(self.instances)

    def __len__(self) -> int:
        return len(self.instances)


def make_cluster(
    tmp: Path, postgres: PostgresServer, broker_url: str, size: int = 3, **env: str
) -> Cluster:
    dsn = postgres.create_database(unique("db_"))
    cluster = Cluster(tmp, dsn, broker_url, size, env)
    cluster.start()
    return cluster


@pytest.fixture(scope="module")
def redis_server_module() -> Iterator[RedisServer]:
    """A Redis of this module's own, so tests may stop and restart it."""
    with RedisServer() as redis:
        yield redis


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """A plain Redis, or the 3-node Redis Cluster (sharded pub/sub)."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis_server_module").url)
    return str(request.getfixturevalue("redis_cluster").url)


@pytest.fixture(scope="module")
def cluster(
    postgres_server: PostgresServer,
    broker_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    instances = make_cluster(tmp_path_factory.mktemp("cluster"), postgres_server, broker_url)
    yield instances
    instances.stop()


def logs(cluster: Cluster) -> Any:
    return "\n".join(f"--- {i.name}\n{i.log()[-3000:]}" for i in cluster)
