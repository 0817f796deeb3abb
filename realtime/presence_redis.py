"""Presence shared through Redis, with expiry: a dead instance drops out by itself.

Per room, two hashes in one cluster slot (hash tag ``{room}``): connection → "user,
owner" and user → number of connections. ``owner`` is this process (instance id
plus a random incarnation, so a restarted instance never revives the entries of
its previous life). Scripts change both hashes at once, so "first connection in"
and "last one out" are decided exactly once across the cluster.

Every instance heartbeats into a sorted set of owners scored by expiry. Each
heartbeat also sweeps owners whose expiry passed: their entries are removed room
by room (each owner keeps the set of rooms it touched) and the users who thereby
left are announced, so a killed instance leaves every room within ``ttl`` plus one
heartbeat. Entries of owners known to be dead are never listed, even before the
sweep; an owner not seen yet (just started) counts as alive.

Calls a command waits for go through the ``RedisGate`` shared with the broker: one
timeout bounds them all, and while Redis is known down they fail at once.

Redis down: presence degrades to this instance's own view; after the outage the
heartbeat puts this instance's entries back (announcing users who had been swept)
and takes out those it was told to remove meanwhile (announcing users who thereby
left). The same happens when the heartbeat finds this owner missing from the set
of owners: Redis lost its data (a restart without persistence, a flush), or
another instance swept this one as dead after a stall.

``close`` takes every entry out and deletes this owner's keys; an entry it could
not remove is left to the sweep by the other instances, so nothing outlives it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any

from redis.asyncio import Redis, RedisCluster

from .presence import OnChange
from .redis_gate import OUTAGES, RedisGate

log = logging.getLogger(__name__)

_SEPARATOR = ","

_ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2] .. ',' .. ARGV[3]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then return 1 end
return 0
"""
_REMOVE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  return 1
end
return 0
"""
# Remove every entry of one owner from a room; return the users left with none.
_SWEEP = """
local gone = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local value = entries[i + 1]
  local comma = string.find(value, ',', 1, true)
  if comma and string.sub(value, comma + 1) == ARGV[1] then
    local user = string.sub(value, 1, comma - 1)
    redis.call('HDEL', KEYS[1], entries[i])
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      table.insert(gone, user)
    end
  end
