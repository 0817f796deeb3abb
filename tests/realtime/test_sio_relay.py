"""The Socket.IO relay between instances (``sio_relay.py``) on an in-process broker
network, the moved-session state (``sio_state.py``) and the polling send buffer.

Every failure must end in a reply the client recovers from: 400 "Session ID unknown"
when the owner is gone, 503 when it cannot be reached or does not answer in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from realtime.broker import BrokerHandler, BrokerUnavailable
from realtime.config import Settings
from realtime.metrics import Metrics
from realtime.sio import open_polling
from realtime.sio_polling import MAX_PACKETS_PER_POLL, PollingSink
from realtime.sio_relay import (
    GONE,
    Op,
    Relay,
    RelayFormatError,
    RelayTarget,
    Reply,
    Request,
    pack_reply,
    pack_request,
    unpack,
)
from realtime.sio_state import MovedFormatError, MovedSession, pack_moved, unpack_moved
from realtime.tasks import TaskSet
from tests.realtime.support import running_node, settings


class Network:
    """Instances' brokers by address: ``send_direct`` as Redis would do it."""

    def __init__(self) -> None:
        self.handlers: dict[str, BrokerHandler] = {}
        self.down = False


class NetBroker:
    shared = True

    def __init__(self, network: Network, address: str) -> None:
        self.network = network
        self.address = address

    async def send_direct(self, address: str, data: bytes) -> bool:
        await asyncio.sleep(0)  # a round trip
        if self.network.down:
            raise BrokerUnavailable("redis unavailable: test")
        handler = self.network.handlers.get(address)
        if handler is None:
            return False
        handler.on_direct(data)
        return True


class Instance:
    """A relay on the network, serving the targets in ``sessions``."""

    def __init__(self, network: Network, address: str, config: Settings) -> None:
        self.tasks = TaskSet()
        self.metrics = Metrics()
        self.sessions: dict[str, RelayTarget] = {}
        broker = NetBroker(network, address)
        self.relay = Relay(broker, config, self.metrics, self.tasks, self.sessions.get)  # type: ignore[arg-type]
        network.handlers[address] = self

    def on_event(self, room: str, event: object) -> None:
        raise AssertionError("no room events here")

    def on_resync(self) -> None:
        pass

    def on_direct(self, data: bytes) -> None:
        self.relay.on_direct(data)


class Target:
    """A polling session as the owner holds it; records what the relay did to it."""

    def __init__(self) -> None:
        self.posted: list[bytes] = []
        self.lost = 0
        self.polls_done: list[bool] = []
        self.hold = asyncio.Event()
        self.hold.set()

    @property
    def authenticated(self) -> bool:
        return True

    async def poll(self, key: str | None = None, *, relayed: bool = False) -> tuple[int, bytes]:
        await self.hold.wait()
        return 200, f"polled {key}".encode()

    def relayed_poll_done(self, delivered: bool) -> None:
        self.polls_done.append(delivered)

    async def post(self, body: bytes) -> tuple[int, bytes]:
        self.posted.append(body)
        return 200, b"ok"

    def probed(self) -> bool:
        return True

    def take(self) -> bytes | None:
        return b"state"

    def taken(self) -> None:
        pass

    def reply_lost(self) -> None:
        self.lost += 1


def config(**server: Any) -> Settings:
    base = settings()
    return dataclasses.replace(base, server=dataclasses.replace(base.server, **server))


@pytest.fixture
def network() -> Iterator[Network]:
    yield Network()


async def closed(*instances: Instance) -> None:
    for instance in instances:
        await instance.tasks.close()


async def test_a_relayed_request_is_carried_out_by_the_owner(network: Network) -> None:
    owner, other = Instance(network, "a", config()), Instance(network, "b", config())
    target = Target()
    owner.sessions["s.a"] = target
    try:
        assert await other.relay.request("a", Op.POST, "s.a", b"42[]") == Reply(200, b"ok", True)
        assert target.posted == [b"42[]"]
        assert await other.relay.request("a", Op.GET, "s.a", b"t1") == Reply(
            200, b"polled t1", True
        )
        await asyncio.sleep(0)
        assert target.polls_done == [True]
        assert (await other.relay.request("a", Op.TAKE, "s.a")).body == b"state"
        assert await other.relay.request("a", Op.GET, "gone.a") == GONE
    finally:
        await closed(owner, other)


async def test_an_owner_nobody_listens_for_is_gone_and_a_broker_outage_is_503(
    network: Network,
) -> None:
    other = Instance(network, "b", config())
    try:
        assert await other.relay.request("nobody", Op.GET, "s.x") == GONE
        assert await other.relay.request("b", Op.GET, "s.b") == GONE  # ours, so nowhere
        network.down = True
        reply = await other.relay.request("nobody", Op.POST, "s.x", b"3")
        assert reply.status == 503 and b"cannot be reached" in reply.body
    finally:
        await closed(other)


async def test_an_owner_that_does_not_answer_in_time_is_503(network: Network) -> None:
    owner = Instance(network, "a", config())
    other = Instance(network, "b", config(relay_timeout=0.2))
    target = Target()
    target.hold.clear()  # its long poll never ends
    owner.sessions["s.a"] = target
    try:
        reply = await other.relay.request("a", Op.POST, "s.a", b"3")
        assert reply.ok
        # A GET waits ping_interval + relay_timeout: too long for a test; a probe
        # (no long poll) that the owner never answers shows the same bound.
        del network.handlers["a"]
        network.handlers["a"] = _Silent()  # type: ignore[assignment]
        reply = await other.relay.request("a", Op.PROBE, "s.a")
        assert reply.status == 503 and b"did not answer" in reply.body
    finally:
        target.hold.set()
        await closed(owner, other)


