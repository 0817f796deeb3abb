"""The Engine.IO sessions of this instance, by id, and which instance owns an id.

An Engine.IO session id names its owner: ``<random>.<owner>``, the owner being
the instance id in URL-safe base64. A polling request carries the id, so any
instance can tell whose session it is without a lookup. Requests for a session
another instance owns are answered "Session ID unknown" for now; reaching the
owner (through the broker) is the step that lets polling run without sticky
sessions.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Generic, TypeVar

Session = TypeVar("Session")


def _owner_tag(instance_id: str) -> str:
    return base64.urlsafe_b64encode(instance_id.encode()).decode().rstrip("=")


def owner_of(sid: str) -> str | None:
    """The instance id a session id names, or None when it names none."""
    _, dot, tag = sid.rpartition(".")
    if not dot or not tag:
        return None
    try:
        return base64.urlsafe_b64decode(tag + "=" * (-len(tag) % 4)).decode()
    except (binascii.Error, ValueError):
        return None


class EngineSessions(Generic[Session]):
    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self._tag = _owner_tag(instance_id)
        self._sessions: dict[str, Session] = {}

    def new_id(self) -> str:
        return f"{secrets.token_urlsafe(15)}.{self._tag}"

    def add(self, sid: str, session: Session) -> None:
        self._sessions[sid] = session

    def get(self, sid: str) -> Session | None:
        return self._sessions.get(sid)

    def remove(self, sid: str, session: Session) -> None:
        if self._sessions.get(sid) is session:
            del self._sessions[sid]

    def owned_here(self, sid: str) -> bool:
        return owner_of(sid) == self.instance_id

    def __len__(self) -> int:
        return len(self._sessions)