end
return gone
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisPresence:
    shared = True

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        owner: str,
        ttl: float,
        timeout: float,
        prefix: str,
        gate: RedisGate | None = None,
    ) -> None:
        self._client = client
        self._gate = gate or RedisGate(timeout)
        self._owner = owner
        self._ttl = ttl
        self._timeout = timeout
        self._prefix = prefix + ":p:"
        self._instances = prefix + ":p:owners"
        self._add = client.register_script(_ADD)
        self._remove = client.register_script(_REMOVE)
        self._sweep = client.register_script(_SWEEP)
        # This instance's own entries: room -> connection -> user.
        self._local: dict[str, dict[str, str]] = {}
        # Removals Redis never confirmed (it was unreachable), done once it is back.
        self._unremoved: dict[str, dict[str, str]] = {}
        # Rooms recorded under our owner key, for whoever sweeps us after a crash.
        self._recorded: set[str] = set()
        self._dead: set[str] = set()
        self._healthy = False
        self._on_change: OnChange | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    # Keys ----------------------------------------------------------------------------

    def _keys(self, room: str) -> list[str]:
        """The room's two hashes, in one cluster slot."""
        tag = "{" + room + "}"
        return [f"{self._prefix}{tag}:c", f"{self._prefix}{tag}:u"]

    def _rooms_of(self, owner: str) -> str:
        return f"{self._prefix}owner:{{{owner}}}"

    # The seam ------------------------------------------------------------------------

    async def start(self, on_change: OnChange) -> None:
        self._on_change = on_change
        try:
            # Registered before the first connection arrives, when Redis allows.
            async with asyncio.timeout(self._timeout):
                await self._register()
            self._healthy = True
        except OUTAGES as error:
            log.warning("presence could not register yet: %r", error)
        self._heartbeat = asyncio.create_task(self._beat(), name="presence-heartbeat")

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.wait([self._heartbeat])
            self._heartbeat = None
        # Leave at once rather than wait for the entries to expire.
        for room, connections in list(self._local.items()):
            for connection, user in list(connections.items()):
                await self.remove(room, user, connection)
        if self._unremoved:
            # Still registered, so the owner expires and the others sweep what is left.
            log.info("presence entries left to expire in %d rooms", len(self._unremoved))
            return
        try:
            async with asyncio.timeout(self._timeout):
                # Rooms first: an owner without them would be swept in vain, not leak.
                await self._client.delete(self._rooms_of(self._owner))
                await self._client.zrem(self._instances, self._owner)
        except OUTAGES as error:
            log.info("could not unregister presence owner: %r", error)

    async def add(self, room: str, user: str, connection: str) -> bool:
        local = self._local.setdefault(room, {})
        local[connection] = user
        self._forget_unremoved(room, connection)
        try:
            await self._record(room)
            return bool(await self._call(self._add, room, connection, user, self._owner))
        except OUTAGES as error:
            log.warning("presence add in %s failed (kept locally): %r", room, error)
            self._healthy = False
            return sum(1 for u in local.values() if u == user) == 1

    async def remove(self, room: str, user: str, connection: str) -> bool:
        local = self._local.get(room)
        known = local is not None and local.pop(connection, None) is not None
        if local is not None and not local:
            del self._local[room]
        try:
            return bool(await self._call(self._remove, room, connection, user))
        except OUTAGES as error:
            log.warning("presence remove in %s failed (done when redis is back): %r", room, error)
            self._healthy = False
            if not known:
                return False
            self._unremoved.setdefault(room, {})[connection] = user
            return local is None or user not in local.values()

    def _forget_unremoved(self, room: str, connection: str) -> None:
        pending = self._unremoved.get(room)
        if pending is not None and pending.pop(connection, None) is not None and not pending:
            del self._unremoved[room]

    async def users(self, room: str) -> list[str]:
        try:
            entries = await self._gate.call(partial(self._client.hgetall, self._keys(room)[0]))
        except OUTAGES as error:
            log.warning("presence of %s read locally (redis: %r)", room, error)
            return sorted(set(self._local.get(room, {}).values()))
        present = set()
        for value in entries.values():
            user, _, owner = _text(value).rpartition(_SEPARATOR)
            if owner not in self._dead:
                present.add(user)
        return sorted(present)

    async def connections(self, room: str) -> int:
        try:
            entries = await self._gate.call(partial(self._client.hgetall, self._keys(room)[0]))
        except OUTAGES:
            return len(self._local.get(room, {}))
        return sum(
            1
            for value in entries.values()
            if _text(value).rpartition(_SEPARATOR)[2] not in self._dead
        )

    async def _record(self, room: str) -> None:
        if room not in self._recorded:
            await self._gate.call(partial(self._client.sadd, self._rooms_of(self._owner), room))
            self._recorded.add(room)

    async def _call(self, script: Any, room: str, *args: str) -> Any:
        return await self._gate.call(partial(script, keys=self._keys(room), args=list(args)))

    # Heartbeat -----------------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                async with asyncio.timeout(self._timeout):
                    missing = await self._register()
                if missing or not self._healthy:
                    await self._reassert()
                    self._healthy = True
                await self._sweep_dead()
            except OUTAGES as error:
                if self._healthy:
                    log.warning("presence heartbeat failed: %r", error)
                self._healthy = False

    async def _register(self) -> bool:
        """Renew this owner's expiry; True when it was not registered (any more)."""
        now = time.time()
        added = await self._client.zadd(self._instances, {self._owner: now + self._ttl})
        dead = await self._client.zrangebyscore(self._instances, "-inf", now)
        self._dead = {_text(owner) for owner in dead} - {self._owner}
        return bool(added)

    async def _reassert(self) -> None:
        """Make Redis hold exactly our entries again, announcing who came back or left.

        Entries are put back before the pending removals are done, so a user who
        only moved from one connection to another is not announced at all.
        """
        self._recorded.clear()
        for room, connections in list(self._local.items()):
            await self._record(room)
            for connection, user in list(connections.items()):
                await self._put_back(room, connection, user)
        for room, pending in list(self._unremoved.items()):
            for connection, user in list(pending.items()):
                left = await self._call(self._remove, room, connection, user)
                self._forget_unremoved(room, connection)
                if left:
                    await self._announce(room, user, "leave")

    async def _put_back(self, room: str, connection: str, user: str) -> None:
        if self._local.get(room, {}).get(connection) != user:
            return  # removed meanwhile
        added = await self._call(self._add, room, connection, user, self._owner)
        if self._local.get(room, {}).get(connection) != user:
            # Removed while the add was in flight: its removal may have come first.
            await self._call(self._remove, room, connection, user)
        elif added:
            await self._announce(room, user, "join")

    async def _sweep_dead(self) -> None:
        for owner in list(self._dead):
            rooms_key = self._rooms_of(owner)
            async with asyncio.timeout(self._timeout):
                rooms = await self._client.smembers(rooms_key)
            for room_raw in rooms:
                room = _text(room_raw)
                keys = self._keys(room)
                async with asyncio.timeout(self._timeout):
                    gone = await self._sweep(keys=keys, args=[owner])
                for user in gone:
                    await self._announce(room, _text(user), "leave")
            async with asyncio.timeout(self._timeout):
                await self._client.delete(rooms_key)
                await self._client.zrem(self._instances, owner)
            log.info("presence of dead instance %s swept", owner)

    async def _announce(self, room: str, user: str, event: str) -> None:
        if self._on_change is not None:
            await self._on_change(room, user, event)
