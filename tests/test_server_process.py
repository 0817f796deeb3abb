"""The test harness's server process: it must not mistake another server for its own."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import ServerProcess


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def squatter() -> Iterator[int]:
    """Another process's server already answering /healthz on a port."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_port_taken_by_another_server_fails_the_start(squatter: int, tmp_path: Path) -> None:
    process = ServerProcess(tmp_path, port=squatter)
    try:
        with pytest.raises(RuntimeError, match="exited at start"):
            process.start()
    finally:
        process.kill()
