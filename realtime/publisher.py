"""Publishing events through the broker, with the failure policy in one place.

Room pushes (messages, typing, presence, read marks, notifications) are published
*best effort*: when the broker is down the event is dropped and counted. Nothing is
lost for stored messages and notifications (receivers fill gaps from the store);
typing and presence are ephemeral and heal with the next change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

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

    async def publish_many(self, events: Sequence[tuple[str, Event]]) -> None:
        try:
            await self._broker.publish_many(events)
        except BrokerUnavailable as error:
            self._metrics.broker_errors.labels("publish").inc()
            log.warning("broker publish of %d events failed: %s", len(events), error)
