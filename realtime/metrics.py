"""Prometheus metrics of one instance, in a registry of its own (not the global one).

Hot paths count once per push or per batch, never once per recipient.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# Offline deliveries wait on purpose (unread delay, digests, quiet hours, backoff).
OUTBOX_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge("realtime_connections", "Open WebSocket connections.", registry=r)
        self.rooms = Gauge("realtime_rooms", "Rooms with local connections.", registry=r)
        self.connects = Counter("realtime_connects", "Connections authenticated.", registry=r)
        self.handshakes_refused = Counter(
            "realtime_handshakes_refused",
            "WebSocket handshakes answered 503 past server.max_handshake_rate or "
            "server.max_opening.",
            registry=r,
        )
        self.opening = Gauge(
            "realtime_opening",
            "WebSockets still opening: upgraded, not yet authenticated and answered.",
            registry=r,
        )
        self.loop_lag = Gauge(
            "realtime_event_loop_lag_seconds",
            "How late the event loop ran a timer, last time it looked (every 0.25 s).",
            registry=r,
        )
        self.disconnects = Counter(
            "realtime_disconnects", "Connections closed, by close code.", ["code"], registry=r
        )
        self.commands = Counter(
            "realtime_commands",
            "Commands handled, by op and result.",
            ["op", "result"],
            registry=r,
        )
        self.command_seconds = Histogram(
            "realtime_command_seconds",
            "Time to answer a command, by op.",
            ["op"],
            registry=r,
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
                5.0,
            ),
        )
        self.deliveries = Counter(
            "realtime_deliveries", "Pushes written to client sockets.", registry=r
        )
        self.messages = Counter(
            "realtime_messages_stored", "Room messages stored by this instance.", registry=r
        )
        self.notifications = Counter(
            "realtime_notifications_stored",
            "Notifications stored by this instance.",
            registry=r,
        )
        # The inbox (issue 10): what notify did beyond storing.
        self.notifications_deduplicated = Counter(
            "realtime_notifications_deduplicated",
            "Recipients skipped because they had the notification's dedupe_key already.",
            registry=r,
        )
        self.deliveries_queued = Counter(
            "realtime_deliveries_queued",
            "Delivery jobs (push, email) queued for the outbox with their notifications.",
            registry=r,
        )
        self.gap_fills = Counter(
            "realtime_gap_fills", "Reads of missed room messages from the store.", registry=r
        )
        self.slow_consumers = Counter(
            "realtime_slow_consumers", "Connections closed for not reading (4009).", registry=r
        )
        self.lagged = Counter(
            "realtime_lagged",
            "Room streams stopped for connections past the soft send-buffer mark.",
            registry=r,
        )
        self.pushes_dropped = Counter(
            "realtime_pushes_dropped",
            "Typing and presence pushes left out for connections past the soft mark.",
            ["kind"],
            registry=r,
        )
        self.rate_limited = Counter(
            "realtime_rate_limited", "Commands refused by the rate limit.", registry=r
        )
        self.bad_frames = Counter(
            "realtime_bad_frames", "Frames that were not valid messages.", registry=r
        )
        self.broker_errors = Counter(
            "realtime_broker_errors", "Broker calls that failed.", ["op"], registry=r
        )
        self.storage_errors = Counter(
            "realtime_storage_errors", "Store calls that failed (unavailable).", registry=r
        )
        self.sio_relayed = Counter(
            "realtime_sio_relayed",
            "Socket.IO requests for a session another instance holds, relayed to it, by op "
            "and result (ok, gone, unavailable, timeout, overloaded).",
            ["op", "result"],
            registry=r,
        )
        self.sio_relay_served = Counter(
            "realtime_sio_relay_served",
            "Socket.IO requests relayed here by other instances for sessions this one "
            "holds, by op.",
            ["op"],
            registry=r,
        )

        # Labelled children, looked up once: labels() costs more than the count.
        self._outcomes: dict[tuple[str, str], Any] = {}
        self._timings: dict[str, Any] = {}

        # Operations: the process, the collector, REST latency, delivery latency.
        # The process-wide collectors read /proc, the gc module and the platform
        # when scraped; they cost nothing in between.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.request_seconds = Histogram(
            "realtime_http_request_seconds",
            "Time to answer a REST or operations request, by route, method and status.",
            ["route", "method", "status"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.delivery_seconds = Histogram(
            "realtime_delivery_latency_seconds",
            "From a room message's timestamp (when it was stored, or published for "
            "rooms without history) to its fan-out on this instance; once per message, "
            "not per recipient. Across instances it includes their clock difference.",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._observe_delivery = self.delivery_seconds.observe

        # Offline delivery (realtime/outbound): one count per job a sender tried.
        self.outbound_sends = Counter(
            "realtime_outbound_sends",
            "Delivery jobs the offline senders tried, by transport and outcome "
            "(delivered, retry, gone, failed).",
            ["transport", "outcome"],
            registry=r,
        )
        self.outbound_seconds = Histogram(
            "realtime_outbound_send_seconds",
            "Time a sender took for one delivery job, by transport.",
            ["transport"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.webpush_subscriptions_removed = Counter(
            "realtime_webpush_subscriptions_removed",
            "Web Push subscriptions removed: the push service answered 404 or 410.",
            registry=r,
        )

        # The outbox (realtime/outbox.py): what became of each delivery job (one count
        # per row: a digest counts each notification it carries).
        self.outbox_deliveries = Counter(
            "realtime_outbox_deliveries",
            "Delivery jobs the outbox worker settled, by transport and result: delivered, "
            "retried, dead, skipped; deferred (online and unread, quiet hours, an open "
            "digest window: back in the queue, no attempt charged).",
            ["transport", "result"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "realtime_outbox_pending",
            "Pending delivery jobs in the shared queue, by transport (due or not).",
            ["transport"],
            registry=r,
        )
        self.outbox_latency = Histogram(
            "realtime_outbox_delivery_latency_seconds",
            "From a notification's creation to its delivery by the outbox, by transport "
            "(unread delay, quiet hours, digest windows and retries included).",
            ["transport"],
            registry=r,
            buckets=OUTBOX_BUCKETS,
        )
        self.outbox_pauses = Counter(
            "realtime_outbox_pauses",
            "Times the outbox worker paused because storage was unavailable.",
            registry=r,
        )

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        timing = self._requests.get((route, method, status))
        if timing is None:
            timing = self._requests[route, method, status] = self.request_seconds.labels(
                route, method, str(status)
            )
        timing.observe(seconds)

    def message_delivered(self, ts: int) -> None:
        """A message stamped ``ts`` (Unix ms) was just handed to this instance's sockets."""
        self._observe_delivery(max(time.time() - ts / 1000, 0.0))

    def command_done(self, op: str, outcome: str, seconds: float | None = None) -> None:
        """Count a command by op and outcome (ok or an error code), and time it."""
        counter = self._outcomes.get((op, outcome))
        if counter is None:
            counter = self._outcomes[op, outcome] = self.commands.labels(op, outcome)
        counter.inc()
        if seconds is not None:
            timing = self._timings.get(op)
            if timing is None:
                timing = self._timings[op] = self.command_seconds.labels(op)
            timing.observe(seconds)

    def outbound_done(self, transport: str, outcome: str, seconds: float) -> None:
        """Count one job a sender tried, and time it."""
        self.outbound_sends.labels(transport, outcome).inc()
        self.outbound_seconds.labels(transport).observe(seconds)

    def outbox_settled(self, transport: str, result: str, rows: int = 1) -> None:
        self.outbox_deliveries.labels(transport, result).inc(rows)

    def outbox_delivered(self, transport: str, ages: list[float]) -> None:
        """Delivered rows, each ``age`` seconds after its notification was made."""
        self.outbox_settled(transport, "delivered", len(ages))
        latency = self.outbox_latency.labels(transport)
        for age in ages:
            latency.observe(max(age, 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
