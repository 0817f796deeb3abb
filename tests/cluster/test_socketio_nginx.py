"""Socket.IO through a real nginx (``deploy/nginx.conf``: round robin, no sticky
sessions) in front of three instances sharing PostgreSQL and Redis.

Every request of a polling session lands on whichever instance nginx picks; the
instances relay it to the one holding the session, and an upgrade moves the session
to the instance its WebSocket reached. socket.io-client v4 from npm (default
transports and polling only) and python-socketio's ``AsyncClient`` (polling only)
chat with a native client; then an instance is killed (SIGKILL) and its clients
reconnect through nginx and recover: every message once, in seq order.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import socketio

from tests.client import Client
from tests.cluster.conftest import Cluster, make_cluster
from tests.e2e.support import metric
from tests.node_tools import node_with_packages
from tests.server import ROOT, SECRET, SERVICE_KEY, unique
from tests.services import NginxServer, PostgresServer, RedisServer

PACKAGE = ROOT / "tests" / "js" / "socketio"
NODE_TIMEOUT = 300
TIMEOUT = 10


@pytest.fixture(scope="module")
def node() -> str:
    return node_with_packages(PACKAGE, "the socket.io-client cluster test")


def logs(cluster: Cluster, nginx: NginxServer | None = None) -> str:
    text = "\n".join(f"--- {i.name}\n{i.log()[-3000:]}" for i in cluster)
    return text + (f"\n--- nginx\n{nginx.log_tail()[-3000:]}" if nginx is not None else "")


@pytest.mark.timeout(NODE_TIMEOUT + 120)
def test_socketio_clients_through_nginx_chat_and_survive_a_killed_instance(
    node: str,
    tmp_path: Path,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    make_nginx: Any,
) -> None:
    cluster = make_cluster(tmp_path, postgres_server, redis_server.url)
    nginx: NginxServer | None = None
    try:
        nginx = make_nginx([instance.port for instance in cluster])
        instances = []
        for instance in cluster:
            assert instance.process is not None
            instances.append(
                {
                    "name": instance.name,
                    "url": instance.url,
                    "ws": instance.ws_url,
                    "pid": instance.process.pid,
                }
            )
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RT_")}
        environment |= {
            "RT_HTTP_URL": nginx.url,
            "RT_SECRET": SECRET,
            "RT_SERVICE_KEY": SERVICE_KEY,
            "RT_INSTANCES": json.dumps(instances),
        }
        result = subprocess.run(
            [node, "cluster.mjs"],
            cwd=PACKAGE,
            env=environment,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
            check=False,
        )
        print(result.stdout, result.stderr)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{logs(cluster, nginx)}"
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        victims = [i for i in cluster if i.process is not None and i.process.poll() is not None]
        assert [i.name for i in victims] == [figures["victim"]]
        assert figures["reconnected"] >= 1 and figures["moves"] >= 1
        for instance in cluster:
            assert "Traceback" not in instance.log(), logs(cluster, nginx)
    finally:
        cluster.stop()


async def test_python_socketio_polling_through_nginx_chats_with_a_native_client(
    tmp_path: Path,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    make_nginx: Any,
) -> None:
    cluster = make_cluster(tmp_path, postgres_server, redis_server.url)
    peers: list[socketio.AsyncClient] = []
    native: Client | None = None
    try:
        nginx: NginxServer = make_nginx([instance.port for instance in cluster])
        room = f"swap:{unique('py')}"
        users = [unique("a"), unique("b"), unique("n")]
        for user in users:
            status, _ = await cluster[0].rest("PUT", f"/api/v1/rooms/{room}/members/{user}")
            assert status == 204
        got: list[list[int]] = [[], []]
        for index, user in enumerate(users[:2]):
            peer = socketio.AsyncClient(reconnection=False)
            peers.append(peer)
            peer.on("message", lambda m, seqs=got[index]: seqs.append(m["seq"]))
            await peer.connect(
                nginx.url,
                transports=["polling"],
                auth={"token": cluster[0].token(user)},
                wait_timeout=TIMEOUT,
            )
            joined = await peer.call("join", {"room": room}, timeout=TIMEOUT)
            assert joined["room"] == room
        native = await Client.connected(
            cluster[1].ws_url, cluster[1].token(users[2]), rooms=[{"room": room}]
        )
        sent = 0
        for round_ in range(5):
            for peer in peers:
                ack = await peer.call("send", {"room": room, "body": round_}, timeout=TIMEOUT)
                sent += 1
                assert ack["seq"] == sent
            await native.call("send", room=room, body=round_)
            sent += 1
        pushed = [(await native.push_where("message", room=room))["seq"] for _ in range(sent)]
        async with asyncio.timeout(TIMEOUT * 3):
            while any(len(seqs) < sent for seqs in got):
                await asyncio.sleep(0.05)
        expected = list(range(1, sent + 1))
        assert got == [expected, expected] and pushed == expected
        relayed = 0.0
        for instance in cluster:
            _, text = await instance.rest("GET", "/metrics")
            relayed += metric(text, "realtime_sio_relayed_total", op="get", result="ok")
        assert relayed > 0, logs(cluster, nginx)
        for instance in cluster:
            assert "Traceback" not in instance.log(), logs(cluster, nginx)
    finally:
        for peer in peers:
            await peer.disconnect()
        if native is not None:
            await native.close()
        cluster.stop()
