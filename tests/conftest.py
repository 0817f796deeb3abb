"""Shared fixtures: real PostgreSQL, Redis and Redis Cluster servers, started once per
session, and nginx load balancers made per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import pytest

from tests.services import (
    MakeNginx,
    NginxServer,
    PostgresServer,
    RedisClusterServer,
    RedisServer,
)

_database_names = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """A 3-node Redis Cluster shared by the session: ``url`` is ``redis+cluster://…``.

    A test that kills or stops a node must bring it back (``redis_cluster.start()``
    restarts whatever is down and waits for ``cluster_state:ok``), in a ``finally``.
    """
    with RedisClusterServer() as cluster:
        yield cluster


@pytest.fixture
def make_nginx() -> Iterator[MakeNginx]:
    """``make_nginx(backend_ports)`` starts nginx (``deploy/nginx.conf``) in front of them.

    Every nginx it started is closed after the test.
    """
    started: list[NginxServer] = []

    def make(backends: Sequence[int | str]) -> NginxServer:
        server = NginxServer(backends)
        started.append(server)  # before start(): a failed start is closed too
        server.start()
        return server

    yield make
    errors: list[BaseException] = []
    for server in started:
        try:
            server.close()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    name = f"test_{next(_database_names)}"
    dsn = postgres_server.create_database(name)
    yield dsn
    postgres_server.drop_database(name)
