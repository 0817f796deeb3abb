"""Engine.IO v4 packets and payloads: known bytes, round trips, and fuzzing (hypothesis)."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import FrameError
from protocol.engineio import (
    MAX_PACKETS_PER_PAYLOAD,
    EngineIOError,
    Packet,
    PacketType,
    Request,
    RequestError,
    RequestRefused,
    decode_packet,
    decode_payload,
    encode_packet,
    encode_payload,
    error_body,
    open_packet,
    parse_request,
)

packets = st.one_of(
    st.builds(Packet, st.sampled_from(list(PacketType)), st.text(max_size=30)),
    st.builds(Packet, st.just(PacketType.MESSAGE), st.binary(max_size=30)),
)


def test_known_packets_decode() -> None:
    assert decode_packet("2") == Packet(PacketType.PING)
    assert decode_packet("2probe") == Packet(PacketType.PING, "probe")
    assert decode_packet('42["x"]') == Packet(PacketType.MESSAGE, '2["x"]')
    assert decode_packet(b"\x01\x02") == Packet(PacketType.MESSAGE, b"\x01\x02")


def test_a_payload_splits_on_the_record_separator_and_reads_base64() -> None:
    body = b'4hello\x1e2\x1ebAQID\x1e42["a",1]'
    assert decode_payload(body) == [
        Packet(PacketType.MESSAGE, "hello"),
        Packet(PacketType.PING),
        Packet(PacketType.MESSAGE, b"\x01\x02\x03"),
        Packet(PacketType.MESSAGE, '2["a",1]'),
    ]
    assert encode_payload(decode_payload(body)) == body


def test_the_open_packet_carries_milliseconds() -> None:
    packet = open_packet(
        "abc", upgrades=["websocket"], ping_interval=25, ping_timeout=20, max_payload=1000
    )
    assert packet.type is PacketType.OPEN
    assert orjson.loads(packet.data) == {
        "sid": "abc",
        "upgrades": ["websocket"],
        "pingInterval": 25000,
        "pingTimeout": 20000,
        "maxPayload": 1000,
    }


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x1e", b"7x", b"bnot base64!", b"4ok\x1e", b"\xff\xfe", b"x" * 3],
)
def test_malformed_payloads_are_engineio_errors(bad: bytes) -> None:
    with pytest.raises(EngineIOError):
        decode_payload(bad)


def test_a_payload_of_too_many_packets_is_refused() -> None:
    with pytest.raises(EngineIOError, match="at most"):
        decode_payload(b"\x1e".join([b"6"] * (MAX_PACKETS_PER_PAYLOAD + 1)))


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({}, RequestError.UNSUPPORTED_PROTOCOL_VERSION),
        ({"EIO": "3", "transport": "polling"}, RequestError.UNSUPPORTED_PROTOCOL_VERSION),
        ({"EIO": "4"}, RequestError.UNKNOWN_TRANSPORT),
        ({"EIO": "4", "transport": "flash"}, RequestError.UNKNOWN_TRANSPORT),
        ({"EIO": "4", "transport": "polling", "sid": ""}, RequestError.UNKNOWN_SID),
    ],
)
def test_requests_are_checked(query: dict[str, str], error: RequestError) -> None:
    with pytest.raises(RequestRefused) as refused:
        parse_request(query)
    assert refused.value.error is error
    assert orjson.loads(error_body(error)) == {"code": error.value, "message": error.message}


def test_a_good_request() -> None:
    assert parse_request({"EIO": "4", "transport": "websocket", "sid": "s.x"}) == Request(
        "websocket", "s.x"
    )


@given(packets)
@settings(max_examples=300, deadline=None)
def test_websocket_round_trip(packet: Packet) -> None:
    assert decode_packet(encode_packet(packet)) == packet


@given(st.lists(packets.filter(lambda p: "\x1e" not in str(p.data)), min_size=1, max_size=8))
@settings(max_examples=300, deadline=None)
def test_payload_round_trip(items: list[Packet]) -> None:
    assert decode_payload(encode_payload(items)) == items


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_garbage_payloads_raise_only_frame_errors(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode_payload(data)


@given(st.text(max_size=50))
@settings(max_examples=500, deadline=None)
def test_garbage_text_packets_raise_only_frame_errors(text: str) -> None:
    with contextlib.suppress(FrameError):
        decode_packet(text)
