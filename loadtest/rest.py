"""The REST API with the service key: set-up calls (membership, follows) and
notifications, many at a time, each with a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from .dialing import Failures

TIMEOUT = 30.0


class RestError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status} {body[:200]}")
        self.status = status


def path(*parts: str) -> str:
    """``/api/v1/`` and the parts, each quoted (room names hold colons)."""
    return "/api/v1/" + "/".join(quote(part, safe="") for part in parts)


class Rest:
    def __init__(self, base_url: str, key: str, concurrency: int = 64) -> None:
        self._session = aiohttp.ClientSession(
            base_url,
            headers={"Authorization": f"Bearer {key}"},
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        )

    async def call(self, method: str, where: str, body: Any = None) -> Any:
        """The parsed answer of a 2xx; ``RestError`` otherwise."""
        data = None if body is None else orjson.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with self._session.request(method, where, data=data, headers=headers) as response:
            raw = await response.read()
            if response.status >= 300:
                raise RestError(method, where, response.status, raw.decode(errors="replace"))
            return orjson.loads(raw) if raw else None

    async def many(
        self, calls: Sequence[tuple[str, str]], concurrency: int, failures: Failures
    ) -> int:
        """Body-less calls (method, path), at most ``concurrency`` at a time; how many
        succeeded (failures counted by kind)."""
        gate = asyncio.Semaphore(max(concurrency, 1))
        succeeded = 0

        async def one(method: str, where: str) -> None:
            nonlocal succeeded
            async with gate:
                try:
                    await self.call(method, where)
                    succeeded += 1
                except (RestError, aiohttp.ClientError, OSError, TimeoutError) as error:
                    failures.add(error)

        await asyncio.gather(*(one(method, where) for method, where in calls))
        return succeeded

    async def close(self) -> None:
        await self._session.close()
