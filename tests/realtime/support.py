"""An in-process node for tests: a real SQLite store, the in-memory broker and presence,
and connections on a fake transport that record what they were sent.

No socket and no server process: a test drives the node's services directly and can
stop the store at any point (``GatedStore``), which a real socket cannot do on cue.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import orjson

from protocol import JSON
from protocol.commands import RoomRequest
from realtime.auth import Identity
from realtime.broker_memory import MemoryBroker
from realtime.config import (
    DeliverySettings,
    NotificationSettings,
    NotificationTypeSettings,
    ServerSettings,
    Settings,
    StorageSettings,
    default_notification_types,
)
from realtime.connection import Connection
from realtime.node import Node
from realtime.presence import Presence
from realtime.presence_memory import MemoryPresence
from storage import SqliteStore, Store

SECRET = "in-process-secret-" + "x" * 20
# Notification types the in-process tests send, beside the defaults.
TYPES = {name: NotificationTypeSettings(name=name) for name in ("hello",)}


class FakeTransport:
    """What ``Connection`` needs of an asyncio transport; keeps every write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)


class FakeConnection(Connection):
    """A JSON connection whose close is recorded (``closes``), as ``ws.py`` would see it."""

    __slots__ = ("closes", "transport")

    def __init__(self, node: Node, connection_id: str) -> None:
        self.closes: list[tuple[int, str]] = []
        self.transport = FakeTransport()
        super().__init__(
            connection_id,
            cast(asyncio.Transport, self.transport),
            JSON,
            1 << 20,
            lambda code, reason: self.closes.append((code, reason)),
            node.hub.outbox,
        )

    def messages(self) -> list[dict[str, Any]]:
        """Every message written so far (replies and pushes), decoded."""
        self._outbox.flush()
        data = b"".join(self.transport.writes)
        out: list[dict[str, Any]] = []
        while data:
            length, start = data[1] & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(data[2:4], "big"), 4
            elif length == 127:
                length, start = int.from_bytes(data[2:10], "big"), 10
            payload, data = data[start : start + length], data[start + length :]
            out.extend(orjson.loads(line) for line in payload.split(b"\n") if line.strip())
        return out

    def pushes(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages() if m.get("push") == kind]


def settings(**delivery: Any) -> Settings:
    """Defaults, with a secret, a short storage timeout and the given delivery settings."""
    return Settings(
        server=ServerSettings(rate_limit=1000.0, rate_burst=1000),
        auth=dataclasses.replace(Settings().auth, secret=SECRET),
        storage=StorageSettings(timeout=5.0),
        delivery=dataclasses.replace(DeliverySettings(), **delivery),
        notifications=NotificationSettings(types={**default_notification_types(), **TYPES}),
    )


async def open_store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "realtime.db", timeout=5.0)
    await store.open()
    await store.migrate()
    return store


@asynccontextmanager
async def running_node(
    tmp_path: Path,
    config: Settings | None = None,
    *,
    wrap_store: Callable[[Store], Any] | None = None,
    wrap_presence: Callable[[Presence], Any] | None = None,
) -> AsyncIterator[Node]:
    """A started node on a fresh SQLite store; the ``wrap_`` functions may put a
    fake (say ``Gated``) in front of the store or the presence."""
    store = await open_store(tmp_path)
    presence: Presence = MemoryPresence()
    try:
        node = Node(
            config or settings(),
            wrap_store(store) if wrap_store is not None else store,
            MemoryBroker(),
            wrap_presence(presence) if wrap_presence is not None else presence,
            instance_id="test",
        )
        await node.start()
        try:
            yield node
        finally:
            await node.close()
    finally:
        await store.close()


async def connected(node: Node, user: str, connection_id: str | None = None) -> FakeConnection:
    """A connection authenticated as ``user``, in its user room, as a session leaves it."""
    conn = FakeConnection(node, connection_id or f"c-{user}")
    node.hub.add_connection(conn)
    await node.clients.authenticate(conn, Identity(user, 2**40))
    await node.joins.join(conn, RoomRequest(f"user:{user}"))
    return conn


class Gated:
    """Wraps a store (or presence) so that calls of one method wait at a gate.

    The gate is open until ``shut``; then calls of that method wait for ``open``,
    and ``entered`` is set when one has reached the gate, so a test knows the join
    (or send) is waiting there. Every other method goes straight through.
    """

    def __init__(self, inner: Any, method: str) -> None:
        self._inner = inner
        self._gated = method
        self._gate = asyncio.Event()
        self._gate.set()
        self.entered = asyncio.Event()

    def shut(self) -> None:
        self._gate.clear()
        self.entered.clear()

    def open(self) -> None:
        self._gate.set()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name != self._gated:
            return attribute

        async def gated(*args: Any, **kwargs: Any) -> Any:
            if not self._gate.is_set():
                self.entered.set()
                await self._gate.wait()
            return await attribute(*args, **kwargs)

        return gated
