"""A server process whose Redis stops answering says why it is not ready."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.server import Http, ServerProcess
from tests.services import RedisServer


async def test_readyz_names_the_reason_while_redis_is_frozen(tmp_path: Path) -> None:
    with RedisServer() as redis:
        server = ServerProcess(tmp_path, broker_url=redis.url, env={"REALTIME_BROKER_TIMEOUT": "1"})
        server.start()
        try:
            os.kill(redis.pid, signal.SIGSTOP)
            try:
                async with Http(server) as http:
                    status, body = await http.call("GET", "/readyz")
            finally:
                os.kill(redis.pid, signal.SIGCONT)
            assert status == 503
            reason = body["checks"]["broker"]
            assert reason.startswith("unavailable: ") and reason != "unavailable: ", body
            assert "timed out after 1s" in reason, body
        finally:
            server.kill()
