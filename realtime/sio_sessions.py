"""The Engine.IO sessions of this instance, by id, and which instance owns an id.

An Engine.IO session id names its owner: ``<random>.<owner>``, the owner being
the broker address of the instance that opened it (``Broker.address``, unique to
that process's life) in URL-safe base64. A polling request carries the id, so
any instance can tell whose session it is without a lookup, and relay the
request there (``sio_relay.py``). An id of an earlier life of an instance names
an address nobody listens at any more: its requests are "Session ID unknown".
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Generic, TypeVar

Session = TypeVar("Session")


def _owner_tag(address: str) -> str:
    return base64.urlsafe_b64encode(address.encode()).decode().rstrip("=")


def owner_of(sid: str) -> str | None:
    """The broker address a session id names, or None when it names none."""
    _, dot, tag = sid.rpartition(".")
    if not dot or not tag:
        return None
    try:
        return base64.urlsafe_b64decode(tag + "=" * (-len(tag) % 4)).decode()
    except (binascii.Error, ValueError):
        return None


class EngineSessions(Generic[Session]):
    def __init__(self, address: str) -> None:
        self.address = address
        self._tag = _owner_tag(address)
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
        return owner_of(sid) == self.address

    def __len__(self) -> int:
        return len(self._sessions)
