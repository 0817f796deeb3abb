"""The Broker seam: how an event published on one instance reaches the others.

Delivery is at most once and unordered: a broker may drop events while it is
disconnected and may reorder events from different publishers. The hub makes room
messages exactly-once and ordered on top of it, by seq, filling gaps from the
store; ``on_resync`` tells it when events may have been lost. Every instance
receives its own publications too (so a single instance needs nothing else).

Besides rooms, every instance has an address of its own (``address``, unique to
this process's life): ``send_direct`` carries bytes to the one instance at an
address, at most once, and says whether any instance listens there. The
Socket.IO relay (``sio_relay.py``) is built on it.

Implementations: ``broker_memory.MemoryBroker`` (one instance, the default) and
``broker_redis.RedisBroker`` (any number of instances).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .events import Event


class BrokerUnavailable(Exception):
    """The broker could not take a publication; nothing was published."""


class BrokerHandler(Protocol):
    """The instance side of the broker: called on the event loop, must not block."""

    def on_event(self, room: str, event: Event) -> None:
        """An event was published to ``room``, which this instance subscribes to."""

    def on_resync(self) -> None:
        """Events may have been lost (say, a reconnect): re-read what matters."""

    def on_direct(self, data: bytes) -> None:
        """Bytes another instance (or this one) sent to this instance's address."""


class Broker(Protocol):
    address: str
    """This instance's address for ``send_direct``: unique to this process's life."""
    shared: bool
    """True when other instances may listen (another address may be reached)."""

    async def start(self, handler: BrokerHandler) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, room: str) -> None:
        """Receive ``room``'s events from now on (idempotent per room)."""

    async def unsubscribe(self, room: str) -> None: ...

    async def publish(self, room: str, event: Event) -> None:
        """Send an event to every instance subscribed to ``room``."""

    async def publish_confirmed(self, room: str, event: Event) -> None:
        """Publish, acting on this instance too only once the broker took the event.

        Raises ``BrokerUnavailable`` with nothing done anywhere: for events whose
        caller must be able to say "it happened" or "nothing was done".
        """

    async def publish_many(self, events: Sequence[tuple[str, Event]]) -> None:
        """Publish many events at once (one round trip where the backend allows)."""

    async def ping(self) -> None:
        """Raise ``BrokerUnavailable`` unless the broker answers."""

    async def send_direct(self, address: str, data: bytes) -> bool:
        """Send ``data`` to the instance at ``address``, at most once, unordered.

        False when no instance listens there (it is gone, or not yet or no longer
        subscribed); True when one does, which may still lose it. Its own address
        is served locally, without the broker. Raises ``BrokerUnavailable`` when
        the broker cannot take it.
        """
