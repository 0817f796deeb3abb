"""One server instance: the services that WebSocket commands and REST calls share.

The node builds each service once and owns the lifecycle: ``start`` starts the
seams and the background loops, ``drain`` closes connections for a restart,
``close`` cancels and awaits everything it started. Each job lives in a module of
its own, and callers use the service for the job:

- ``clients``: admission, token expiry, heartbeats, goodbye (``clients.py``)
- ``joins``: join and leave, recovery, presence (``joins.py``)
- ``messages``: send, publish, history, read marks (``messages.py``)
- ``typing``: typing state and its expiry (``typing_state.py``)
- ``membership``: REST membership, the follow graph, disconnects (``membership.py``)
- ``notices``: notifications (``notices.py``)
- ``push``: Web Push subscriptions (``push_subscriptions.py``)
- ``ingest``: notifications from other services' events, with ``[[ingest]]``
  rules (``ingest/``)
- ``relay``: Socket.IO polling requests for sessions other instances hold
  (``sio_relay.py``), over the broker's direct messages
- ``outbox``: the delivery worker and dead letters (``outbox.py``)

Errors reach callers as ``CommandError`` with a protocol error code; the
WebSocket and REST layers only translate them. Events from the broker come in
through ``on_event``, ``on_resync`` and ``on_direct`` (the broker's handler).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, assert_never

from protocol import CloseCode, CommandError
from protocol.outgoing import (
    Message,
    MessagePush,
    NotificationPush,
    PresencePush,
    ReadPush,
    TypingPush,
)
from storage import StorageError, Store

from .admission import Admission
from .auth import Authenticator
from .broker import Broker, BrokerUnavailable
from .clients import Clients
from .config import Settings
from .convert import to_message
from .events import Event, MembershipChange, UserDisconnect
from .hub import Hub
from .ingest.service import Ingest
from .joins import Joins
from .lag import LoopLag
from .membership import Membership
from .messages import Messages
from .metrics import Metrics
from .notices import Notices
from .outbox import Outbox
from .pacing import HandshakeLimiter, OpeningLimit, ReconnectPacer
from .policy import Policy
from .presence import Presence
from .publisher import Publisher
from .push_subscriptions import PushSubscriptions
from .sio_relay import Relay
from .sio_sessions import EngineSessions
from .store_calls import StoreCalls
from .tasks import TaskSet
from .typing_state import Typing
from .upkeep import catch_up_tails, check_tails, forget_dedupe_keys, forget_deliveries, retain

log = logging.getLogger(__name__)


class Node:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        broker: Broker,
        presence: Presence,
        metrics: Metrics | None = None,
        instance_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.presence = presence
        self.metrics = metrics or Metrics()
        self.instance_id = instance_id or settings.server.instance_id or secrets.token_hex(4)
        self.draining = False
        self.tasks = TaskSet()
        server = settings.server
        self.reconnects = ReconnectPacer(server.reconnect_rate, server.reconnect_delay)
        self.handshakes = HandshakeLimiter(server.max_handshake_rate)
        self.openings = OpeningLimit(server.max_opening)
        self.lag = LoopLag(on_sample=self.metrics.loop_lag.set)
        self.auth = Authenticator(settings.auth)
        self.policy = Policy(settings.namespaces, store, self.auth)
        self.hub = Hub(broker, self._fetch_missed, settings.delivery, self.metrics)
        self.admission = Admission(settings.server.max_unauthenticated)
        stored = StoreCalls(self.metrics, settings.storage.timeout)
        publisher = Publisher(broker, self.metrics)
        self.typing = Typing(settings, self.policy, publisher)
        self.joins = Joins(
            settings, store, stored, self.hub, self.policy, presence, publisher, self.typing
        )
        self.clients = Clients(
            settings, self.hub, presence, self.joins, self.metrics, self.reconnects
        )
        self.messages = Messages(store, stored, self.policy, publisher, self.metrics)
        self.membership = Membership(
            store, stored, self.policy, publisher, self.hub, self.joins, self.tasks
        )
        self.notices = Notices(store, stored, publisher, self.metrics, settings)
        self.push = PushSubscriptions(settings.webpush, store, stored)
        self.ingest = (
            Ingest(
                settings, self.notices, consumer=self.instance_id, registry=self.metrics.registry
            )
            if settings.ingest
            else None
        )
        self.outbox = Outbox(
            settings, store, stored, presence, self.hub, self.notices, self.metrics
        )
        self.notices.queued = self.outbox.wake
        self._publisher = publisher
        self._loops = TaskSet()
        # Engine.IO sessions by id (sio.py keeps its own objects here); an id names
        # the broker address of its instance, where the others relay its requests.
        self.engine_sessions: EngineSessions[Any] = EngineSessions(broker.address)
        self.relay = Relay(broker, settings, self.metrics, self.tasks, self.engine_sessions.get)

    # Lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        if settings.outbox.enabled:
            # First: a bad VAPID key or template file stops start-up before anything runs.
            await self.outbox.start()
        try:
            await self.broker.start(self)
            await self.presence.start(self._presence_changed)
        except BaseException:
            await self.outbox.close()
            raise
        self._loops.spawn(self.lag.run(), "loop-lag")
        self._loops.spawn(self.clients.heartbeat(), "heartbeat")
        self._loops.spawn(self.typing.expire(), "typing-expiry")
        self._loops.spawn(retain(self.store, settings), "retention")
        self._loops.spawn(
            forget_dedupe_keys(self.store, settings.storage.retention_interval), "dedupe-expiry"
        )
        interval = settings.delivery.tail_check_interval
        self._loops.spawn(check_tails(self.store, self.hub, interval), "tail-check")
        if self.ingest is not None:
            self.ingest.start()
        self._loops.spawn(self.relay.watch(), "relay-watch")
        if settings.outbox.enabled:
            self._loops.spawn(self.outbox.run(), "outbox")
        if settings.outbox.keep_finished:
            self._loops.spawn(forget_deliveries(self.store, settings), "outbox-retention")

    async def drain(self) -> None:
        """Close every connection with 1012 once its command in flight is answered."""
        self.draining = True
        # Jobs in flight finish meanwhile; no new ones are claimed.
        outbox = self.tasks.spawn(
            self.outbox.drain(self.settings.server.shutdown_timeout), "outbox-drain"
        )
        connections = list(self.hub.connections)
        # Everyone leaves at once: the advice in each 1012 spreads them (pacing.py).
        self.reconnects.leaving(len(connections))
        for conn in connections:
            if not conn.busy:
                conn.close(CloseCode.RESTARTING, "server restarting: reconnect")
        try:
            async with asyncio.timeout(self.settings.server.shutdown_timeout):
                await self.hub.wait_empty()
        except TimeoutError:
            log.warning("%d connections still open after drain", len(self.hub.connections))
        await outbox

    async def close(self) -> None:
        if self.ingest is not None:
            await self.ingest.close()
        await self._loops.close()
        await self.outbox.close()
        await self.tasks.close()
        self.clients.close()
        await self.hub.close()

    async def ready(self) -> dict[str, str]:
        """What /readyz reports: each dependency's state, with a reason when not ok."""
        status: dict[str, str] = {}
        timeout = self.settings.storage.timeout
        try:
            await asyncio.wait_for(self.store.ping(), timeout)
            status["storage"] = "ok"
        except (StorageError, TimeoutError) as error:
            status["storage"] = f"unavailable: {str(error) or f'timed out after {timeout:g}s'}"
        timeout = self.settings.broker.timeout
        try:
            await asyncio.wait_for(self.broker.ping(), timeout)
            status["broker"] = "ok"
        except (BrokerUnavailable, TimeoutError) as error:
            # str(TimeoutError()) is empty: never report "unavailable: " alone.
            status["broker"] = f"unavailable: {str(error) or f'timed out after {timeout:g}s'}"
        return status

    # The broker's handler ----------------------------------------------------------

    def on_event(self, room: str, event: Event) -> None:
        match event:
            case MessagePush():
                if event.message.seq is None:
                    self.hub.deliver(room, event)
                else:
                    self.hub.offer(room, event)
            case TypingPush():
                self.hub.deliver(room, event, skip_user=event.user)
            case PresencePush() | ReadPush() | NotificationPush():
                self.hub.deliver(room, event)
            case UserDisconnect():
                for conn in self.hub.user_connections(event.user):
                    conn.close(CloseCode.DISCONNECTED, event.reason)
            case MembershipChange():
                self.membership.apply(event)
            case _:
                assert_never(event)

    def on_resync(self) -> None:
        self.tasks.spawn(self._catch_up(), "resync")
        # Removals whose events were lost are in the store: apply them here.
        self.tasks.spawn(self._audit(), "membership-audit")

    def on_direct(self, data: bytes) -> None:
        self.relay.on_direct(data)

    async def _catch_up(self) -> None:
        """Events may have been lost: read what rooms missed, asking the store first
        which rooms did (a query per thousand rooms, not a read per room)."""
        try:
            await catch_up_tails(self.store, self.hub)
        except StorageError as error:
            log.warning("catching up after a resync failed (%s): reading every room", error)
            self.hub.resync()  # each room's read retries until the store is back

    async def _audit(self) -> None:
        try:
            await self.membership.audit()
        except CommandError as error:
            # The store is down too; the tail checks and the next resync go on.
            log.warning("membership audit after a resync failed: %s", error.message)

    async def _presence_changed(self, room: str, user: str, event: str) -> None:
        _, namespace = self.policy.resolve(room)
        if namespace.presence:
            await self._publisher.publish(room, PresencePush(room, user, event))

    async def _fetch_missed(self, room: str, after: int, limit: int) -> list[Message]:
        return [to_message(m) for m in await self.store.messages_after(room, after, limit)]
