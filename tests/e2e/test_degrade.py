"""Degrade before disconnect over real sockets: a reader that stops reading while a
room is flooded loses its typing pushes first, then gets one ``lagged`` push instead
of a 4009 close, and recovers every message by joining again with ``since``. What
still fills its buffer past the hard mark (here: replies it does not read) closes it
with 4009.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client import Client, close_all
from tests.e2e.helpers_auth import TOO_SLOW, running, server_process
from tests.e2e.raw_peer import RawPeer
from tests.e2e.support import metric
from tests.server import ServerProcess, unique

HARD, SOFT = 262144, 65536
BODY = "z" * 30000
CONFIG = """
[namespaces.open]
join = "anyone"
send = "anyone"
presence = true
typing = true
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = server_process(
        tmp_path_factory,
        "degrade",
        env={
            "REALTIME_SERVER_SEND_BUFFER_BYTES": str(HARD),
            "REALTIME_SERVER_SEND_BUFFER_SOFT_BYTES": str(SOFT),
            "REALTIME_SERVER_RATE_LIMIT": "5000",
            "REALTIME_SERVER_RATE_BURST": "5000",
            "REALTIME_SERVER_CLOSE_TIMEOUT": "20",
            "REALTIME_DELIVERY_RECOVERY_LIMIT": "1000",
            "REALTIME_STORAGE_SQLITE_SYNCHRONOUS": "NORMAL",
        },
        config_text=CONFIG,
    )
    with running(process):
        yield process


async def counter(server: ServerProcess, name: str, **labels: str) -> float:
    status, text = await server.rest("GET", "/metrics", key=None)
    assert status == 200
    return metric(text, name, **labels)


async def test_a_reader_that_stops_reading_gets_lagged_not_4009_and_recovers_with_since(
    server: ServerProcess,
) -> None:
    room = unique("open:")
    sender = await Client.connected(server.ws_url, server.token(unique("sender")), rooms=[room])
    typist = await Client.connected(server.ws_url, server.token(unique("typist")), rooms=[room])
    # A small receive buffer, and nothing read from here on until the flood is over.
    slow = await RawPeer.open(server.ws_url, receive_buffer=4096)
    try:
        await slow.call(1, "connect", token=server.token(unique("slow")), rooms=[room])
        lagged_before = await counter(server, "realtime_lagged_total")
        slow_before = await counter(server, "realtime_slow_consumers_total")
        dropped_before = await counter(server, "realtime_pushes_dropped_total", kind="typing")
        sent = 0
        for _ in range(100):
            # A message, then two typing pushes: the first typing push after the
            # write that passed the soft mark is left out, the message after it
            # stops the room.
            for _ in range(5):
                sent += 1
                await sender.call("send", room=room, body=BODY)
                await typist.call("typing", room=room, active=True)
                await typist.call("typing", room=room, active=False)
            if await counter(server, "realtime_lagged_total") > lagged_before:
                break
        assert await counter(server, "realtime_lagged_total") == lagged_before + 1
        dropped = await counter(server, "realtime_pushes_dropped_total", kind="typing")
        assert dropped > dropped_before
        for _ in range(5):  # more while it lags: not sent to it
            sent += 1
            await sender.call("send", room=room, body=BODY)

        # It reads again: a gapless prefix of the room, then where it stopped.
        while not slow.pushes("lagged"):
            assert await slow.read(), "closed instead of lagged"
        (lagged,) = slow.pushes("lagged")
        got = [m["seq"] for m in slow.pushes("message")]
        assert got == list(range(1, lagged["seq"] + 1)) and got[-1] < sent
        assert lagged == {"push": "lagged", "room": room, "seq": got[-1]}
        assert slow.close_code is None
        # Typing went first: fewer typing pushes reached it than messages.
        assert len(slow.pushes("typing")) < 2 * len(got)

        # Joining again with since: the rest in the reply, then the live stream.
        joined = await slow.call(2, "join", room=room, since=lagged["seq"])
        assert joined["recovered"] is True and joined["seq"] == sent
        assert [m["seq"] for m in joined["missed"]] == list(range(lagged["seq"] + 1, sent + 1))
        assert (await sender.call("send", room=room, body="after"))["seq"] == sent + 1
        while not any(m["seq"] == sent + 1 for m in slow.pushes("message")):
            assert await slow.read()
        assert [m["seq"] for m in slow.pushes("message")] == [*got, sent + 1]
        assert len(slow.pushes("lagged")) == 1
        assert await counter(server, "realtime_slow_consumers_total") == slow_before
    finally:
        await slow.abort()
        await close_all(sender, typist)


async def test_past_the_hard_mark_it_is_still_closed_with_4009(server: ServerProcess) -> None:
    room = unique("open:")
    sender = await Client.connected(server.ws_url, server.token(unique("sender")), rooms=[room])
    slow = await RawPeer.open(server.ws_url, receive_buffer=4096)
    try:
        await slow.call(1, "connect", token=server.token(unique("slow")), rooms=[room])
        for _ in range(20):
            await sender.call("send", room=room, body=BODY)
        slow_before = await counter(server, "realtime_slow_consumers_total")
        # Replies are never left out: history pages it does not read pass the hard mark.
        for command_id in range(2, 202):
            slow.send({"id": command_id, "op": "history", "room": room, "limit": 20})
        assert await slow.until_closed(timeout=30) == TOO_SLOW
        assert await counter(server, "realtime_slow_consumers_total") == slow_before + 1
        assert await sender.call("ping") == {}
    finally:
        await slow.abort()
        await close_all(sender)
