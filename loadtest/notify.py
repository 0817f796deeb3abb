"""``notify``: REST notifications to the followers of a user with F followers.

Set-up: F users follow one actor (``PUT /api/v1/users/{u}/following/{actor}``,
many at a time, spread over the processes); O of them connect. Then ``n``
notifications go to ``followers_of`` the actor (``POST /api/v1/notifications``,
``in_flight`` at a time), each carrying its send time in ``data``. The server
answers 202 once every recipient's notification is stored. Figures: recipients
stored per second (the 202s' ``recipients`` over the time from the first request
to the last answer), request latency, latency to the online followers, and
notifications lost or duplicated among them. A few offline followers' feeds are
read back to check that what the 202s counted was stored.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from .context import Context, summary, tolerant, usage_text, while_running
from .dialing import Failures, open_all
from .fastws import FastConnection
from .rest import Rest, RestError, path
from .stats import Histogram
from .target import Target
from .workers import Pool, Worker
from .wsclient import RealtimeClient

SETUP_TIMEOUT = 1800.0
CALL_TIMEOUT = 30.0
DRAIN_POLL = 0.1
# One of the default notification types (config.toml), so a stock server takes it.
KIND = "post_liked"
SAMPLED = 3


@dataclass(frozen=True)
class NotifyOptions:
    followers: int = 1000
    online: int = 100
    notifications: int = 10
    in_flight: int = 1
    setup_concurrency: int = 64
    drain: float = 30.0


@dataclass(frozen=True)
class FollowerArgs:
    target: Target
    actor: str
    followers: list[tuple[int, str]]
    """(index, user) of every follower this process sets up."""
    online: list[tuple[int, str]]
    """Those of them it connects."""
    setup_concurrency: int = 64
    concurrency: int = 100


class Followers(Worker[FollowerArgs]):
    def __init__(self, args: FollowerArgs) -> None:
        super().__init__(args)
        self.latency = Histogram()
        self.seen: dict[str, set[int]] = {}
        self.duplicated = 0
        self.clients: list[RealtimeClient] = []
        self.failures = Failures()

    async def rpc_follow(self) -> dict[str, Any]:
        target = self.args.target
        assert target.service_key is not None
        rest = Rest(target.rest_url(), target.service_key, self.args.setup_concurrency)
        failures = Failures()
        try:
            calls = [
                ("PUT", path("users", user, "following", self.args.actor))
                for _, user in self.args.followers
            ]
            done = await rest.many(calls, self.args.setup_concurrency, failures)
        finally:
            await rest.close()
        return {"followed": done, "failures": failures.kinds}

    async def rpc_connect(self) -> dict[str, Any]:
        target = self.args.target
        tokens = {user: target.tokens.user(user) for _, user in self.args.online}

        def opener(index: int, user: str) -> Any:
            async def open_follower() -> RealtimeClient:
                client = await RealtimeClient.open(target, index, tokens[user], FastConnection)
                self.seen[user] = set()
                client.on_push = self._on_push(user)
                # The server puts a connection in its user room after the upgrade; the
                # answer to a first command says that is done.
                try:
                    await client.command("ping")
                except BaseException:
                    client.connection.abort()
                    raise
                return client

            return open_follower

        openers = [opener(index, user) for index, user in self.args.online]
        opened = await open_all(openers, self.args.concurrency, self.failures)
        self.clients = [c for c in opened if c is not None]
        return {"connected": len(self.clients), "failures": self.failures.kinds}

    def _on_push(self, user: str) -> Any:
        seen = self.seen[user]

        def on_push(message: dict[str, Any]) -> None:
            if message.get("push") != "notification" or message.get("type") != KIND:
                return
            data = message.get("data")
            if not isinstance(data, dict) or "t" not in data:
                return
            number = int(data.get("n", 0))
            if number in seen:
                self.duplicated += 1
                return
            seen.add(number)
            self.latency.add((time.time_ns() - int(data["t"])) // 1000)

        return on_push

    async def rpc_snapshot(self) -> dict[str, Any]:
        return {
            "received": self.latency.total,
            "latency": self.latency.copy(),
            "duplicated": self.duplicated,
            "open": sum(1 for c in self.clients if not c.connection.closed.done()),
        }

    async def close(self) -> None:
        for client in self.clients:
            client.connection.abort()


async def run_notify(context: Context, options: NotifyOptions) -> dict[str, Any]:
    target = context.target
    actor = context.users("actor", 1)[0]
    followers = list(enumerate(context.users("f", options.followers)))
    online = followers[: options.online]
    parts = max(1, min(context.procs, len(followers)))
    args = [
        FollowerArgs(
            target,
            actor,
            followers[i::parts],
            online[i::parts],
            max(options.setup_concurrency // parts, 1),
            context.concurrency,
        )
        for i in range(parts)
    ]
    offline = [user for _, user in followers[options.online :]]
    async with Pool(Followers, args) as pool:
        return await _run(context, options, pool, actor, offline)


async def _run(
    context: Context, options: NotifyOptions, pool: Pool, actor: str, offline: list[str]
) -> dict[str, Any]:
    progress = context.progress
    target = context.target
    started = time.monotonic()
    followed = await pool.call("follow", limit=SETUP_TIMEOUT)
    follow_seconds = time.monotonic() - started
    follows = sum(f["followed"] for f in followed)
    progress.note(f"{follows} of {options.followers} follows set up in {follow_seconds:.1f}s")
    connected = await pool.call("connect", limit=SETUP_TIMEOUT)
    ready = sum(c["connected"] for c in connected)
    progress.note(f"{ready} of {options.online} followers online")
    assert target.service_key is not None
    rest = Rest(target.rest_url(), target.service_key, max(options.in_flight, 1))
    meter = context.meter(pool)
    meter.sample()
    meter.start()
    sender = _Sender(rest, actor, options)
    received = 0

    async def tick() -> None:
        nonlocal received
        usage = meter.sample()
        with tolerant():
            snapshots = await pool.call("snapshot", limit=CALL_TIMEOUT)
            received = sum(s["received"] for s in snapshots)
            progress.line(
                f"{time.monotonic() - sender.started:5.1f}s notifications {sender.answered} of "
                f"{options.notifications}, recipients {sender.recipients}, online deliveries "
                f"{received} | {usage_text(usage)}"
            )

    try:
        await while_running(sender.run(), tick)
        expected = sender.succeeded * ready
        last_delivery = await _drain(pool, expected, options.drain)
        meter.stop()
        progress.done()
        stored = await _sample_stored(rest, offline, sender.succeeded)
    finally:
        await rest.close()
    snapshots = await pool.call("snapshot", limit=CALL_TIMEOUT)
    latency = Histogram()
    for snapshot in snapshots:
        latency.merge(snapshot["latency"])
    elapsed = sender.finished - sender.started
    report: dict[str, Any] = {
        "scenario": "notify",
        "actor": actor,
        "followers": options.followers,
        "follows_set_up": follows,
        "follow_seconds": round(follow_seconds, 3),
        "follow_failures": Failures.merge([f["failures"] for f in followed]),
        "online": ready,
        "connect_failures": Failures.merge([c["failures"] for c in connected]),
        "notifications": options.notifications,
        "in_flight": options.in_flight,
        "accepted": sender.succeeded,
        "request_errors": sender.errors,
        "recipients": sender.recipients,
        "seconds": round(elapsed, 3),
        "recipients_per_s": round(sender.recipients / elapsed, 1) if elapsed > 0 else 0.0,
        "request_latency_ms": sender.latency.summary_ms(),
        "online_deliveries": latency.total,
        "online_expected": sender.succeeded * ready,
        "online_lost": max(sender.succeeded * ready - latency.total, 0),
        "online_duplicated": sum(s["duplicated"] for s in snapshots),
        "online_latency_ms": latency.summary_ms(),
        "last_online_delivery_s": (
            round(last_delivery - sender.started, 3) if last_delivery is not None else None
        ),
        "stored_check": stored,
        "generator": meter.report(sender.recipients, "recipient"),
        "server": meter.server_report(sender.recipients, "recipient"),
        **meter.flat(sender.recipients, "recipient"),
        "warnings": meter.warnings(),
    }
    for warning in report["warnings"]:
        progress.note(f"warning: {warning}")
    return summary(report)


class _Sender:
    """The notifications, ``in_flight`` at a time, and what the 202s said."""

    def __init__(self, rest: Rest, actor: str, options: NotifyOptions) -> None:
        self.rest = rest
        self.actor = actor
        self.options = options
        self.latency = Histogram()
        self.recipients = 0
        self.answered = 0
        self.succeeded = 0
        self.errors: dict[str, int] = {}
        self.started = self.finished = time.monotonic()

    async def run(self) -> None:
        numbers = iter(range(1, self.options.notifications + 1))
        self.started = time.monotonic()

        async def lane() -> None:
            for number in numbers:
                await self._one(number)

        await asyncio.gather(*(lane() for _ in range(max(self.options.in_flight, 1))))
        self.finished = time.monotonic()

    async def _one(self, number: int) -> None:
        sent = time.time_ns()
        body = {
            "followers_of": self.actor,
            "type": KIND,
            "data": {"t": sent, "n": number},
            "actor": self.actor,
        }
        try:
            answer = await self.rest.call("POST", path("notifications"), body)
        except (RestError, OSError, TimeoutError) as error:
            kind = f"http {error.status}" if isinstance(error, RestError) else type(error).__name__
            self.errors[kind] = self.errors.get(kind, 0) + 1
        else:
            self.latency.add((time.time_ns() - sent) // 1000)
            self.recipients += int(answer.get("recipients", 0))
            self.succeeded += 1
        self.answered += 1


async def _drain(pool: Pool, expected: int, drain: float) -> float | None:
    """Wait for the online followers' notifications; when the last one came."""
    deadline = time.monotonic() + drain
    seen, last_change = -1, None
    while time.monotonic() < deadline:
        with tolerant():
            received = sum(s["received"] for s in await pool.call("snapshot", limit=CALL_TIMEOUT))
            if received != seen:
                seen, last_change = received, time.monotonic()
            if received >= expected:
                break
        await asyncio.sleep(DRAIN_POLL)
    return last_change


async def _sample_stored(rest: Rest, offline: list[str], expected: int) -> dict[str, Any]:
    """Read a few offline followers' feeds: did each get every notification?"""
    sample = random.sample(offline, min(SAMPLED, len(offline)))
    complete = 0
    for user in sample:
        with tolerant():
            answer = await rest.call(
                "GET", path("users", user, "notifications") + f"?limit={min(expected, 200) or 1}"
            )
            items = [i for i in answer.get("items", []) if i.get("type") == KIND]
            complete += len(items) >= min(expected, 200)
    return {"sampled": len(sample), "complete": complete}
