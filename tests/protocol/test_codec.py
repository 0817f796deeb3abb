"""Codecs: round trips, packed frames, and property tests (hypothesis)."""

from __future__ import annotations

import contextlib
import json

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import JSON, MSGPACK, Codec, FrameError, ProtocolError, decode_commands
from protocol.commands import Send
from protocol.errors import ErrorCode
from protocol.outgoing import (
    ErrorReply,
    JoinResult,
    Message,
    MessagePush,
    NotificationItem,
    NotificationPush,
    OkReply,
)

CODECS = [JSON, MSGPACK]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def decode_one(codec: Codec, frame: bytes) -> object:
    (message,) = codec.decode(frame)
    return message


@pytest.mark.parametrize("codec", CODECS)
def test_push_round_trip_keeps_the_body_exactly(codec: Codec) -> None:
    push = MessagePush(Message("swap:1", 3, "alice", '{"text":"hé","n":[1,2.5]}', 1700, "c1"))
    assert decode_one(codec, codec.encode(push)) == {
        "push": "message",
        "room": "swap:1",
        "seq": 3,
        "user": "alice",
        "body": {"text": "hé", "n": [1, 2.5]},
        "ts": 1700,
        "client_id": "c1",
    }


@pytest.mark.parametrize("codec", CODECS)
def test_replies_encode_as_the_contract_says(codec: Codec) -> None:
    ok = OkReply(7, JoinResult("swap:1", 5, "e1", [], True, ["bob"]))
    assert decode_one(codec, codec.encode(ok)) == {
        "id": 7,
        "ok": {
            "room": "swap:1",
            "seq": 5,
            "epoch": "e1",
            "missed": [],
            "recovered": True,
            "presence": ["bob"],
        },
    }
    error = ErrorReply(8, ErrorCode.FORBIDDEN, "no")
    assert decode_one(codec, codec.encode(error)) == {
        "id": 8,
        "error": {"code": "forbidden", "message": "no"},
    }


@pytest.mark.parametrize("codec", CODECS)
def test_a_frame_may_pack_several_messages(codec: Codec) -> None:
    pushes = [NotificationPush(NotificationItem(i, "like", "{}", None, 5)) for i in range(3)]
    frame = (b"\n" if codec is JSON else b"").join(codec.encode(push) for push in pushes)
    assert [m["id"] for m in codec.decode(frame)] == [0, 1, 2]  # type: ignore[index]


def test_json_frames_with_newline_separated_commands() -> None:
    frame = b'{"id":1,"op":"ping"}\n{"id":2,"op":"ping"}\n'
    assert [c.id for c in decode_commands(JSON, frame)] == [1, 2]


def test_pretty_printed_json_is_one_message() -> None:
    assert decode_commands(JSON, b'{\n  "id": 1,\n  "op": "ping"\n}')[0].id == 1


def test_msgpack_concatenated_commands() -> None:
    frame = msgpack.packb({"id": 1, "op": "ping"}) + msgpack.packb({"id": 2, "op": "ping"})
    assert [c.id for c in decode_commands(MSGPACK, frame)] == [1, 2]


@pytest.mark.parametrize(
    ("codec", "frame"),
    [
        (JSON, b"{"),
        (JSON, b""),
        (JSON, b"\xff\xfe"),
        (JSON, b'{"a":1}\n{'),
        (MSGPACK, b""),
        (MSGPACK, b"\xc1"),
        (MSGPACK, msgpack.packb({"id": 1})[:-1]),
        (MSGPACK, msgpack.packb({"id": 1}) + b"\x81"),
    ],
)
def test_garbage_is_a_frame_error(codec: Codec, frame: bytes) -> None:
    with pytest.raises(FrameError):
        decode_commands(codec, frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(CODECS))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes, codec: Codec) -> None:
    with contextlib.suppress(ProtocolError):
        decode_commands(codec, data)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "id",
                "op",
                "room",
                "body",
                "since",
                "token",
                "ids",
                "rooms",
                "active",
                "limit",
                "before",
                "after",
            ]
        ),
        json_values,
        max_size=6,
    ),
    st.sampled_from(CODECS),
)
def test_arbitrary_maps_raise_only_protocol_errors(
    message: dict[str, object], codec: Codec
) -> None:
    frame = orjson.dumps(message) if codec is JSON else msgpack.packb(message)
    with contextlib.suppress(ProtocolError):
        decode_commands(codec, frame)


# Any number at all: integers beyond 64 bits (JSON text only: msgpack cannot carry
# them), NaN and infinity (msgpack only: JSON text cannot).
any_numbers = st.recursive(
    st.none()
    | st.integers()
    | st.integers(2**64 - 2, 2**64 + 2)
    | st.floats()
    | st.text(alphabet="0123456789", max_size=25),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["id", "op", "room", "body", "since", "seq", "ids", "limit", "after"]),
        any_numbers,
        max_size=6,
    ),
    st.sampled_from(CODECS),
    st.sampled_from(["send", "join", "read", "history", "notifications.read"]),
)
def test_arbitrary_numbers_raise_only_protocol_errors(
    message: dict[str, object], codec: Codec, op: str
) -> None:
    message.setdefault("op", op)
    try:
        frame = json.dumps(message, allow_nan=False) if codec is JSON else msgpack.packb(message)
    except (ValueError, OverflowError):
        return  # a number this encoding cannot carry
    with contextlib.suppress(ProtocolError):
        decode_commands(codec, frame)


@settings(max_examples=200, deadline=None)
@given(json_values, st.sampled_from(CODECS))
def test_send_body_round_trips_through_both_codecs(body: object, codec: Codec) -> None:
    frame = (orjson.dumps if codec is JSON else msgpack.packb)(
        {"id": 1, "op": "send", "room": "swap:1", "body": body}
    )
    (command,) = decode_commands(codec, frame)
    assert isinstance(command, Send)
    push = MessagePush(Message("swap:1", 1, "u", command.body_json, 0))
    decoded = decode_one(codec, codec.encode(push))
    assert decoded["body"] == orjson.loads(command.body_json)  # type: ignore[index]
    assert decoded["body"] == body  # type: ignore[index]
