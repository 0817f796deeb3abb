"""The grant-versus-close race on two instances sharing PostgreSQL and Redis.

Here a ghost is worse than on one instance: the live instance keeps refreshing its
presence entry in Redis, so the presence TTL never takes it out (seen: 52 of 100).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from tests.cluster.conftest import Cluster, make_cluster
from tests.e2e.test_join_close_race import assert_no_ghosts, grant_while_closing, rooms_gauge
from tests.server import Http, unique
from tests.services import PostgresServer, RedisServer

USERS = 100
ROOMS = 5


@pytest.fixture
def pair(
    postgres_server: PostgresServer, redis_server: RedisServer, tmp_path: Path
) -> Iterator[Cluster]:
    instances = make_cluster(tmp_path, postgres_server, redis_server.url, size=2)
    yield instances
    instances.stop()


async def test_a_grant_racing_the_close_leaves_no_ghost_on_any_instance(pair: Cluster) -> None:
    rooms = [unique("swap:") for _ in range(ROOMS)]
    async with AsyncExitStack() as stack:
        https = [await stack.enter_async_context(Http(instance)) for instance in pair]
        baselines = [await rooms_gauge(http) for http in https]
        await grant_while_closing(list(pair), https, USERS, rooms)
        # Longer than the presence TTL (2 s here): a ghost refreshed by its instance stays.
        await assert_no_ghosts(https, rooms, baselines)
