"""Who may join and who may send, per namespace (``[namespaces.*]`` in config.toml).

Join rules: ``members`` (granted over REST), ``followers`` (users who follow the
room's key, and that user), ``owner`` (only the user whose id is the key),
``anyone``. A valid room token lets its user join whatever the rule.
Send rules over WebSocket: ``members`` (whoever may join), ``owner``, ``nobody``,
``anyone``. REST calls are trusted and skip these rules.
"""

from __future__ import annotations

from protocol import CommandError, ErrorCode, RoomName, parse_room
from storage import Store

from .auth import Authenticator
from .config import NamespaceSettings


def forbidden(message: str) -> CommandError:
    return CommandError(ErrorCode.FORBIDDEN, message)


class Policy:
    def __init__(
        self, namespaces: dict[str, NamespaceSettings], store: Store, auth: Authenticator
    ) -> None:
        self._namespaces = namespaces
        self._store = store
        self._auth = auth

    def resolve(self, room: str) -> tuple[RoomName, NamespaceSettings]:
        """Parse a room name and find its namespace, or raise bad_request/not_found."""
        name = parse_room(room)
        namespace = self._namespaces.get(name.namespace)
        if namespace is None:
            known = ", ".join(sorted(self._namespaces))
            raise CommandError(
                ErrorCode.NOT_FOUND, f"no namespace {name.namespace!r} (known: {known})"
            )
        return name, namespace

    def namespaces_joined_by(self, rule: str) -> list[str]:
        return [name for name, ns in self._namespaces.items() if ns.join == rule]

    async def check_join(
        self, user: str, room: RoomName, namespace: NamespaceSettings, token: str | None
    ) -> bool:
        """Raise ``forbidden`` unless ``user`` may join; True when a room token allowed it."""
        if token is not None:
            self._auth.verify_room(token, user, str(room))
            return True
        if await self._allowed(namespace.join, user, room):
            return False
        raise forbidden(_JOIN_REFUSALS[namespace.join].format(room=room, key=room.key))

    async def check_send(
        self, user: str, room: RoomName, namespace: NamespaceSettings, granted: bool
    ) -> None:
        rule = namespace.send
        if rule == "nobody":
            raise forbidden(f"nobody may send to {room} over WebSocket")
        if rule == "owner":
            if user != room.key:
                raise forbidden(f"only user {room.key} may send to {room}")
            return
        if rule == "anyone" or granted:
            return
        if not await self._allowed(namespace.join, user, room):
            raise forbidden(f"only those who may join {room} may send to it")

    async def check_read(self, user: str, room: RoomName, namespace: NamespaceSettings) -> None:
        """History, presence and read marks: for those who may join."""
        if not await self._allowed(namespace.join, user, room):
            raise forbidden(f"you may not read {room}")

    async def may_join(self, user: str, room: RoomName, namespace: NamespaceSettings) -> bool:
        """Whether the namespace's join rule lets ``user`` in (room tokens aside)."""
        return await self._allowed(namespace.join, user, room)

    async def _allowed(self, rule: str, user: str, room: RoomName) -> bool:
        if rule == "anyone":
            return True
        if rule == "owner":
            return user == room.key
        if rule == "followers":
            return user == room.key or await self._store.is_following(user, room.key)
        return await self._store.is_member(str(room), user)


_JOIN_REFUSALS = {
    "members": "{room} is for its members: ask for membership or a room token",
    "followers": "{room} is for followers of user {key}",
    "owner": "{room} is only for user {key}",
    "anyone": "{room} refused",
}
