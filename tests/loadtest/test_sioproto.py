"""Engine.IO / Socket.IO packets: what the Socket.IO client reads and writes."""

from __future__ import annotations

import orjson
import pytest

from loadtest.sioproto import (
    CONNECT,
    PONG,
    Kind,
    Packet,
    PacketError,
    connect_packet,
    event,
    parse,
)


@pytest.mark.parametrize(
    ("raw", "packet"),
    [
        (
            b'0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000}',
            Packet(
                Kind.OPEN,
                {"sid": "abc", "upgrades": [], "pingInterval": 25000, "pingTimeout": 20000},
            ),
        ),
        (b"1", Packet(Kind.CLOSE)),
        (b"2", Packet(Kind.PING)),
        (b"2probe", Packet(Kind.PING, "probe")),
        (b"3", Packet(Kind.PONG)),
        (b"6", Packet(Kind.NOOP)),
        (b'40{"sid":"x1"}', Packet(Kind.CONNECT, {"sid": "x1"})),
        (b"40", Packet(Kind.CONNECT)),
        (b"41", Packet(Kind.DISCONNECT)),
        (b'44{"message":"nope"}', Packet(Kind.CONNECT_ERROR, {"message": "nope"})),
        (b'42["joined","swap:1"]', Packet(Kind.EVENT, ["joined", "swap:1"])),
        (b'42/chat,["hi",1]', Packet(Kind.EVENT, ["hi", 1], namespace="/chat")),
        (b'4212["ask",{"a":1}]', Packet(Kind.EVENT, ["ask", {"a": 1}], ack=12)),
        (b'42/chat,7["ask"]', Packet(Kind.EVENT, ["ask"], namespace="/chat", ack=7)),
        (b"437[true]", Packet(Kind.ACK, [True], ack=7)),
        (b"40/chat,", Packet(Kind.CONNECT, namespace="/chat")),
    ],
)
def test_parse(raw: bytes, packet: Packet) -> None:
    assert parse(raw) == packet


def test_event_name_and_args() -> None:
    packet = parse(b'42["message",{"seq":3,"body":{"t":1}}]')
    assert packet.event == "message"
    assert packet.args == [{"seq": 3, "body": {"t": 1}}]
    assert parse(b"2").event is None and parse(b"2").args == []


@pytest.mark.parametrize(
    "raw", [b"", b"7", b"4", b"49", b"42", b"42{}", b"42[]", b"42[1", b"0{bad", b'45["x"]']
)
def test_bad_packets(raw: bytes) -> None:
    with pytest.raises(PacketError):
        parse(raw)


def test_encode() -> None:
    assert CONNECT == b"40" and PONG == b"3"
    assert connect_packet() == connect_packet({}) == b"40"
    assert connect_packet({"token": "a.b.c"}) == b'40{"token":"a.b.c"}'
    assert event("join", "swap:1") == b'42["join","swap:1"]'
    body = orjson.Fragment(b'{"t":1,"p":"x"}')
    sent = event("send", {"room": "r", "seq": 2, "body": body})
    assert sent == b'42["send",{"room":"r","seq":2,"body":{"t":1,"p":"x"}}]'
    assert event("ask", 1, ack=5) == b'425["ask",1]'
    assert parse(event("join", "r")) == Packet(Kind.EVENT, ["join", "r"])
