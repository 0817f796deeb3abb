"""The throwaway servers themselves: Redis Cluster, and nginx as the load balancer.

The nginx tests run ``deploy/nginx.conf``, the shipped template, in front of tiny
in-process backends, so they also test the proxy rules operators deploy.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.cluster import RedisCluster
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Origin, Subprotocol

from deploy import nginx_conf
from tests.services import MakeNginx, NginxServer, RedisClusterServer, ServiceError, free_port

# Redis Cluster --------------------------------------------------------------------------


def test_redis_cluster_is_formed(redis_cluster: RedisClusterServer) -> None:
    assert redis_cluster.states() == ["ok", "ok", "ok"]
    info = redis_cluster.node(0).cluster_info()
    assert info["cluster_size"] == "3"
    assert info["cluster_known_nodes"] == "3"
    assert info["cluster_slots_ok"] == "16384"

    ports = redis_cluster.ports
    assert len(set(ports)) == 3
    assert redis_cluster.url == f"redis+cluster://127.0.0.1:{ports[0]}"
    assert redis_cluster.startup_url == f"redis://127.0.0.1:{ports[0]}"
    assert redis_cluster.urls == [f"redis://127.0.0.1:{port}" for port in ports]
    # Each node's nodes.conf is in its own directory (kept across restarts).
    for node in redis_cluster.nodes:
        assert node.nodes_conf.parent == node.directory
        assert node.nodes_conf.is_file()


def test_redis_cluster_key_set_through_one_node_is_read_through_every_node(
    redis_cluster: RedisClusterServer,
) -> None:
    keys = [f"svc-test:{uuid.uuid4().hex}:{i}" for i in range(6)]
    for i, key in enumerate(keys):
        redis_cluster.cli("SET", key, f"value-{i}", node=i % 3)
    # Keys in several slots, so some live on each node and most reads are redirected.
    slots = {int(redis_cluster.cli("CLUSTER", "KEYSLOT", key)) for key in keys}
    assert len(slots) > 1
    for index in range(3):
        for i, key in enumerate(keys):
            assert redis_cluster.cli("GET", key, node=index) == f"value-{i}"
    # Without -c the node that does not own a slot answers MOVED, as a cluster does.
    slot = int(redis_cluster.cli("CLUSTER", "KEYSLOT", keys[0]))
    answers = []
    for node in redis_cluster.nodes:
        try:
            answers.append(node.call("GET", keys[0]))
        except ServiceError as exc:
            answers.append(str(exc))
    assert answers.count("value-0") == 1
    assert sum(f"MOVED {slot} 127.0.0.1:" in answer for answer in answers) == 2


def test_redis_cluster_startup_url_works_with_redis_py(redis_cluster: RedisClusterServer) -> None:
    client = RedisCluster.from_url(redis_cluster.startup_url, decode_responses=True)
    try:
        key = f"svc-test:{uuid.uuid4().hex}"
        client.set(key, "x")
        assert client.get(key) == "x"
        # It found every node, at the loopback addresses the cluster announces.
        nodes = list(client.nodes_manager.nodes_cache.values())
        assert sorted(node.port for node in nodes) == sorted(redis_cluster.ports)
        assert {node.host for node in nodes} == {"127.0.0.1"}
    finally:
        client.close()


@pytest.mark.slow
def test_redis_cluster_node_killed_then_restarted_rejoins(
    redis_cluster: RedisClusterServer,
) -> None:
    node = redis_cluster.node(1)
    before = (node.port, node.cluster_port, node.call("CLUSTER", "MYID"))
    try:
        node.kill()
        assert not node.running
        # cluster-node-timeout is 2 s: the two others agree it failed within seconds,
        # and with no replica for its slots the cluster is down.
        redis_cluster.wait_state("fail", nodes=[0, 2], timeout=15)

        node.start()
        redis_cluster.wait_ok(timeout=30)
        # Same address, same bus port and same identity (nodes.conf read back).
        assert (node.port, node.cluster_port, node.call("CLUSTER", "MYID")) == before
        for each in redis_cluster.nodes:
            assert each.cluster_info()["cluster_known_nodes"] == "3"
        key = f"svc-test:{uuid.uuid4().hex}"
        redis_cluster.cli("SET", key, "back", node=1)
        assert redis_cluster.cli("GET", key, node=2) == "back"
    finally:
        redis_cluster.start()  # the session's cluster goes on whole


# nginx: tiny backends -------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def http_backend(name: str, port: int = 0) -> AsyncIterator[Backend]:
    """An aiohttp server answering every path with its name and what it received."""
    backend = Backend(name, port)

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        seen = {"path": request.path_qs, "method": request.method, "size": len(body)}
        seen.update(request.headers)
        backend.requests.append(seen)
        return web.json_response({"backend": name, "request": seen})

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        backend.port = runner.addresses[0][1]
        yield backend
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def ws_backend(name: str) -> AsyncIterator[Backend]:
    """A WebSocket echo server (``websockets``) that answers ``<name>:<message>``."""
    backend = Backend(name, 0)

    async def echo(ws: ServerConnection) -> None:
        assert ws.request is not None
        backend.requests.append({"path": ws.request.path, **dict(ws.request.headers.raw_items())})
        async for message in ws:
            await ws.send(f"{name}:{message!s}")

    def select(ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        # Like the real server: one of ours if offered, none (JSON) otherwise.
        return next((p for p in offered if p in ("rt1.json", "rt1.msgpack")), None)

    async with serve(echo, "127.0.0.1", 0, select_subprotocol=select) as server:
        backend.port = next(iter(server.sockets)).getsockname()[1]
        yield backend


async def get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def backends_serving(nginx: NginxServer, count: int) -> list[str]:
    """Which backend answered each of ``count`` requests, each on a new connection."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        return [(await get_json(session, f"{nginx.url}/healthz"))["backend"] for _ in range(count)]


