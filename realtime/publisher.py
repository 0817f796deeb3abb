"""Publishing events through the broker, with the failure policy in one place.

Room pushes of stored things (messages, read marks, notifications) and ephemeral
state (typing, presence) are published *best effort*: when the broker is down the
event is dropped and counted. Nothing is lost for what is stored (receivers fill
gaps from the store), and typing and presence heal with the next change.

Events that nothing stores (a message of a room without history, a disconnect)
are published *for certain* (``publish_certain``): either every instance got them,
or the caller is told ``unavailable`` and nothing happened anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from protocol import CommandError, ErrorCode

from .broker import Broker, BrokerUnavailable
from .events import Event
from .metrics import Metrics

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, broker: Broker, metrics: Metrics) -> None:
        self._broker = broker
        self._metrics = metrics

    async def publish(self, room: str, event: Event) -> None:
        """Publish a room push; dropped (logged and counted) when the broker is down."""
        try:
            await self._broker.publish(room, event)
        except BrokerUnavailable as error:
            self._metrics.broker_errors.labels("publish").inc()
            log.warning("broker publish to %s failed: %s", room, error)

    async def publish_certain(self, room: str, event: Event) -> None:
        """Publish or raise ``unavailable``; nothing is done anywhere in that case."""
        try:
            await self._broker.publish_confirmed(room, event)
        except BrokerUnavailable as error:
            self._metrics.broker_errors.labels("publish").inc()
            raise CommandError(ErrorCode.UNAVAILABLE, f"broker unavailable: {error}") from None

    async def publish_many(self, events: Sequence[tuple[str, Event]]) -> None:
        try:
            await self._broker.publish_many(events)
        except BrokerUnavailable as error:
            self._metrics.broker_errors.labels("publish").inc()
            log.warning("broker publish of %d events failed: %s", len(events), error)
