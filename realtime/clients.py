"""Client connections on this instance: admission, token expiry, heartbeats, goodbye.

The count of a user's connections is of every instance: each connection is
recorded in the presence of the user's own room when presence is shared.
"""

from __future__ import annotations

import asyncio
import logging
import time

from protocol import CloseCode, CommandError, ErrorCode

from .auth import Identity
from .config import Settings
from .connection import Connection
from .convert import user_room
from .expiry import ExpiryClock
from .frames import ping_frame
from .hub import Hub
from .joins import Joins
from .metrics import Metrics
from .pacing import ReconnectPacer
from .presence import Presence

log = logging.getLogger(__name__)


class TooManyConnections(CommandError):
    def __init__(self, limit: int) -> None:
        super().__init__(ErrorCode.FORBIDDEN, f"too many connections for this user (limit {limit})")


class Clients:
    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        presence: Presence,
        joins: Joins,
        metrics: Metrics,
        reconnects: ReconnectPacer,
    ) -> None:
        self._settings = settings
        self._hub = hub
        self._presence = presence
        self._joins = joins
        self._metrics = metrics
        self._reconnects = reconnects
        self._expiries = ExpiryClock()

    async def authenticate(self, conn: Connection, identity: Identity) -> None:
        """Register an authenticated connection; raises if the user has too many."""
        conn.authenticated_as(identity)
        room = user_room(identity.user)
        count = self._hub.add_user(conn)
        if self._presence.shared:
            await self._presence.add(room, identity.user, conn.id)
            count = await self._presence.connections(room)
        limit = self._settings.server.max_connections_per_user
        if count > limit:
            if self._presence.shared:
                await self._presence.remove(room, identity.user, conn.id)
            self._hub.remove_user(conn)
            conn.authenticated_as(None)
            raise TooManyConnections(limit)
        self._metrics.connects.inc()
        self.schedule_expiry(conn)

    async def adopt(self, conn: Connection, identity: Identity) -> None:
        """Register a connection that moved here from another instance (a Socket.IO
        upgrade, ``sio_move.py``). It was admitted there and its entry there goes
        only once it is here, so the limit is not applied again."""
        conn.authenticated_as(identity)
        self._hub.add_user(conn)
        if self._presence.shared:
            await self._presence.add(user_room(identity.user), identity.user, conn.id)
        self.schedule_expiry(conn)

    def refreshed(self, conn: Connection, identity: Identity) -> None:
        """A ``refresh`` gave the connection a new token."""
        conn.authenticated_as(identity)
        self.schedule_expiry(conn)

    def schedule_expiry(self, conn: Connection) -> None:
        assert conn.identity is not None
        self._expiries.schedule(conn, conn.identity.expires_at + self._settings.auth.leeway)

    async def disconnected(self, conn: Connection) -> None:
        """Forget a closed connection: leave its rooms (presence, typing)."""
        conn.end()
        for room in list(conn.rooms):
            try:
                await self._joins.leave(conn, room)
            except CommandError as error:
                log.warning("leaving %s for %s failed: %s", room, conn, error.message)
        if conn.identity is not None:
            self._expiries.forget(conn)
            if self._presence.shared:
                await self._presence.remove(user_room(conn.user), conn.user, conn.id)
        self._hub.remove_connection(conn)

    def _kick_idle(self) -> None:
        limit = self._settings.server.ping_timeout
        now = time.monotonic()
        idle = []
        for conn in list(self._hub.connections):
            if now - conn.last_seen > limit:
                idle.append(conn)
            else:
                conn.send_frame(ping_frame(conn.codec))
        if idle:
            # Counted together: the advice in their closes spreads them (pacing.py).
            self._reconnects.leaving(len(idle))
        for conn in idle:
            conn.close(CloseCode.GOING_AWAY, "no traffic within the ping timeout")

    async def heartbeat(self) -> None:
        """Server pings, and closing connections that went quiet (owned by the node)."""
        while True:
            await asyncio.sleep(self._settings.server.ping_interval)
            self._kick_idle()

    def close(self) -> None:
        self._expiries.close()
