"""Room membership and the follow graph (REST), and applying them to live connections.

A change is stored first, then announced to the user's instances as a control
event on the user's own room; each instance applies it to its local connections
(``apply``): a server-side join with a ``joined`` push, or a ``left`` push.
"""

from __future__ import annotations

import logging

from protocol import CommandError
from protocol.commands import RoomRequest
from protocol.outgoing import JoinedPush, LeftPush
from storage import Store

from .connection import Connection
from .convert import user_room
from .events import MembershipChange, UserDisconnect
from .hub import Hub
from .joins import Joins
from .policy import Policy
from .publisher import Publisher
from .store_calls import StoreCalls
from .tasks import TaskSet

log = logging.getLogger(__name__)

# Join rules the store decides, and the reason a ``left`` push gives when they no
# longer let a connection stay.
_STORED_RULES = {"members": "member_removed", "followers": "unfollowed"}


class Membership:
    def __init__(
        self,
        store: Store,
        stored: StoreCalls,
        policy: Policy,
        publisher: Publisher,
        hub: Hub,
        joins: Joins,
        tasks: TaskSet,
    ) -> None:
        self._store = store
        self._stored = stored
        self._policy = policy
        self._publisher = publisher
        self._hub = hub
        self._joins = joins
        self._tasks = tasks

    async def add_member(self, room: str, user: str) -> None:
        self._policy.resolve(room)
        if await self._stored(self._store.add_member(room, user)):
            change = MembershipChange(user, room, True, "member_added")
            await self._publisher.publish(user_room(user), change)

    async def remove_member(self, room: str, user: str) -> None:
        self._policy.resolve(room)
        await self._stored(self._store.remove_member(room, user))
        # Also takes out connections that joined with a room token.
        change = MembershipChange(user, room, False, "member_removed")
        await self._publisher.publish(user_room(user), change)

    async def members(self, room: str) -> list[str]:
        self._policy.resolve(room)
        return await self._stored(self._store.members(room))

    async def follow(self, user: str, target: str) -> None:
        if await self._stored(self._store.follow(user, target)):
            for namespace in self._policy.namespaces_joined_by("followers"):
                change = MembershipChange(user, f"{namespace}:{target}", True, "followed")
                await self._publisher.publish(user_room(user), change)

    async def unfollow(self, user: str, target: str) -> None:
        if await self._stored(self._store.unfollow(user, target)):
            for namespace in self._policy.namespaces_joined_by("followers"):
                change = MembershipChange(user, f"{namespace}:{target}", False, "unfollowed")
                await self._publisher.publish(user_room(user), change)

    async def disconnect_user(self, user: str, reason: str) -> None:
        """Close the user's connections everywhere, or raise ``unavailable`` (none closed)."""
        await self._publisher.publish_certain(user_room(user), UserDisconnect(user, reason))

    # Applying changes to this instance's connections -------------------------------

    async def audit(self) -> None:
        """Take local connections out of rooms they may no longer be in.

        Run after the broker may have lost events (``on_resync``): a membership
        removal or an unfollow is stored first, so the store says what is right
        even when its ``left`` event never arrived. Rooms joined with a room token
        cannot be checked here (the token is not kept) and stay.
        """
        for conn in list(self._hub.connections):
            if conn.closing or not conn.authenticated:
                continue
            for room in list(conn.rooms):
                if conn.is_granted(room):
                    continue
                name, namespace = self._policy.resolve(room)
                if namespace.join not in _STORED_RULES:
                    continue
                if await self._stored(self._policy.may_join(conn.user, name, namespace)):
                    continue
                if conn.closing or not conn.in_room(room):
                    break
                self._hub.detach(conn, room)
                conn.send(LeftPush(room, _STORED_RULES[namespace.join]))
                await self._joins.leave(conn, room)

    def apply(self, change: MembershipChange) -> None:
        for conn in self._hub.user_connections(change.user):
            if conn.closing:
                continue
            if change.joined and not conn.in_room(change.room):
                self._tasks.spawn(self._server_join(conn, change), f"join {change.room}")
            elif not change.joined and conn.in_room(change.room):
                self._hub.detach(conn, change.room)
                conn.send(LeftPush(change.room, change.reason))
                self._tasks.spawn(self._joins.leave(conn, change.room), f"leave {change.room}")

    async def _server_join(self, conn: Connection, change: MembershipChange) -> None:
        conn.hold()
        try:
            result = await self._joins.join(conn, RoomRequest(change.room), check=False)
            conn.reply(JoinedPush(change.reason, result))
        except CommandError as error:
            if not conn.closing:
                log.warning("could not join %s to %s: %s", conn, change.room, error.message)
        finally:
            conn.release()
