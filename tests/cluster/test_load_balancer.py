"""Three instances behind a real nginx (deploy/nginx.conf): lose one, lose nothing.

Receivers connect through nginx (round-robin, no sticky sessions). When their
instance dies (kill -9) or drains (SIGTERM → 1012) they reconnect through nginx,
land on another instance, join with ``since`` and the epoch, and must end with
every acknowledged message exactly once, in seq order. The sender posts through
nginx as the backend would, retrying with the same ``client_id`` when the
instance it hit went away (the retry is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import pytest

from tests.client import Client
from tests.cluster.conftest import make_cluster
from tests.server import SERVICE_KEY, ServerProcess, unique
from tests.services import NginxServer, PostgresServer, RedisServer

MESSAGES = 240


class Receiver:
    """A client that reconnects through the load balancer and recovers with ``since``."""

    def __init__(self, nginx: NginxServer, token: str, room: str) -> None:
        self.nginx = nginx
        self.token = token
        self.room = room
        self.seqs: list[int] = []
        self.epoch: str | None = None
        self.reconnects = 0
        self.close_codes: list[int | None] = []
        self.lost_at: list[int] = []

    async def run(self) -> None:
        """Receive until cancelled, reconnecting whenever the connection is lost."""
        while True:
            try:
                client = await Client.connected(self.nginx.ws_url, self.token)
            except (OSError, ConnectionError, TimeoutError):
                await asyncio.sleep(0.1)  # nginx found no live backend this time
                continue
            try:
                await self._consume(client)
            finally:
                with contextlib.suppress(Exception):
                    await client.close()

    async def _consume(self, client: Client) -> None:
        since = self.seqs[-1] if self.seqs else 0
        try:
            joined = await client.call("join", room=self.room, since=since, epoch=self.epoch)
        except (ConnectionError, TimeoutError):
            return
        if self.epoch is not None:
            assert joined["recovered"] is True, joined
        self.epoch = joined["epoch"]
        self.seqs += [m["seq"] for m in joined["missed"]]
        while True:
            push_task = asyncio.ensure_future(client.push("message", timeout=60))
            closed_task = asyncio.ensure_future(client.ws.wait_closed())
            done, _ = await asyncio.wait(
                [push_task, closed_task], return_when=asyncio.FIRST_COMPLETED
            )
            closed_task.cancel()
            if push_task in done and not push_task.exception():
                self.seqs.append(push_task.result()["seq"])
                continue
            push_task.cancel()
            await asyncio.gather(push_task, closed_task, return_exceptions=True)
            self.reconnects += 1
            self.lost_at.append(self.seqs[-1] if self.seqs else 0)
            rcvd = client.ws.protocol.close_rcvd
            self.close_codes.append(rcvd.code if rcvd else None)
            return


async def send_through(nginx: NginxServer, room: str, count: int) -> int:
    """POST ``count`` messages through nginx; retry failures with the same client_id."""
    last = 0
    headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for i in range(count):
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with http.post(
                        f"{nginx.url}/api/v1/rooms/{room}/messages",
                        json={"body": i, "client_id": f"m{i}"},
                        headers=headers,
                    ) as response:
                        if response.status == 201:
                            last = (await response.json())["seq"]
                            break
                        assert response.status in (502, 503, 504), await response.text()
                except (aiohttp.ClientError, TimeoutError):
                    pass
                assert time.monotonic() < deadline, f"message {i} could not be sent"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.005)
    return last


@pytest.mark.parametrize("loss", ["kill", "sigterm"])
async def test_clients_of_a_lost_instance_reconnect_through_nginx_and_miss_nothing(
    tmp_path: Any,
    postgres_server: PostgresServer,
    make_nginx: Any,
    loss: str,
) -> None:
    with RedisServer() as redis:
        trio = make_cluster(tmp_path, postgres_server, redis.url)
        try:
            nginx: NginxServer = make_nginx([instance.port for instance in trio])
            room = unique("swap:")
            users = [unique("r") for _ in range(9)]
            for user in users:
                await trio[0].rest("PUT", f"/api/v1/rooms/{room}/members/{user}")
            receivers = [Receiver(nginx, trio[0].token(user), room) for user in users]
            running = [asyncio.create_task(r.run()) for r in receivers]
            await until(lambda: all(r.epoch for r in receivers))
            sending = asyncio.create_task(send_through(nginx, room, MESSAGES))
            await until(lambda: min(len(r.seqs) for r in receivers) >= MESSAGES // 3)
            victim: ServerProcess = trio[1]
            if loss == "kill":
                victim.kill()
            else:
                assert victim.terminate() == 0
            last = await sending
            try:
                await until(lambda: all(r.seqs[-1:] == [last] for r in receivers), 60)
            finally:
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
            for receiver in receivers:
                assert receiver.seqs == list(range(1, last + 1))
            assert last == MESSAGES
            # nginx spread the receivers, so some sat on the lost instance
            assert sum(r.reconnects for r in receivers) >= 1
            if loss == "sigterm":
                assert {c for r in receivers for c in r.close_codes} == {1012}
        finally:
            trio.stop()


async def until(condition: Any, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)
