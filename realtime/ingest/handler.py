"""What the two sources share: applying rules to events, carrying out the
notifications, counting both, and the pace of reconnecting."""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from protocol import CommandError, ErrorCode

from .rules import IngestRule, Notify, Poison, apply

log = logging.getLogger("realtime.ingest")

OUTCOMES = ("matched", "notified", "skipped", "failed")


class Notifier(Protocol):
    """``Notices.notify``: stores (deduplicated by ``dedupe_key``) and pushes."""

    async def notify(
        self,
        *,
        to: Sequence[str] | None,
        followers_of: str | None,
        type: str,
        data_json: str,
        actor: str | None,
        dedupe_key: str | None = None,
    ) -> int: ...


class Result(enum.Enum):
    DONE = "done"
    """Stored, or dropped for good (counted and logged): acknowledge it."""
    RETRY = "retry"
    """The store is unavailable: a stream entry stays pending and is tried again."""


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry, rules: Sequence[str]) -> None:
        self.events = Counter(
            "realtime_ingest_events",
            "Ingested events by rule and outcome: matched (the rule's match held and "
            "the event maps to a notification), notified (its notifications are stored), "
            "skipped (not JSON, or matched but cannot be mapped: logged and dropped), "
            "failed (storing failed: a pub/sub event is lost, a stream entry is tried "
            "again and counts again).",
            ["rule", "outcome"],
            registry=registry,
        )
        self.recipients = Counter(
            "realtime_ingest_recipients",
            "Recipients reached by the notifications of ingested events.",
            ["rule"],
            registry=registry,
        )
        self.connected = Gauge(
            "realtime_ingest_connected",
            "1 while this instance consumes an ingest source (a pub/sub source: on the "
            "one instance holding its lease).",
            ["source"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "realtime_ingest_redis_errors",
            "Times an ingest source lost its Redis or could not reach it.",
            ["source"],
            registry=registry,
        )
        # Children looked up once, and every rule's counts shown from the start.
        self._counts: dict[tuple[str, str], Any] = {
            (rule, outcome): self.events.labels(rule, outcome)
            for rule in rules
            for outcome in OUTCOMES
        }
        self._reached = {rule: self.recipients.labels(rule) for rule in rules}

    def count(self, rule: str, outcome: str) -> None:
        self._counts[rule, outcome].inc()

    def reached(self, rule: str, recipients: int) -> None:
        self._reached[rule].inc(recipients)


class Handler:
    """Applies rules to events and hands the notifications to the notifier."""

    def __init__(
        self,
        notifier: Notifier,
        metrics: IngestMetrics,
        *,
        max_event_bytes: int,
        max_data_bytes: int,
    ) -> None:
        self._notifier = notifier
        self.metrics = metrics
        self.max_event_bytes = max_event_bytes
        self._max_data_bytes = max_data_bytes
        self._storage_down = False

    def plan(self, rule: IngestRule, event: dict[str, Any] | Poison, where: str) -> Notify | None:
        """The notification ``event`` asks for under ``rule``, or None (counted)."""
        outcome = event if isinstance(event, Poison) else apply(rule, event, self._max_data_bytes)
        if isinstance(outcome, Poison):
            self.metrics.count(rule.name, "skipped")
            log.warning("ingest rule %s skipped %s: %s", rule.name, where, outcome.reason)
            return None
        if isinstance(outcome, Notify):
            self.metrics.count(rule.name, "matched")
            return outcome
        return None

    async def carry_out(
        self, rule: IngestRule, notify: Notify, where: str, dedupe_key: str | None = None
    ) -> Result:
        if notify.to == ():  # the actor was the only one listed
            self.metrics.count(rule.name, "notified")
            return Result.DONE
        try:
            recipients = await self._notifier.notify(
                to=notify.to,
                followers_of=notify.followers_of,
                type=notify.type,
                data_json=notify.data_json,
                actor=notify.actor,
                dedupe_key=dedupe_key,
            )
        except CommandError as error:
            self.metrics.count(rule.name, "failed")
            if error.code is ErrorCode.UNAVAILABLE:
                if not self._storage_down:  # once per outage, not once per event
                    log.warning("ingest rule %s: %s; %s", rule.name, error.message, where)
                self._storage_down = True
                return Result.RETRY
            log.warning("ingest rule %s dropped %s: %s", rule.name, where, error.message)
            return Result.DONE
        except Exception:
            # A bug must neither stop ingestion nor bring the same entry back forever.
            self.metrics.count(rule.name, "failed")
            log.exception("ingest rule %s dropped %s", rule.name, where)
            return Result.DONE
        if self._storage_down:
            log.info("ingest: storage answers again")
            self._storage_down = False
        self.metrics.count(rule.name, "notified")
        self.metrics.reached(rule.name, recipients)
        return Result.DONE


class Backoff:
    """Capped exponential backoff with jitter: outages never make a busy loop."""

    def __init__(self, low: float = 0.5, high: float = 10.0) -> None:
        self._low = low
        self._high = high
        self._delay = low

    def next(self) -> float:
        delay = self._delay * random.uniform(0.5, 1.5)
        self._delay = min(self._delay * 2, self._high)
        return delay

    def reset(self) -> None:
        self._delay = self._low


class Trouble:
    """Logs a source's Redis trouble once when it starts (or changes), not at every retry."""

    def __init__(self, source: str, metrics: IngestMetrics) -> None:
        self._source = source
        self._connected = metrics.connected.labels(source)
        self._errors = metrics.redis_errors.labels(source)
        self._reason: str | None = None

    def failed(self, reason: str) -> None:
        self._connected.set(0)
        self._errors.inc()
        if reason != self._reason:
            log.warning("ingest %s: %s; reconnecting", self._source, reason)
        else:
            log.debug("ingest %s: %s again", self._source, reason)
        self._reason = reason

    def ok(self, *, consuming: bool = True) -> None:
        """Redis answers; ``consuming``: this instance reads the source."""
        self._connected.set(1 if consuming else 0)
        if self._reason is not None:
            log.info("ingest %s: connected again", self._source)
        self._reason = None

    def stopped(self) -> None:
        self._connected.set(0)