def refused_connects(nginx: NginxServer) -> int:
    return len(re.findall(r"connect\(\) failed \(111", nginx.log_tail(100_000)))


# nginx ----------------------------------------------------------------------------------


async def test_nginx_balances_round_robin_across_backends(make_nginx: MakeNginx) -> None:
    async with http_backend("a") as a, http_backend("b") as b:
        nginx = make_nginx([a.port, b.port])
        served = await backends_serving(nginx, 20)
    # Every request on a new connection, as every WebSocket client is: they land on
    # any worker, and the workers share one rotation (upstream zone): alternating.
    assert served.count("a") == served.count("b") == 10
    assert all(x != y for x, y in itertools.pairwise(served))


async def test_nginx_proxies_the_api_paths_with_forwarding_headers(
    make_nginx: MakeNginx,
) -> None:
    async with http_backend("a") as a:
        nginx = make_nginx([a.port])
        async with aiohttp.ClientSession() as session:
            for path in (
                "/api/v1/rooms/swap:1/messages?limit=2",
                "/healthz",
                "/readyz",
                "/metrics",
            ):
                seen = (await get_json(session, nginx.url + path))["request"]
                assert seen["path"] == path
            async with session.post(
                f"{nginx.url}/api/v1/notifications",
                data=io.BytesIO(json.dumps({"to": ["x"], "pad": "y" * 1_200_000}).encode()),
                headers={"Origin": "https://app.example.com"},
            ) as response:
                # Bodies above the instances' 1 MiB limit still reach them.
                assert response.status == 200
                seen = (await response.json())["request"]
            async with session.get(f"{nginx.url}/elsewhere") as response:
                assert response.status == 404
    assert seen["method"] == "POST"
    assert seen["size"] > 1_200_000
    assert seen["Host"] == f"127.0.0.1:{nginx.port}"
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["Origin"] == "https://app.example.com"
    assert [r["path"] for r in a.requests].count("/elsewhere") == 0


async def test_nginx_passes_a_websocket_through(make_nginx: MakeNginx) -> None:
    async with ws_backend("a") as a:
        nginx = make_nginx([a.port])
        async with connect(
            nginx.ws_url,
            subprotocols=[Subprotocol("rt1.json")],
            origin=Origin("https://app.example.com"),
            open_timeout=5,
        ) as ws:
            assert ws.subprotocol == "rt1.json"
            for i in range(3):
                await ws.send(f"hello {i}")
                assert await asyncio.wait_for(ws.recv(), 5) == f"a:hello {i}"
    (seen,) = a.requests
    assert seen["path"] == "/ws"
    assert seen["Upgrade"].lower() == "websocket"
    assert seen["Origin"] == "https://app.example.com"
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["Host"] == f"127.0.0.1:{nginx.port}"


