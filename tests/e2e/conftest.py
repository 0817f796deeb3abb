"""Real server processes for end-to-end tests, on the embedded store and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server import ServerProcess, unique

BACKENDS = ["sqlite", "postgres"]


def _dsn(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return ""
    postgres = request.getfixturevalue("postgres_server")
    return str(postgres.create_database(unique("db_")))


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def server(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per test module and backend; tests use unique rooms and users."""
    process = ServerProcess(tmp_path_factory.mktemp("server"), dsn=_dsn(backend, request))
    process.start()
    yield process
    process.stop()


ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def make_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess | Any]:
    """Start servers with their own settings: ``make_server(env={...}, backend=...)``."""
    started: list[ServerProcess] = []

    def start(
        *,
        env: dict[str, str] | None = None,
        backend: str = "sqlite",
        config_text: str = "",
        name: str = "server",
    ) -> ServerProcess:
        process = ServerProcess(
            tmp_path / f"{name}{len(started)}",
            dsn=_dsn(backend, request),
            env=env,
            config_text=config_text,
            name=name,
        )
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.kill()
