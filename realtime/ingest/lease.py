"""A lease on a Redis key: one holder at a time among the instances.

Pub/sub hands every message to every subscriber; were every instance to
subscribe, each event would make one notification per instance. So one instance
at a time holds the lease and subscribes; the others try to take it every
``ttl / 3`` seconds. The holder renews it as often; a holder that is killed stops
renewing, and another instance takes over within ``ttl`` plus that interval
(events published in between are lost: pub/sub ingestion is at most once).
A holder shutting down releases it, so a successor takes over at its next try.
"""

from __future__ import annotations

import asyncio
from typing import Final

from redis.asyncio import Redis

# Only the holder may renew or release: compare the value, then act.
_RENEW: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class LeaseLost(Exception):
    """Another instance holds the lease now."""


class Lease:
    def __init__(self, client: Redis, key: str, owner: str, *, ttl: float, timeout: float) -> None:
        self._client = client
        self.key = key
        self._owner = owner
        self._ttl_ms = int(ttl * 1000)
        self.every = ttl / 3
        """Seconds between renewals (and between tries to take it)."""
        self._timeout = timeout

    async def take(self) -> bool:
        """Take the lease if nobody holds it (or renew it if this instance does)."""
        async with asyncio.timeout(self._timeout):
            if await self._client.set(self.key, self._owner, nx=True, px=self._ttl_ms):
                return True
            renewed = await self._client.eval(_RENEW, 1, self.key, self._owner, self._ttl_ms)
        return bool(renewed)

    async def renew(self) -> None:
        async with asyncio.timeout(self._timeout):
            renewed = await self._client.eval(_RENEW, 1, self.key, self._owner, self._ttl_ms)
        if not renewed:
            raise LeaseLost(f"another instance holds {self.key}")

    async def release(self) -> None:
        async with asyncio.timeout(self._timeout):
            await self._client.eval(_RELEASE, 1, self.key, self._owner)
