"""One suite for every Presence: in-process, Redis, and Redis Cluster.

Every test speaks only through the seam (``realtime/presence.py``): two presence
objects against one Redis are two instances, and an instance that dies is a
process killed with SIGKILL. Redis outages are real: the server is stopped, or a
proxy in front of it cuts every connection (a partition, with Redis's data kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis.asyncio import Redis

from realtime.broker import Broker
from realtime.config import load_settings
from realtime.presence import Presence
from realtime.presence_memory import MemoryPresence
from realtime.redis_seams import create_redis_seams
from tests.services import RedisClusterServer, RedisServer

BACKENDS = ["memory", "redis", "redis-cluster"]
SHARED = ["redis", "redis-cluster"]
# Live instances beat every ttl/3: a loop stalled for less than 2 s on a busy machine
# must not make one look dead. The instance that gets killed expires sooner.
TTL = 3.0
DEAD_TTL = 2.0
# Generous outer bounds for things that happen within a few seconds.
WITHIN = 20.0
REPO = Path(__file__).resolve().parents[2]

_prefixes = itertools.count(1)
_owners = itertools.count(1)


class Changes:
    """An ``on_change`` callback that remembers what it was told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    async def __call__(self, room: str, user: str, event: str) -> None:
        self.seen.append((room, user, event))


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check`` holds; fail with ``what`` after a generous bound."""
    try:
        async with asyncio.timeout(WITHIN):
            while not await check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {WITHIN}s: {what}") from None


@dataclass
class Backend:
    kind: str
    url: str = ""
    nodes: list[str] = field(default_factory=list)
    """Every Redis node's own URL."""
    prefix: str = field(default_factory=lambda: f"pc{os.getpid()}x{next(_prefixes)}")
    _open: list[tuple[Presence, Broker | None]] = field(default_factory=list)

    @property
    def shared(self) -> bool:
        return self.kind != "memory"

    async def instance(self, on_change: Changes | None = None, *, ttl: float = TTL) -> Presence:
        """A started presence of another instance (closed after the test)."""
        presence: Presence
        broker: Broker | None = None
        if self.kind == "memory":
            presence = MemoryPresence()
        else:
            settings = load_settings(
                None,
                {
                    "REALTIME_AUTH_SECRET": "s" * 32,
                    "REALTIME_BROKER_URL": self.url,
                    "REALTIME_BROKER_PREFIX": self.prefix,
                    "REALTIME_BROKER_TIMEOUT": "1",
                    "REALTIME_PRESENCE_TTL": str(ttl),
                },
            )
            # The broker is never started: it only owns the client the two share.
            broker, presence = create_redis_seams(settings, f"owner{next(_owners)}")
        self._open.append((presence, broker))
        await presence.start(on_change or Changes())
        return presence

    async def close(self, presence: Presence) -> None:
        for entry in self._open:
            if entry[0] is presence:
                self._open.remove(entry)
                await presence.close()
                if entry[1] is not None:
                    await entry[1].close()
                return
        raise AssertionError("not an open instance")

    async def close_all(self) -> None:
        while self._open:
            await self.close(self._open[-1][0])


