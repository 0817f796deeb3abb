"""The frame parser, in its three forms: ``FrameReader`` (pure), ``FastConnection``'s
generic read path, and ``CountingConnection``'s hot loop (before and after it
starts counting). Every case runs against each."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from loadtest.fastws import FastConnection
from loadtest.receiver import CountingConnection, Receiver, SendTimes
from loadtest.stats import Histogram
from loadtest.wsframes import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    FrameError,
    FrameReader,
    client_frame,
    header,
    parse_close,
)

from .support import RecordingTransport, Subscribers, opened, server_frame, transport_of

PROTOCOL = b"sec-websocket-protocol:"

Feed = Callable[[list[bytes]], tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]]
"""Chunks in → (messages, control frames seen)."""


def by_reader(chunks: list[bytes]) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    reader = FrameReader()
    messages: list[tuple[int, bytes]] = []
    controls: list[tuple[int, bytes]] = []
    for chunk in chunks:
        for opcode, payload in reader.feed(chunk):
            (controls if opcode in (PING, PONG, CLOSE) else messages).append((opcode, payload))
    return messages, controls


def by_connection(
    cls: type[FastConnection], counting: bool = False
) -> Callable[[list[bytes]], tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]]:
    def feed(chunks: list[bytes]) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        messages: list[tuple[int, bytes]] = []
        if counting:
            subscribers = Subscribers(Receiver(Histogram(), SendTimes(), PREFIX))
            connection: FastConnection = subscribers.add()
            connection.on_payload = lambda opcode, payload: messages.append((opcode, payload))
            for chunk in chunks:
                subscribers.send(0, chunk)
            subscribers.close()
        else:
            connection = opened(cls)
            connection.on_payload = lambda opcode, payload: messages.append((opcode, payload))
            for chunk in chunks:
                connection.data_received(chunk)
        # What the connection answered stands for the control frames it saw.
        controls = []
        for opcode, payload in transport_of(connection).take():
            controls.append((PING if opcode == PONG else opcode, payload))
        return messages, controls

    return feed


PREFIX = b'{"push":"message","room":"r","seq":'
FEEDS = {
    "reader": by_reader,
    "connection": by_connection(FastConnection),
    "counting-before-adoption": by_connection(CountingConnection),
    "receiver": by_connection(CountingConnection, counting=True),
}


@pytest.fixture(params=list(FEEDS))
def feed(request: pytest.FixtureRequest) -> Feed:
    return FEEDS[request.param]


async def test_several_frames_in_one_read(feed: Feed) -> None:
    data = (
        server_frame(TEXT, b'{"a":1}')
        + server_frame(BINARY, b"\x00\x01")
        + server_frame(TEXT, b"x" * 300)
    )
    messages, controls = feed([data])
    assert messages == [(TEXT, b'{"a":1}'), (BINARY, b"\x00\x01"), (TEXT, b"x" * 300)]
    assert controls == []


async def test_frames_split_at_every_byte(feed: Feed) -> None:
    data = (
        server_frame(TEXT, b"hello")
        + server_frame(TEXT, b"y" * 200)
        + server_frame(TEXT, b"z" * 70000)
    )
    split = [data[i : i + 1] for i in range(min(len(data), 400))] + [data[400:]]
    messages, _ = feed(split)
    assert messages == [(TEXT, b"hello"), (TEXT, b"y" * 200), (TEXT, b"z" * 70000)]


@pytest.mark.parametrize(
    ("size", "form"),
    [(0, "7"), (125, "7"), (126, "16"), (65535, "16"), (65536, "64"), (5, "16"), (5, "64")],
)
async def test_lengths(feed: Feed, size: int, form: str) -> None:
    payload = bytes(i % 251 for i in range(size))
    messages, _ = feed([server_frame(BINARY, payload, length=form)])
    assert messages == [(BINARY, payload)]


async def test_fragmented_message_with_a_ping_between(feed: Feed) -> None:
    chunks = [
        server_frame(TEXT, b"hel", fin=False),
        server_frame(CONTINUATION, b"lo ", fin=False) + server_frame(PING, b"are you there"),
        server_frame(CONTINUATION, b"world"),
        server_frame(BINARY, b"next"),
    ]
    messages, controls = feed(chunks)
    assert messages == [(TEXT, b"hello world"), (BINARY, b"next")]
    assert controls == [(PING, b"are you there")]


async def test_close(feed: Feed) -> None:
    payload = (1012).to_bytes(2, "big") + b"restarting"
    messages, controls = feed([server_frame(TEXT, b"last") + server_frame(CLOSE, payload)])
    assert messages == [(TEXT, b"last")]
    assert controls[0][0] == CLOSE
    assert parse_close(controls[0][1])[0] == 1012


@pytest.mark.parametrize("adopted", [False, True])
async def test_a_connection_answers_ping_and_close(adopted: bool) -> None:
    subscribers = Subscribers(Receiver(Histogram(), SendTimes(), PREFIX))
    connection = subscribers.add() if adopted else opened(FastConnection)

    def send(data: bytes) -> None:
        if adopted:
            subscribers.send(0, data)
        else:
            connection.data_received(data)

    transport = transport_of(connection)
    send(server_frame(PING, b"p1"))
    assert transport.take() == [(PONG, b"p1")]
    send(server_frame(CLOSE, (4009).to_bytes(2, "big") + b"too slow"))
    assert transport.take() == [(CLOSE, (4009).to_bytes(2, "big"))]
    assert (connection.close_code, connection.close_reason) == (4009, "too slow")
    assert transport.closing
    subscribers.close()


async def test_frames_that_arrive_with_the_handshake_response() -> None:
    connection = opened(FastConnection, after_head=server_frame(TEXT, b"early") + b"\x81")
    messages: list[bytes] = []
    connection.on_payload = lambda opcode, payload: messages.append(payload)
    connection.data_received(b"\x04late")
    assert messages == [b"early", b"late"]  # kept until someone listens


@pytest.mark.parametrize(("subprotocols", "header"), [((), None), (("rt1.json",), b"rt1.json")])
async def test_the_request_offers_a_subprotocol_only_when_there_is_one(
    subprotocols: tuple[str, ...], header: bytes | None
) -> None:
    connection = FastConnection("ws://127.0.0.1:1/socket.io/", {}, subprotocols)
    transport = RecordingTransport()
    connection.connection_made(transport)
    lines = bytes(transport.written).split(b"\r\n")
    offered = [
        line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(PROTOCOL)
    ]
    # An empty header (what [] gave) is refused with a 400 by Node's ws.
    assert offered == ([header] if header else [])


@pytest.mark.parametrize(
    "bad",
    [
        b"\x81\x85abcd" + b"hello",  # masked
        server_frame(TEXT, b"x", rsv=0x40),
        server_frame(CONTINUATION, b"x"),
        server_frame(PING, b"x" * 126),
        server_frame(PING, b"x", fin=False),
        server_frame(0x3, b"x"),
        server_frame(TEXT, b"a", fin=False) + server_frame(TEXT, b"b"),
    ],
)
async def test_protocol_errors(bad: bytes) -> None:
    with pytest.raises(FrameError):
        FrameReader().feed(bad)
    connections = [opened(FastConnection), opened(CountingConnection)]
    for connection in connections:
        connection.data_received(bad)
    subscribers = Subscribers(Receiver(Histogram(), SendTimes(), PREFIX))
    connections.append(subscribers.add())
    subscribers.send(0, bad)
    for connection in connections:
        assert transport_of(connection).aborted
        assert connection.close_code == 1002
    subscribers.close()


def test_skipped_messages_are_dropped_unread() -> None:
    presence = server_frame(TEXT, b'{"push":"presence","user":"u"}')
    message = server_frame(TEXT, b'{"push":"message","seq":1}')
    frames = FrameReader().feed(presence + message + presence, (b'{"push":"presence"',))
    assert frames == [(TEXT, b'{"push":"message","seq":1}')]


def test_header_needs_the_whole_frame() -> None:
    frame = server_frame(TEXT, b"x" * 300)
    for end in range(len(frame)):
        assert header(frame[:end], 0) is None
    assert header(frame, 0) == (4, 304)


def test_client_frames_are_masked_and_round_trip() -> None:
    from .support import client_frames

    for size in (0, 10, 125, 126, 65535, 65536):
        payload = bytes(i % 7 for i in range(size))
        assert client_frames(client_frame(TEXT, payload)) == [(TEXT, payload)]
