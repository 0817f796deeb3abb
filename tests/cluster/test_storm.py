"""A small reconnect storm: ``loadtest connect`` through nginx to three instances, one
killed with SIGKILL while messages are published. Every client it held must rejoin
through nginx and end with every seq exactly once, with the pacing (an admission
limit answered with 503 + Retry-After, followed by the clients) and without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest.connect import ConnectOptions, run_connect
from loadtest.context import Context
from loadtest.progress import Progress
from loadtest.target import Target, loopback_sources, normalize_url
from loadtest.tokens import TokenSource
from tests.cluster.conftest import logs, make_cluster
from tests.server import SECRET
from tests.services import NginxServer, PostgresServer, RedisServer

CLIENTS = 60


def _context(url: str) -> Context:
    urls = (normalize_url(url, "realtime"),)
    target = Target(urls=urls, tokens=TokenSource(secret=SECRET), sources=loopback_sources(urls))
    return Context(target, 2, (), Progress(enabled=False))


@pytest.mark.parametrize("pacing", [True, False], ids=["paced", "unpaced"])
async def test_a_killed_instance_s_clients_rejoin_and_miss_nothing(
    tmp_path: Path,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    make_nginx: Any,
    pacing: bool,
) -> None:
    # Paced: 10 new WebSockets a second per instance, so 60 at once meet 503s.
    rate = "10" if pacing else "0"
    trio = make_cluster(
        tmp_path,
        postgres_server,
        redis_server.url,
        REALTIME_SERVER_MAX_HANDSHAKE_RATE=rate,
        REALTIME_SERVER_LOG_LEVEL="warning",
    )
    try:
        nginx: NginxServer = make_nginx([instance.port for instance in trio])
        victim = trio[1].process
        assert victim is not None
        options = ConnectOptions(
            clients=CLIENTS,
            timeout=60,
            restart_command=f"kill -9 {victim.pid}",
            restart_timeout=10,
            retry_interval=0.2,
            pacing=pacing,
            publish_rate=10,
            publish_url=trio[0].ws_url,
        )
        report = await run_connect(_context(nginx.ws_url), options)
    finally:
        trio.stop()
    first, restart = report["connect"], report["restart"]
    context = f"{report}\n{logs(trio)}"
    assert first["joined"] == CLIENTS, context
    if pacing:
        assert first["failures"].get("http 503", 0) > 0, context
    assert 0 < restart["dropped"] < CLIENTS, context  # nginx spread them over the three
    assert restart["joined"] == restart["dropped"], context
    assert restart["all_joined_s"] is not None and restart["unrecovered"] == 0, context
    messages = restart["messages"]
    assert messages["published"] == messages["acknowledged"] > 0, context
    assert messages["clients_behind"] == 0, context
    assert messages["lost"] == messages["duplicated"] == messages["reordered"] == 0, context
    assert messages["lost_by_connected_clients"] == 0, context
