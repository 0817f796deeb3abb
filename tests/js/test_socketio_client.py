"""socket.io-client v4 (from npm, tests/js/socketio) against a real server process, under
node's test runner: default transports (polling, then the upgrade) and websocket only.

The package's devDependencies are installed with ``npm ci`` from its lock file when
missing (``tests/node_tools.py``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_socketio import CONFIG
from tests.node_tools import node_with_packages
from tests.server import ROOT, SECRET, SERVICE_KEY, ServerProcess

PACKAGE = ROOT / "tests" / "js" / "socketio"
NODE_TIMEOUT = 300


@pytest.fixture(scope="module")
def node() -> str:
    return node_with_packages(PACKAGE, "the socket.io-client tests")


@pytest.mark.timeout(NODE_TIMEOUT + 60)
def test_socketio_client_against_a_server(node: str, tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server", config_text=CONFIG)
    server.start()
    try:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RT_")}
        environment |= {
            "RT_HTTP_URL": server.url,
            "RT_WS_URL": server.ws_url,
            "RT_SECRET": SECRET,
            "RT_SERVICE_KEY": SERVICE_KEY,
        }
        result = subprocess.run(
            [node, "--test", "--test-reporter=spec", "sio.test.mjs"],
            cwd=PACKAGE,
            env=environment,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
            check=False,
        )
        print(result.stdout, result.stderr)
        assert result.returncode == 0, (
            f"{result.stdout}\n{result.stderr}\n--- server log\n{server.log()[-4000:]}"
        )
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()[-4000:]