async def test_nginx_skips_a_dead_backend_and_takes_it_back(make_nginx: MakeNginx) -> None:
    dead = free_port()  # nothing listens there: connects are refused, like a killed instance
    async with http_backend("live") as live:
        nginx = make_nginx([dead, live.port])
        # Out for 2 s after a failure, not nginx's default 10 s.
        assert "max_fails=1 fail_timeout=2s;" in nginx._template.read_text()
        assert await backends_serving(nginx, 10) == ["live"] * 10
        # max_fails=1: after one refused connect the dead backend is out of the
        # rotation (for all workers), instead of costing every other request.
        assert 1 <= refused_connects(nginx) <= 2

        # fail_timeout=2s: an instance that comes back is in the rotation again
        # within seconds (2 to 3: nginx counts whole seconds); nginx's default
        # would leave it out for 10 s.
        async with http_backend("back", port=dead):
            # How soon is the config's business (fail_timeout, checked above); the
            # timeout only keeps a broken nginx from hanging the test.
            async with asyncio.timeout(60):
                while "back" not in await backends_serving(nginx, 2):
                    await asyncio.sleep(0.1)

    async with ws_backend("live") as live_ws:
        nginx = make_nginx([dead, live_ws.port, free_port()])
        for i in range(4):
            async with connect(nginx.ws_url, open_timeout=5) as ws:
                await ws.send(str(i))
                assert await asyncio.wait_for(ws.recv(), 5) == f"live:{i}"
    assert len(live_ws.requests) == 4


async def test_nginx_reload_changes_backends_and_keeps_open_websockets(
    make_nginx: MakeNginx,
) -> None:
    async with ws_backend("a") as a, ws_backend("b") as b:
        nginx = make_nginx([a.port])
        async with connect(nginx.ws_url, open_timeout=5) as old:
            await old.send("before")
            assert await asyncio.wait_for(old.recv(), 5) == "a:before"
            workers = set(nginx.worker_pids())

            nginx.set_backends([b.port])
            assert nginx.backends == [f"127.0.0.1:{b.port}"]
            assert set(nginx.worker_pids()) - workers  # new workers serve new connections

            async with connect(nginx.ws_url, open_timeout=5) as new:
                await new.send("after")
                assert await asyncio.wait_for(new.recv(), 5) == "b:after"
            # The connection opened before the reload still goes to a.
            await old.send("still")
            assert await asyncio.wait_for(old.recv(), 5) == "a:still"


async def test_nginx_refuses_bad_backends_and_keeps_serving(make_nginx: MakeNginx) -> None:
    async with http_backend("a") as a:
        nginx = make_nginx([a.port])
        before = nginx.config_path.read_text()
        with pytest.raises(ValueError, match="not an address"):
            nginx.set_backends(["127.0.0.1:1; evil"])
        with pytest.raises(ValueError, match="at least one"):
            nginx.set_backends([])
        # Looks like an address, but nginx -t rejects it: nothing changes.
        with pytest.raises(ServiceError, match="invalid port"):
            nginx.set_backends(["127.0.0.1:99999"])
        assert nginx.config_path.read_text() == before
        assert nginx.backends == [f"127.0.0.1:{a.port}"]
        assert nginx.running
        async with aiohttp.ClientSession() as session:
            assert (await get_json(session, f"{nginx.url}/healthz"))["backend"] == "a"
        nginx.restart()  # and a restart gets the good configuration
        async with aiohttp.ClientSession() as session:
            assert (await get_json(session, f"{nginx.url}/healthz"))["backend"] == "a"


def test_nginx_close_leaves_no_process_or_directory() -> None:
    nginx = NginxServer([free_port()])
    nginx.start()
    directory = nginx.directory
    pids = [int((directory / "nginx.pid").read_text()), *nginx.worker_pids()]
    assert len(pids) >= 2
    nginx.close()
    assert not directory.exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_compose_nginx_config_is_rendered_from_the_template() -> None:
    # docker-compose.yml runs deploy/nginx.compose.conf: the template, rendered.
    assert nginx_conf.COMPOSE_CONFIG.read_text() == nginx_conf.compose_config(), (
        "deploy/nginx.compose.conf is stale: run python -m deploy.nginx_conf"
    )
    text = nginx_conf.compose_config()
    for server in nginx_conf.COMPOSE_SERVERS:
        assert f"server {server} max_fails=1 fail_timeout=2s;" in text
    assert "listen 80;" in text
    assert not re.search(r"@[A-Z_]+@", text)
