"""Command validation: every op, and the errors a client developer sees."""

from __future__ import annotations

from typing import get_args

import msgpack
import orjson
import pytest

from protocol import JSON, MSGPACK, Codec, ErrorCode, FrameError, decode_commands, parse_command
from protocol.commands import (
    COMMAND_TYPES,
    MAX_LIMIT,
    MAX_TOKEN,
    OPS,
    Command,
    Connect,
    History,
    Join,
    Leave,
    NotificationsArchive,
    NotificationsQuery,
    NotificationsRead,
    NotificationsReadAll,
    NotificationsSeen,
    Ping,
    PreferencesQuery,
    PreferencesSet,
    PresenceQuery,
    PushSubscribe,
    PushUnsubscribe,
    Read,
    Refresh,
    Rejected,
    RoomRequest,
    Send,
    Typing,
)


def rejected(message: dict[str, object]) -> Rejected:
    command = parse_command(message)
    assert isinstance(command, Rejected), command
    return command


def test_every_op_parses() -> None:
    assert parse_command(
        {
            "id": 1,
            "op": "connect",
            "token": "t",
            "rooms": [{"room": "swap:1", "since": 3, "epoch": "ab"}, "user:2"],
        }
    ) == Connect(1, "t", (RoomRequest("swap:1", 3, "ab"), RoomRequest("user:2")))
    assert parse_command({"id": 2, "op": "join", "room": "swap:1", "token": "x"}) == Join(
        2, RoomRequest("swap:1", token="x")
    )
    assert parse_command({"id": 3, "op": "leave", "room": "swap:1"}) == Leave(3, "swap:1")
    assert parse_command(
        {"id": 4, "op": "send", "room": "swap:1", "body": {"t": "hi"}, "client_id": "c1"}
    ) == Send(4, "swap:1", '{"t":"hi"}', "c1")
    assert parse_command({"id": 5, "op": "typing", "room": "swap:1", "active": True}) == Typing(
        5, "swap:1", True
    )
    assert parse_command(
        {"id": 6, "op": "history", "room": "swap:1", "before": 9, "limit": 10}
    ) == History(6, "swap:1", 9, None, 10)
    assert parse_command({"id": 7, "op": "read", "room": "swap:1", "seq": 4}) == Read(
        7, "swap:1", 4
    )
    assert parse_command({"id": 8, "op": "presence", "room": "swap:1"}) == PresenceQuery(
        8, "swap:1"
    )
    assert parse_command({"id": 9, "op": "notifications", "after": 5, "unread": True}) == (
        NotificationsQuery(9, 5, 50, True)
    )
    assert parse_command({"id": 10, "op": "notifications.read", "ids": [1, 2]}) == (
        NotificationsRead(10, ids=(1, 2))
    )
    assert parse_command({"id": 11, "op": "notifications.read", "up_to": 7}) == (
        NotificationsRead(11, up_to=7)
    )
    assert parse_command({"id": 12, "op": "refresh", "token": "t"}) == Refresh(12, "t")
    assert parse_command({"id": 13, "op": "ping"}) == Ping(13)
    assert parse_command({"op": "ping"}) == Ping(None)


def test_the_inbox_ops_parse_with_their_defaults() -> None:
    assert parse_command({"id": 1, "op": "notifications", "archived": True}) == (
        NotificationsQuery(1, archived=True)
    )
    assert parse_command({"id": 2, "op": "notifications.archive", "ids": [5]}) == (
        NotificationsArchive(2, (5,), archived=True)
    )
    assert parse_command({"id": 3, "op": "preferences.set", "preferences": {}}) == (
        PreferencesSet(3, {})
    )
    # An address is the backend's to set (over REST); null is no address given.
    refused = rejected({"id": 4, "op": "preferences.set", "preferences": {"email": "a@b.c"}})
    assert refused.code is ErrorCode.FORBIDDEN and "'email'" in refused.message
    assert parse_command(
        {"id": 5, "op": "preferences.set", "preferences": {"email": None, "mute": True}}
    ) == PreferencesSet(5, {"email": None, "mute": True})