async def _backend(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if kind == "memory":
        backend = Backend(kind)
    elif kind == "redis":
        url = request.getfixturevalue("redis_server").url
        backend = Backend(kind, url, [url])
    else:
        cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
        backend = Backend(kind, cluster.url, list(cluster.urls))
    try:
        yield backend
    finally:
        await backend.close_all()


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async for made in _backend(request.param, request):
        yield made


@pytest.fixture(params=SHARED)
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async for made in _backend(request.param, request):
        yield made


# One instance -------------------------------------------------------------------------


async def test_add_and_remove_say_when_a_user_comes_and_goes(backend: Backend) -> None:
    changes = Changes()
    p = await backend.instance(changes)
    assert await p.add("swap:1", "ann", "c1") is True
    assert await p.add("swap:1", "ann", "c2") is False
    assert await p.users("swap:1") == ["ann"]
    assert await p.connections("swap:1") == 2
    assert await p.remove("swap:1", "ann", "c1") is False
    assert await p.users("swap:1") == ["ann"]
    assert await p.remove("swap:1", "ann", "c2") is True
    assert await p.users("swap:1") == []
    assert await p.connections("swap:1") == 0
    # The caller announces its own changes: the callback is for changes found elsewhere.
    assert changes.seen == []


async def test_a_connection_counts_once(backend: Backend) -> None:
    p = await backend.instance()
    assert await p.add("swap:1", "ann", "c1") is True
    assert await p.add("swap:1", "ann", "c1") is False
    assert await p.connections("swap:1") == 1
    assert await p.remove("swap:1", "ann", "c1") is True
    assert await p.remove("swap:1", "ann", "c1") is False
    assert await p.users("swap:1") == []


async def test_removing_an_unknown_connection_changes_nothing(backend: Backend) -> None:
    p = await backend.instance()
    assert await p.remove("swap:1", "ann", "c1") is False
    await p.add("swap:1", "ann", "c1")
    assert await p.remove("swap:1", "ann", "c2") is False
    assert await p.remove("swap:2", "ann", "c1") is False
    assert await p.users("swap:1") == ["ann"]
    assert await p.connections("swap:1") == 1


async def test_users_are_sorted_and_rooms_are_apart(backend: Backend) -> None:
    p = await backend.instance()
    for user, connection in [("cy", "c1"), ("ann", "c2"), ("bo", "c3"), ("ann", "c4")]:
        await p.add("swap:1", user, connection)
    await p.add("swap:2", "dee", "c5")
    assert await p.users("swap:1") == ["ann", "bo", "cy"]
    assert await p.connections("swap:1") == 4
    assert await p.users("swap:2") == ["dee"]
    assert await p.connections("swap:2") == 1
    assert await p.users("swap:3") == []
    assert await p.connections("swap:3") == 0
    # One connection in two rooms is two entries, each with its own first and last.
    assert await p.add("swap:2", "ann", "c2") is True
    assert await p.remove("swap:1", "ann", "c2") is False
    assert await p.remove("swap:2", "ann", "c2") is True
    assert await p.users("swap:2") == ["dee"]


async def test_user_names_with_the_entry_separator(backend: Backend) -> None:
    p = await backend.instance()
    assert await p.add("swap:1", "a,b", "c1") is True
    assert await p.add("swap:1", "a,b", "c2") is False
    assert await p.users("swap:1") == ["a,b"]
    assert await p.remove("swap:1", "a,b", "c1") is False
    assert await p.remove("swap:1", "a,b", "c2") is True


async def test_close_forgets_at_once(backend: Backend) -> None:
    p = await backend.instance()
    await p.add("swap:1", "ann", "c1")
    await backend.close(p)
    again = await backend.instance()
    assert await again.users("swap:1") == []


# Several instances ----------------------------------------------------------------------


async def test_instances_share_presence_when_shared(backend: Backend) -> None:
    a, b = await backend.instance(), await backend.instance()
    assert a.shared is b.shared is backend.shared
    assert await a.add("swap:1", "ann", "a1") is True
    # Shared: ann is already there. Not shared: each instance counts its own.
    assert await b.add("swap:1", "ann", "b1") is not backend.shared
    await b.add("swap:1", "bo", "b2")
    if backend.shared:
        assert await a.users("swap:1") == await b.users("swap:1") == ["ann", "bo"]
        assert await a.connections("swap:1") == await b.connections("swap:1") == 3
    else:
        assert await a.users("swap:1") == ["ann"]
        assert await b.users("swap:1") == ["ann", "bo"]
    assert await a.remove("swap:1", "ann", "a1") is not backend.shared
    assert await b.remove("swap:1", "ann", "b1") is True
    assert await a.users("swap:1") == (["bo"] if backend.shared else [])


async def test_first_and_last_are_decided_once_across_instances(shared: Backend) -> None:
    instances = [await shared.instance() for _ in range(4)]
    firsts = await asyncio.gather(
        *(p.add("swap:race", "ann", f"c{i}") for i, p in enumerate(instances))
    )
    assert sorted(firsts) == [False, False, False, True]
    lasts = await asyncio.gather(
        *(p.remove("swap:race", "ann", f"c{i}") for i, p in enumerate(instances))
    )
    assert sorted(lasts) == [False, False, False, True]
    assert await instances[0].users("swap:race") == []


async def test_a_closed_instance_leaves_nothing_behind_in_redis(shared: Backend) -> None:
    a, b = await shared.instance(), await shared.instance()
    await a.add("swap:1", "ann", "a1")
    await a.add("swap:2", "ann", "a2")
    await b.add("swap:1", "bo", "b1")
    await shared.close(a)
    assert await b.users("swap:1") == ["bo"]
    assert await b.users("swap:2") == []
    await shared.close(b)
    assert await _keys(shared) == []


async def _keys(backend: Backend) -> list[str]:
    """Every key under the backend's prefix, on every Redis node."""
    found: list[str] = []
    for url in backend.nodes:
        client = Redis.from_url(url)
        try:
            found += [key.decode() async for key in client.scan_iter(f"{backend.prefix}:*")]
        finally:
            await client.aclose()
    return sorted(found)


# Expiry ----------------------------------------------------------------------------------


@contextlib.contextmanager
def owner_process(backend: Backend, *entries: tuple[str, str, str]) -> Iterator[int]:
    """An instance in a process of its own holding ``entries``; yields its pid."""
    command = [sys.executable, "-m", "tests.seams.presence_owner", backend.url, backend.prefix]
    command += [f"dead{next(_owners)}", str(DEAD_TTL), *("/".join(e) for e in entries)]
    proc = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", f"the owner process said {line!r}"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_a_dead_instance_drops_out_and_is_announced_once(shared: Backend) -> None:
    seen_b, seen_c = Changes(), Changes()
    b = await shared.instance(seen_b)
    c = await shared.instance(seen_c)
    await b.add("swap:d", "wes", "b1")
    entries = [("swap:d", "uma", "x1"), ("swap:d", "uma", "x2"), ("swap:d", "wes", "x3")]
    with owner_process(shared, *entries, ("swap:e", "uma", "x4")) as pid:
        assert await b.users("swap:d") == ["uma", "wes"]
        assert await c.connections("swap:d") == 4
        os.kill(pid, signal.SIGKILL)

    async def swept() -> bool:
        return (seen_b.seen + seen_c.seen).count(("swap:e", "uma", "leave")) > 0

    await eventually(swept, "the dead instance's users announced")
    assert await b.users("swap:d") == await c.users("swap:d") == ["wes"]
    assert await c.connections("swap:d") == 1
    assert await b.users("swap:e") == []
    # Each user who left is announced by one instance only; wes never left.
    assert sorted(seen_b.seen + seen_c.seen) == [
        ("swap:d", "uma", "leave"),
        ("swap:e", "uma", "leave"),
    ]
    # The dead instance's last user leaving is the first remaining user's "last".
    assert await b.add("swap:d", "uma", "b2") is True
    assert await b.remove("swap:d", "wes", "b1") is True


async def test_heartbeats_keep_a_quiet_instance_present(shared: Backend) -> None:
    seen = Changes()
    a = await shared.instance(ttl=1.0)
    b = await shared.instance(seen)
    await a.add("swap:q", "ann", "a1")
    await asyncio.sleep(3.5)  # entries of an instance that stopped beating expire in 1 s
    assert await b.users("swap:q") == ["ann"]
    assert seen.seen == []


# Redis unavailable -------------------------------------------------------------------------


class Partition:
    """A TCP proxy in front of Redis that can cut every connection through it.

    Redis keeps running and keeps its data: only this way to it is broken.
    """

    def __init__(self, port: int) -> None:
        self._port = port
        self._cut = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    def cut(self) -> None:
        self._cut = True
        for writer in list(self._writers):
            writer.transport.abort()

    def heal(self) -> None:
        self._cut = False

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.cut()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self._cut:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        async with asyncio.timeout(5):
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._writers.add(up_writer)
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.wait(pipes)
            self._tasks.difference_update(pipes)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def partition(own_redis: RedisServer) -> AsyncIterator[Partition]:
    proxy = Partition(own_redis.port)
    await proxy.start()
    yield proxy
    await proxy.close()


async def _local_view_while_down(p: Presence) -> None:
    """Redis unreachable: every call answers promptly, from this instance's own view."""
    async with asyncio.timeout(WITHIN):
        assert await p.users("swap:o") == ["ann"]
        assert await p.connections("swap:o") == 1
        assert await p.add("swap:o", "ann", "a2") is False
        assert await p.add("swap:o", "cy", "a3") is True
        assert await p.add("swap:o", "dee", "a4") is True
        assert await p.users("swap:o") == ["ann", "cy", "dee"]
        assert await p.connections("swap:o") == 4
        assert await p.remove("swap:o", "nobody", "a9") is False
        assert await p.remove("swap:o", "ann", "a1") is False
        assert await p.remove("swap:o", "dee", "a4") is True
        assert await p.users("swap:o") == ["ann", "cy"]


async def test_redis_down_then_back_without_its_data(own_redis: RedisServer) -> None:
    backend = Backend("redis", own_redis.url, [own_redis.url])
    try:
        seen = Changes()
        a = await backend.instance(seen)
        await a.add("swap:o", "ann", "a1")
        own_redis.stop()
        await _local_view_while_down(a)
        own_redis.start()  # empty: no persistence
        b = await backend.instance()

        async def back() -> bool:
            return await b.users("swap:o") == ["ann", "cy"]

        await eventually(back, "the entries put back after the outage")
        assert await b.connections("swap:o") == 2
        # Redis had lost them: both users are announced as back.
        assert sorted(seen.seen) == [("swap:o", "ann", "join"), ("swap:o", "cy", "join")]
    finally:
        await backend.close_all()


async def test_a_partition_then_heal_with_redis_data_kept(partition: Partition) -> None:
    """What changed on this instance while cut off reaches Redis after the heal."""
    backend = Backend("redis", partition.url, [partition.url])
    try:
        seen_a, seen_b = Changes(), Changes()
        a = await backend.instance(seen_a)
        b = await backend.instance(seen_b)
        await a.add("swap:o", "ann", "a1")
        await a.add("swap:o", "eve", "a5")
        await b.add("swap:o", "bo", "b1")
        partition.cut()
        assert await a.remove("swap:o", "eve", "a5") is True
        await _local_view_while_down(a)
        partition.heal()

        async def healed() -> bool:
            return await b.users("swap:o") == ["ann", "bo", "cy"]

        await eventually(healed, "the changes made while cut off")
        assert await b.connections("swap:o") == 3
        assert sorted(seen_a.seen) == [("swap:o", "cy", "join"), ("swap:o", "eve", "leave")]
    finally:
        await backend.close_all()


async def test_redis_loses_its_data_while_every_instance_is_connected(shared: Backend) -> None:
    """A flush (say, a restart without persistence between two heartbeats)."""
    seen = Changes()
    a = await shared.instance(seen)
    b = await shared.instance()
    await a.add("swap:f", "ann", "a1")
    await b.add("swap:f", "bo", "b1")
    await _flush(shared)

    async def back() -> bool:
        return await a.users("swap:f") == ["ann", "bo"]

    await eventually(back, "the entries put back after the flush")
    assert ("swap:f", "ann", "join") in seen.seen
    assert await a.connections("swap:f") == 2


async def _flush(backend: Backend) -> None:
    for url in backend.nodes:
        client = Redis.from_url(url)
        try:
            await client.flushall()
        finally:
            await client.aclose()


async def test_redis_cluster_down_then_back(redis_cluster: RedisClusterServer) -> None:
    backend = Backend("redis-cluster", redis_cluster.url, list(redis_cluster.urls))
    try:
        seen = Changes()
        a = await backend.instance(seen)
        await a.add("swap:o", "ann", "a1")
        await asyncio.to_thread(redis_cluster.stop)
        try:
            await _local_view_while_down(a)
        finally:
            await asyncio.to_thread(redis_cluster.start)
        b = await backend.instance()

        async def back() -> bool:
            return await b.users("swap:o") == ["ann", "cy"]

        await eventually(back, "the entries put back after the outage")
        assert sorted(seen.seen) == [("swap:o", "ann", "join"), ("swap:o", "cy", "join")]
    finally:
        await backend.close_all()
