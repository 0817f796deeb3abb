"""The JavaScript client (clients/js) against real server processes, under node's test runner.

Each test starts the servers a scenario needs, then runs ``node --test`` on that
scenario's file with the server's address, the token secret and a service key in
the environment (see clients/js/test/support.js), and passes or fails with it,
showing node's output and the servers' logs when it fails. Scenarios that kill a
server ask for it over a small HTTP endpoint served here (``RT_CONTROL_URL``):
``POST /kill/<i>`` (SIGKILL), ``/start/<i>``, ``/restart/<i>`` for server ``i``.

The client's devDependencies (typescript, ws) are installed with ``npm ci`` from
clients/js/package-lock.json when missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Cluster, make_cluster
from tests.node_tools import node_major, node_with_packages
from tests.server import ROOT, SECRET, SERVICE_KEY, ServerProcess
from tests.services import NginxServer, PostgresServer, RedisServer

JS = ROOT / "clients" / "js"
NODE_TIMEOUT = 400
"""Seconds for one node run: the slow scenarios take about 30 s on an idle machine."""


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary (>= 20), with the client's devDependencies installed."""
    return node_with_packages(JS, "the JavaScript client tests")


def run_node(
    node: str,
    files: Sequence[str],
    env: dict[str, str],
    *,
    servers: Sequence[ServerProcess] = (),
    node_args: Sequence[str] = (),
) -> None:
    """``node --test`` on ``files`` (relative to clients/js); fails the test when it fails."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RT_")}
    environment.update(env)
    result = subprocess.run(
        [node, *node_args, "--test", "--test-reporter=spec", *files],
        cwd=JS,
        env=environment,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        check=False,
    )
    print(result.stdout, result.stderr)  # shown by pytest -s, and with a failure
    if result.returncode != 0:
        logs = "\n".join(f"--- {s.name} log (tail)\n{s.log()[-4000:]}" for s in servers)
        pytest.fail(
            f"node --test {' '.join(files)} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}\n{logs}",
            pytrace=False,
        )


def server_env(url: str, http_url: str) -> dict[str, str]:
    return {
        "RT_WS_URL": url,
        "RT_HTTP_URL": http_url,
        "RT_SECRET": SECRET,
        "RT_SERVICE_KEY": SERVICE_KEY,
    }


class _Handler(BaseHTTPRequestHandler):
    servers: Sequence[ServerProcess] = ()

    def do_POST(self) -> None:
        match = re.fullmatch(r"/(kill|start|restart)/(\d+)", self.path)
        if match is None or int(match.group(2)) >= len(self.servers):
            self._answer(404, "unknown control path")
            return
        server = self.servers[int(match.group(2))]
        try:
            if match.group(1) in ("kill", "restart"):
                server.kill()
            if match.group(1) in ("start", "restart"):
                server.start()
        except Exception as error:
            self._answer(500, f"{type(error).__name__}: {error}")
            return
        self._answer(200, "done")

    def _answer(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the node output tells what happened


@contextmanager
def control(servers: Sequence[ServerProcess]) -> Iterator[str]:
    """Serves the control endpoint for ``servers``; yields its URL."""
    handler = type("Handler", (_Handler,), {"servers": list(servers)})
    http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=http.serve_forever, name="js-control", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_address[1]}"
    finally:
        http.shutdown()
        http.server_close()
        thread.join(10)


# The tests -----------------------------------------------------------------------------


def test_types_check_with_tsc(node: str) -> None:
    """realtime.d.ts describes the API that test/check.ts uses (tsc --noEmit)."""
    tsc = subprocess.run(
        [node, str(JS / "node_modules" / "typescript" / "bin" / "tsc"), "--noEmit", "-p", str(JS)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert tsc.returncode == 0, tsc.stdout + tsc.stderr


def test_protocol_handling_against_a_scripted_server(node: str) -> None:
    """Lagged pushes, reconnect advice, packed frames, resends: a scripted ws server."""
    run_node(node, ["test/scripted.test.js"], {})


@pytest.mark.timeout(NODE_TIMEOUT + 60)
@pytest.mark.parametrize("websocket", ["ws", "global"])
def test_api_and_readme_example_against_a_server(node: str, tmp_path: Path, websocket: str) -> None:
    """Every API call, and the README's chat example as written; with the `ws`
    package's WebSocket and with Node's own (the one browsers' behaves like)."""
    server = ServerProcess(tmp_path / "server", env={"REALTIME_AUTH_LEEWAY": "0"})
    server.start()
    try:
        env = server_env(server.ws_url, server.url)
        node_args: list[str] = []
        if websocket == "ws":
            env["RT_WEBSOCKET"] = "ws"
        elif node_major(node) < 22:
            node_args.append("--experimental-websocket")
        run_node(
            node,
            ["test/api.test.js", "test/example.test.js"],
            env,
            servers=[server],
            node_args=node_args,
        )
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(NODE_TIMEOUT + 120)
def test_kill_and_restart_the_server_during_a_stream(node: str, tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "server",
        # Small, so that a receiver kept away long enough must page history.
        env={"REALTIME_DELIVERY_RECOVERY_LIMIT": "20"},
    )
    server.start()
    try:
        with control([server]) as control_url:
            env = server_env(server.ws_url, server.url) | {"RT_CONTROL_URL": control_url}
            run_node(node, ["test/restart.test.js"], env, servers=[server])
    finally:
        server.kill()


@pytest.mark.slow
@pytest.mark.timeout(NODE_TIMEOUT + 180)
def test_kill_one_of_three_instances_behind_nginx(
    node: str, tmp_path: Path, postgres_server: PostgresServer, make_nginx: Any
) -> None:
    with RedisServer() as redis:
        trio: Cluster = make_cluster(tmp_path, postgres_server, redis.url)
        try:
            nginx: NginxServer = make_nginx([instance.port for instance in trio])
            with control(list(trio)) as control_url:
                env = server_env(nginx.ws_url, nginx.url) | {"RT_CONTROL_URL": control_url}
                run_node(node, ["test/cluster.test.js"], env, servers=list(trio))
        finally:
            trio.stop()