def test_body_may_be_any_json_value() -> None:
    for body, text in [(None, "null"), (0, "0"), ("x", '"x"'), ([1, {"a": []}], '[1,{"a":[]}]')]:
        command = parse_command({"id": 1, "op": "send", "room": "swap:1", "body": body})
        assert isinstance(command, Send)
        assert command.body_json == text


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"id": 1, "op": "nope"}, "unknown op 'nope'"),
        ({"id": 1}, "'op' must be a string"),
        ({"id": 1, "op": "join"}, "'room' is required"),
        ({"id": 1, "op": "join", "room": "Swap:1"}, "namespace:key"),
        ({"id": 1, "op": "join", "room": "swap:"}, "namespace:key"),
        ({"id": 1, "op": "join", "room": "swap:" + "a" * 129}, "namespace:key"),
        ({"id": 1, "op": "join", "room": "swap:a/b"}, "namespace:key"),
        ({"id": 1, "op": "join", "room": "swap:1", "since": -1}, "'since' must be an integer"),
        ({"id": 1, "op": "join", "room": "swap:1", "since": "3"}, "'since' must be an integer"),
        ({"id": 1, "op": "join", "room": "swap:1", "since": True}, "'since' must be an integer"),
        ({"id": 1, "op": "send", "room": "swap:1"}, "'body' is required"),
        (
            {"id": 1, "op": "send", "room": "swap:1", "body": 1, "client_id": "x" * 65},
            "'client_id' must be",
        ),
        ({"id": 1, "op": "send", "room": "swap:1", "body": b"raw"}, "'body' must be a JSON value"),
        ({"id": 1, "op": "send", "room": "swap:1", "body": {1: 2}}, "'body' must be a JSON value"),
        ({"id": 1, "op": "typing", "room": "swap:1"}, "'active' must be true or false"),
        ({"id": 1, "op": "history", "room": "swap:1", "before": 5, "after": 1}, "not both"),
        ({"id": 1, "op": "history", "room": "swap:1", "limit": 0}, "'limit' must be"),
        ({"id": 1, "op": "read", "room": "swap:1"}, "'seq' is required"),
        ({"id": 1, "op": "notifications.read"}, "give 'ids'"),
        ({"id": 1, "op": "notifications.read", "ids": [1], "up_to": 2}, "give 'ids'"),
        ({"id": 1, "op": "notifications.read", "ids": [0]}, "'ids' must be"),
        ({"id": 1, "op": "notifications", "archived": "yes"}, "'archived' must be true or false"),
        ({"id": 1, "op": "notifications.seen"}, "'up_to' is required"),
        ({"id": 1, "op": "notifications.seen", "up_to": -1}, "'up_to' must be"),
        ({"id": 1, "op": "notifications.archive"}, "'ids' (a list of notification ids)"),
        ({"id": 1, "op": "notifications.archive", "ids": [1] * 1001}, "'ids' must be"),
        ({"id": 1, "op": "notifications.archive", "ids": [1], "archived": 1}, "'archived'"),
        ({"id": 1, "op": "preferences.set"}, "'preferences' (a map"),
        ({"id": 1, "op": "preferences.set", "preferences": [1]}, "'preferences' (a map"),
        ({"id": 1, "op": "refresh"}, "'token' is required"),
        ({"id": 1, "op": "connect", "rooms": "swap:1"}, "'rooms' must be a list"),
        ({"id": 1, "op": "connect", "rooms": [5]}, "each entry of 'rooms'"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_message(
    message: dict[str, object], fragment: str
) -> None:
    command = rejected(message)
    assert command.id == 1
    assert command.code is ErrorCode.BAD_REQUEST
    assert fragment in command.message


def test_rejection_names_the_op() -> None:
    assert rejected({"id": 3, "op": "join"}).message.startswith("join: ")


def test_limit_is_capped_not_refused() -> None:
    command = parse_command({"id": 1, "op": "history", "room": "swap:1", "limit": 10_000})
    assert isinstance(command, History)
    assert command.limit == MAX_LIMIT


@pytest.mark.parametrize(
    "message",
    [
        [1, 2],
        "text",
        5,
        None,
        {"id": 0, "op": "ping"},
        {"id": -1, "op": "ping"},
        {"id": "7", "op": "ping"},
        {"id": 1.5, "op": "ping"},
        {"id": True, "op": "ping"},
        {"id": 2**63, "op": "ping"},
        {"op": 5},
        {},
    ],
)
def test_not_a_message_is_a_frame_error(message: object) -> None:
    with pytest.raises(FrameError):
        parse_command(message)


def test_unknown_fields_are_ignored() -> None:
    assert parse_command({"id": 1, "op": "ping", "extra": [1]}) == Ping(1)


# Every command type, from the union itself: a new command without a sample here, an op
# name, or a parser fails these tests.

P256DH = "B" + "A" * 85 + "E"
AUTH = "A" * 21 + "Q"

WIRE_SAMPLES: dict[type, tuple[dict[str, object], object]] = {
    Connect: (
        {"token": "t", "rooms": ["swap:1", {"room": "swap:2", "since": 3, "epoch": "e"}]},
        Connect(1, "t", (RoomRequest("swap:1"), RoomRequest("swap:2", 3, "e"))),
    ),
    Join: (
        {"room": "swap:1", "since": 4, "epoch": "e", "token": "rt"},
        Join(1, RoomRequest("swap:1", 4, "e", "rt")),
    ),
    Leave: ({"room": "swap:1"}, Leave(1, "swap:1")),
    Send: (
        {"room": "swap:1", "body": {"n": [2**64 - 1, -(2**63)]}, "client_id": "c"},
        Send(1, "swap:1", '{"n":[18446744073709551615,-9223372036854775808]}', "c"),
    ),
    Typing: ({"room": "swap:1", "active": False}, Typing(1, "swap:1", False)),
    History: ({"room": "swap:1", "after": 2, "limit": 7}, History(1, "swap:1", None, 2, 7)),
    Read: ({"room": "swap:1", "seq": 9}, Read(1, "swap:1", 9)),
    PresenceQuery: ({"room": "swap:1"}, PresenceQuery(1, "swap:1")),
    NotificationsQuery: ({"limit": 3}, NotificationsQuery(1, None, 3, False)),
    NotificationsRead: ({"up_to": 5}, NotificationsRead(1, up_to=5)),
    Refresh: ({"token": "t"}, Refresh(1, "t")),
    Ping: ({}, Ping(1)),
    PushSubscribe: (
        {
            "subscription": {
                "endpoint": "https://push.example/s/1",
                "keys": {"p256dh": P256DH, "auth": AUTH},
            }
        },
        PushSubscribe(1, "https://push.example/s/1", P256DH, AUTH),
    ),
    PushUnsubscribe: (
        {"endpoint": "https://push.example/s/1"},
        PushUnsubscribe(1, "https://push.example/s/1"),
    ),
    NotificationsReadAll: ({}, NotificationsReadAll(1)),
    NotificationsSeen: ({"up_to": 8}, NotificationsSeen(1, 8)),
    NotificationsArchive: (
        {"ids": [3, 4], "archived": False},
        NotificationsArchive(1, (3, 4), archived=False),
    ),
    PreferencesQuery: ({}, PreferencesQuery(1)),
    PreferencesSet: (
        {"preferences": {"mute": True, "types": {"post_liked": {"push": False}}}},
        PreferencesSet(1, {"mute": True, "types": {"post_liked": {"push": False}}}),
    ),
}


def test_every_command_type_has_a_sample() -> None:
    assert set(COMMAND_TYPES) == set(get_args(Command))
    missing = [t.__name__ for t in get_args(Command) if t not in WIRE_SAMPLES]
    assert not missing, f"add a wire sample for {missing}"


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
@pytest.mark.parametrize("command_type", get_args(Command), ids=lambda t: t.__name__)
def test_every_command_type_round_trips_through_both_codecs(
    command_type: type[Command], codec: Codec
) -> None:
    args, expected = WIRE_SAMPLES[command_type]
    assert type(expected) is command_type
    message = {"id": 1, "op": command_type.op, **args}
    frame = orjson.dumps(message) if codec is JSON else msgpack.packb(message)
    assert decode_commands(codec, frame) == [expected]
    assert command_type.op in OPS


def test_op_names_are_distinct() -> None:
    assert len(OPS) == len(get_args(Command))


@pytest.mark.parametrize(
    "message",
    [
        {"id": 1, "op": "connect", "token": "x" * (MAX_TOKEN + 1)},
        {"id": 1, "op": "connect", "token": "é" * (MAX_TOKEN // 2 + 1)},
        {"id": 1, "op": "refresh", "token": "x" * (MAX_TOKEN + 1)},
        {"id": 1, "op": "join", "room": "swap:1", "token": "x" * (MAX_TOKEN + 1)},
        {"id": 1, "op": "connect", "rooms": [{"room": "swap:1", "token": "x" * (MAX_TOKEN + 1)}]},
    ],
    ids=["connect", "connect-multibyte", "refresh", "join", "connect-room-token"],
)
def test_a_token_over_16_kib_is_too_large_and_says_how_large(message: dict[str, object]) -> None:
    command = rejected(message)
    assert command.code is ErrorCode.TOO_LARGE
    assert command.message.endswith(f"bytes; at most {MAX_TOKEN}")
    assert f"'token' is {MAX_TOKEN + 1} bytes" in command.message or (
        f"'token' is {MAX_TOKEN + 2} bytes" in command.message
    )


def test_a_token_of_16_kib_is_accepted_by_the_parser() -> None:
    token = "x" * MAX_TOKEN
    assert parse_command({"id": 1, "op": "connect", "token": token}) == Connect(1, token)