class _Silent:
    """An instance that takes messages and never answers."""

    def on_direct(self, data: bytes) -> None:
        pass


async def test_requests_waiting_for_an_owner_that_dies_are_gone_before_their_timeout(
    network: Network,
) -> None:
    owner = Instance(network, "a", config())
    other = Instance(network, "b", config(relay_timeout=120.0))
    target = Target()
    target.hold.clear()
    owner.sessions["s.a"] = target
    watch = asyncio.create_task(other.relay.watch())
    try:
        polling = asyncio.ensure_future(other.relay.request("a", Op.GET, "s.a"))
        await asyncio.sleep(0.05)
        del network.handlers["a"]  # killed: its address has no listener any more
        # Without the watch this would wait ping_interval + 120 s and be a 503.
        assert await asyncio.wait_for(polling, 30) == GONE
    finally:
        watch.cancel()
        target.hold.set()
        await asyncio.wait([watch])
        await closed(owner, other)


async def test_relayed_requests_are_bounded_on_both_sides(network: Network) -> None:
    owner = Instance(network, "a", config(max_relayed=1))
    other = Instance(network, "b", config(max_relayed=1))
    target = Target()
    target.hold.clear()
    owner.sessions["s.a"] = target
    try:
        first = asyncio.ensure_future(other.relay.request("a", Op.GET, "s.a"))
        await asyncio.sleep(0.05)
        refused = await other.relay.request("a", Op.POST, "s.a", b"3")
        assert refused.status == 503 and b"too many" in refused.body
        third = Instance(network, "c", config())
        busy = await third.relay.request("a", Op.POST, "s.a", b"3")
        assert busy.status == 503 and b"too many" in busy.body
        assert target.posted == []
        target.hold.set()
        assert (await first).ok
        await closed(third)
    finally:
        target.hold.set()
        await closed(owner, other)


async def test_a_reply_that_reaches_nobody_ends_the_session_on_the_owner(
    network: Network,
) -> None:
    owner = Instance(network, "a", config())
    target = Target()
    owner.sessions["s.a"] = target
    try:
        # A requester that died before the answer came back.
        owner.relay.on_direct(pack_request(Request("dead", 1, Op.POST, "s.a", b"3")))
        owner.relay.on_direct(pack_request(Request("dead", 2, Op.GET, "s.a", b"t")))
        async with asyncio.timeout(5):
            while not (target.lost and target.polls_done):
                await asyncio.sleep(0.01)
        assert target.lost == 1 and target.polls_done == [False]
    finally:
        await closed(owner)


def test_relay_messages_round_trip_and_garbage_is_refused() -> None:
    request = Request("b-1234", 7, Op.GET, "sid.tag", b"t=1")
    assert unpack(pack_request(request)) == request
    assert unpack(pack_reply(7, Reply(400, b"{}", True))) == (7, Reply(400, b"{}", True))
    generator = random.Random(11)
    for _ in range(2000):
        data = bytes(generator.randrange(256) for _ in range(generator.randrange(1, 40)))
        with contextlib.suppress(RelayFormatError):  # anything else is a bug
            unpack(data)
    for bad in (b"", b"\x93\x05\x01\x02", pack_reply(1, Reply(1, b"")) + b"x"):
        with pytest.raises(RelayFormatError):
            unpack(bad)


def test_a_moved_session_round_trips_and_garbage_is_refused() -> None:
    state = MovedSession(
        "alice", 1e9, True, (("user:alice", 3), ("typing:x", None)), ("swap:1",), b"42[]\x1e"
    )
    assert unpack_moved(pack_moved(state)) == state
    anonymous = MovedSession(None, 0.0, False, (), (), b"")
    assert unpack_moved(pack_moved(anonymous)) == anonymous
    for bad in (b"", b"\x90", b"\x96\x01\x02\x03\x04\x05\x06"):
        with pytest.raises(MovedFormatError):
            unpack_moved(bad)


# The polling send buffer ------------------------------------------------------------------


def packets(count: int, tag: str) -> bytes:
    return b"".join(f"42[{tag}{n}]".encode() + b"\x1e" for n in range(count))


async def test_a_get_takes_whole_writes_and_cuts_only_a_write_too_large() -> None:
    sink = PollingSink()
    sink.write(packets(10, "a"))  # ten messages and their offset, say
    sink.write(packets(10, "b"))
    first = await sink.take(0)
    assert first == packets(10, "a")[:-1]  # not 16 packets cut through the second write
    assert await sink.take(0) == packets(10, "b")[:-1]
    big = packets(MAX_PACKETS_PER_POLL + 4, "c")
    sink.write(big)
    sink.write(packets(2, "d"))
    cut = await sink.take(0)
    assert cut.count(b"\x1e") == MAX_PACKETS_PER_POLL - 1
    rest = await sink.take(0)
    assert cut + b"\x1e" + rest + b"\x1e" == big + packets(2, "d")
    assert sink.get_write_buffer_size() == 0


async def test_a_get_sent_again_by_the_load_balancer_gets_the_same_answer(
    tmp_path: Path,
) -> None:
    async with running_node(tmp_path) as node:
        engine = open_polling(node, None)
        assert engine.polling is not None
        assert (await engine.poll("t0"))[1].startswith(b"0{")  # the open packet
        engine.polling.write(b'42["a"]\x1e')
        assert await engine.poll("t1") == (200, b'42["a"]')
        engine.polling.write(b'42["b"]\x1e')
        # The same request again (its first answer was lost on the way): same answer;
        # without the key it would take "b", and "a" would never reach the client.
        assert await engine.poll("t1") == (200, b'42["a"]')
        assert await engine.poll("t2") == (200, b'42["b"]')
        await engine.close()
