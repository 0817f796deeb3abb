"""Socket.IO v5 packets, attachments, events as commands, and the outgoing codec."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import FrameError
from protocol.commands import Join, Rejected, Send
from protocol.errors import ErrorCode
from protocol.outgoing import ErrorReply, JoinResult, Message, MessagePush, OkReply, TypingPush
from protocol.socketio import (
    MAX_ATTACHMENTS,
    SIO_POLLING,
    SIO_WEBSOCKET,
    Decoder,
    Packet,
    PacketType,
    SocketIOError,
    connect_error,
    connected,
    decode_offset,
    encode,
    encode_offset,
    event_command,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
with_bytes = st.recursive(
    json_values | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
event_names = st.text(min_size=1, max_size=10).filter(
    lambda name: (
        name not in ("connect", "connect_error", "disconnect", "disconnecting")
        and name not in ("newListener", "removeListener")
    )
)
namespaces = st.sampled_from(["/", "/admin", "/a/b"])


def decode_all(messages: list[str | bytes]) -> Packet:
    decoder = Decoder()
    packet = None
    for message in messages:
        assert packet is None, "a packet completed before its last attachment"
        packet = decoder.text(message) if isinstance(message, str) else decoder.binary(message)
    assert packet is not None and not decoder.waiting
    return packet


def test_known_packets() -> None:
    assert decode_all(["0"]) == Packet(PacketType.CONNECT)
    assert decode_all(['0{"token":"t"}']) == Packet(PacketType.CONNECT, data={"token": "t"})
    assert decode_all(["0/admin,"]) == Packet(PacketType.CONNECT, "/admin")
    assert decode_all(['2["hi",1]']) == Packet(PacketType.EVENT, data=["hi", 1])
    assert decode_all(['2/x,12["hi"]']) == Packet(PacketType.EVENT, "/x", ["hi"], 12)
    assert decode_all(["37[1]"]) == Packet(PacketType.ACK, data=[1], id=7)
    assert decode_all(["1"]) == Packet(PacketType.DISCONNECT)


def test_binary_events_put_attachments_back() -> None:
    text = '51-["send",{"room":"swap:1","body":{"_placeholder":true,"num":0}}]'
    packet = decode_all([text, b"\x00\x01"])
    assert packet == Packet(
        PacketType.BINARY_EVENT, data=["send", {"room": "swap:1", "body": b"\x00\x01"}]
    )
    assert encode(Packet(PacketType.EVENT, data=packet.data)) == [text, b"\x00\x01"]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "9",
        "x",
        "٣[]",  # a digit, but not an ASCII one
        '2{"not":"a list"}',
        "2[]",
        '2["connect"]',
        "2[1",
        "1{}",
        "3[1]",  # an ack without an id
        '0["x"]',
        "4",
        '5["x"]',
        "5a-[]",
        f'5{MAX_ATTACHMENTS + 1}-["x"]',
        '2999999999999999999["x"]',
        "2/" + "n" * 200 + ',["x"]',
        '50-["x",{"_placeholder":true,"num":0}]',
    ],
)
def test_malformed_text_is_a_socketio_error(bad: str) -> None:
    with pytest.raises(SocketIOError):
        Decoder().text(bad)


def test_attachments_must_match_their_placeholders() -> None:
    decoder = Decoder()
    assert decoder.text('52-["x",{"_placeholder":true,"num":0}]') is None
    decoder.binary(b"a")
    with pytest.raises(SocketIOError, match="no placeholder"):
        decoder.binary(b"b")
    with pytest.raises(SocketIOError, match="no binary packet"):
        Decoder().binary(b"stray")
    waiting = Decoder()
    waiting.text('51-["x",{"_placeholder":true,"num":0}]')
    with pytest.raises(SocketIOError, match="awaited"):
        waiting.text('2["y"]')


def test_deeply_nested_data_decodes_without_recursion() -> None:
    depth = 900
    packet = decode_all(['2["x",' + "[" * depth + "]" * depth + "]"])
    assert packet.type is PacketType.EVENT


@given(
    st.sampled_from([PacketType.EVENT, PacketType.ACK]),
    namespaces,
    st.none() | st.integers(0, 2**53 - 1),
    event_names,
    st.lists(with_bytes, max_size=3),
)
@settings(max_examples=300, deadline=None)
def test_round_trip_with_attachments(
    kind: PacketType, namespace: str, ack: int | None, name: str, args: list[object]
) -> None:
    if kind is PacketType.ACK:
        ack = ack or 0
    data = [name, *args] if kind is PacketType.EVENT else args
    packet = Packet(kind, namespace, data, ack)
    decoded = decode_all(encode(packet))
    assert (decoded.namespace, decoded.data, decoded.id) == (namespace, data, ack)


@given(st.text(max_size=60))
@settings(max_examples=600, deadline=None)
def test_garbage_text_raises_only_frame_errors(text: str) -> None:
    with contextlib.suppress(FrameError):
        Decoder().text(text)


@given(st.lists(st.text(max_size=30) | st.binary(max_size=10), max_size=5))
@settings(max_examples=300, deadline=None)
def test_garbage_sequences_raise_only_frame_errors(messages: list[str | bytes]) -> None:
    decoder = Decoder()
    try:
        for message in messages:
            if isinstance(message, str):
                decoder.text(message)
            else:
                decoder.binary(message)
    except FrameError:
        pass


# Events as commands ---------------------------------------------------------------------


def event(*data: object, ack: int | None = None) -> Packet:
    return Packet(PacketType.EVENT, data=list(data), id=ack)


def test_an_event_is_the_op_of_its_name_and_the_ack_id_plus_one() -> None:
    command = event_command(event("join", {"room": "swap:1", "since": 3}, ack=0))
    assert isinstance(command, Join) and command.id == 1 and command.request.since == 3
    assert isinstance(event_command(event("join", "swap:1")), Join)


def test_message_is_send_and_needs_no_ack() -> None:
    command = event_command(event("message", {"room": "swap:1", "body": {"t": 1}}))
    assert isinstance(command, Send) and command.id is None and command.body_json == '{"t":1}'


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["nope", {}], "unknown op"),
        (["connect", {"token": "t"}], "CONNECT packet"),
        (["join", {}, {}], "one argument"),
        (["join", 5], "is an object"),
        (["send", {"room": "swap:1", "body": b"\x00"}], "JSON value"),
    ],
)
def test_bad_events_are_rejected_commands(data: list[object], message: str) -> None:
    command = event_command(Packet(PacketType.EVENT, data=data, id=4))
    assert isinstance(command, Rejected) and command.id == 5
    assert command.code is ErrorCode.BAD_REQUEST and message in command.message


@given(event_names, st.lists(with_bytes, max_size=2), st.none() | st.integers(0, 2**53 - 1))
@settings(max_examples=300, deadline=None)
def test_any_event_is_a_command_or_a_rejection(
    name: str, args: list[object], ack: int | None
) -> None:
    command = event_command(Packet(PacketType.EVENT, data=[name, *args], id=ack))
    assert command.id == (None if ack is None else ack + 1)


# What the server sends --------------------------------------------------------------------


def test_pushes_are_events_named_like_the_push() -> None:
    push = MessagePush(Message("swap:1", 3, "alice", '{"text":"hi"}', 1700))
    assert (
        SIO_WEBSOCKET.encode(push)
        == b'42["message",'
        + orjson.dumps(
            {"room": "swap:1", "seq": 3, "user": "alice", "body": {"text": "hi"}, "ts": 1700}
        )
        + b"]"
    )
    assert SIO_POLLING.encode(TypingPush("swap:1", "bob", True)) == (
        b'42["typing",{"room":"swap:1","user":"bob","active":true}]'
    )


def test_replies_are_acks_of_the_id_minus_one() -> None:
    result = JoinResult("swap:1", 2, "e1")
    assert SIO_WEBSOCKET.encode(OkReply(1, result)) == b"430" + orjson.dumps(
        [{"room": "swap:1", "seq": 2, "epoch": "e1", "missed": [], "recovered": False}]
    )
    assert SIO_WEBSOCKET.encode(ErrorReply(8, ErrorCode.FORBIDDEN, "no")) == (
        b'437[{"error":{"code":"forbidden","message":"no"}}]'
    )


def test_connect_answers() -> None:
    assert connected("s1", "p1") == '0{"sid":"s1","pid":"p1"}'
    assert orjson.loads(connect_error("bad token", ErrorCode.UNAUTHORIZED)[1:]) == {
        "message": "bad token",
        "data": {"code": "unauthorized"},
    }
    assert connect_error("Invalid namespace", namespace="/admin") == (
        '4/admin,{"message":"Invalid namespace"}'
    )


# Offsets ----------------------------------------------------------------------------------


def test_offsets_round_trip_and_refuse_garbage() -> None:
    positions = {"swap:1": 5, "user:alice": 0}
    assert decode_offset(encode_offset(positions)) == positions
    assert decode_offset("") == {}
    for bad in (None, 5, "swap:1", "swap:1=x", "nope=1", "swap:1=-1", "a b c"):
        with pytest.raises(SocketIOError):
            decode_offset(bad)


@given(st.text(max_size=80))
@settings(max_examples=300, deadline=None)
def test_garbage_offsets_raise_only_socketio_errors(text: str) -> None:
    with contextlib.suppress(SocketIOError):
        decode_offset(text)
