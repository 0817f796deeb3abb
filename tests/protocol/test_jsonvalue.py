"""Bodies are kept exactly as sent or refused: integers beyond 64 bits, NaN, infinity."""

from __future__ import annotations

import json
import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import JSON, MSGPACK, ErrorCode, decode_commands, jsonvalue
from protocol.commands import Rejected, Send
from protocol.jsonvalue import MAX_INT, MIN_INT

HUGE = 2**70  # 1180591620717411303424, which orjson alone reads as 1.1805916207174113e+21


@pytest.mark.parametrize("text", [b'{"n":1180591620717411303424}', '{"n":1180591620717411303424}'])
def test_loads_keeps_an_integer_beyond_64_bits_exact(text: bytes | str) -> None:
    assert jsonvalue.loads(text) == {"n": HUGE}
    assert type(jsonvalue.loads(text)["n"]) is int  # type: ignore[index]


@pytest.mark.parametrize(
    "text",
    [
        "[18446744073709551615,-9223372036854775808]",
        '"1180591620717411303424"',
        "12345678901234567890.5",
        "1.5e300",
        '{"a":[1,2.5,null,true,"x"]}',
    ],
)
def test_loads_reads_everything_else_as_orjson_does(text: str) -> None:
    assert jsonvalue.loads(text) == json.loads(text)


LONG = "12345678901234567890123"  # long digits: the text is read a second time


@pytest.mark.parametrize(
    "text",
    [
        f"[NaN,{LONG}]",
        f"[Infinity,{LONG}]",
        f"[1e400,{LONG}]",
        f'["\\ud800",{LONG}]',
        f"\ufeff[{LONG}]",
        f"[{LONG},]",
        f"[{LONG}] [1]",
        "[" * 2000 + LONG + "]" * 2000,
    ],
)
def test_loads_refuses_what_orjson_refuses_even_with_long_digits(text: str) -> None:
    with pytest.raises(ValueError):
        jsonvalue.loads(text)


def test_a_deep_text_with_long_digits_is_read_or_refused_never_a_crash() -> None:
    text = "[" * 1000 + LONG + "]" * 1000
    try:
        value = jsonvalue.loads(text)
    except ValueError as error:
        assert "nested too deeply" in str(error)
    else:
        for _ in range(1000):
            assert isinstance(value, list)
            (value,) = value
        assert value == int(LONG)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (HUGE, "64 bits"),
        ({"a": [1, -(2**63) - 1]}, "64 bits"),
        (2**64, "64 bits"),
        (math.nan, "NaN"),
        ([1.0, math.inf], "NaN and infinity"),
        ({"x": {"y": -math.inf}}, "NaN and infinity"),
        (b"raw", "bytes"),
        ({1: 2}, "str"),
    ],
)
def test_dumps_refuses_what_json_text_cannot_carry_exactly(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        jsonvalue.dumps(value)


def test_dumps_keeps_the_64_bit_range_and_nulls() -> None:
    assert (
        jsonvalue.dumps([MAX_INT, MIN_INT, None])
        == "[18446744073709551615,-9223372036854775808,null]"
    )


def send_frame(body_text: str) -> bytes:
    return f'{{"id":1,"op":"send","room":"swap:1","body":{body_text}}}'.encode()


def test_a_send_with_an_integer_beyond_64_bits_is_refused_over_json() -> None:
    (command,) = decode_commands(JSON, send_frame('{"n":1180591620717411303424}'))
    assert isinstance(command, Rejected)
    assert command.code is ErrorCode.BAD_REQUEST
    assert "64 bits" in command.message
    assert command.message.startswith("send: 'body' must be a JSON value")


def test_a_send_with_nan_is_refused_over_msgpack() -> None:
    frame = msgpack.packb({"id": 1, "op": "send", "room": "swap:1", "body": [1, math.nan]})
    (command,) = decode_commands(MSGPACK, frame)
    assert isinstance(command, Rejected)
    assert command.code is ErrorCode.BAD_REQUEST
    assert "NaN" in command.message


def test_long_digits_in_a_string_or_a_fraction_are_kept() -> None:
    text = '{"s":"1180591620717411303424","f":12345678901234567890.5}'
    (command,) = decode_commands(JSON, send_frame(text))
    assert isinstance(command, Send)
    assert json.loads(command.body_json) == json.loads(text)


def test_a_packed_frame_refuses_only_the_command_with_the_huge_integer() -> None:
    frame = (
        b'{"id":1,"op":"ping"}\n'
        b'{"id":2,"op":"send","room":"swap:1","body":99999999999999999999999}\n'
        b'{"id":3,"op":"send","room":"swap:1","body":9999999999999999999}'
    )
    ping, second, third = decode_commands(JSON, frame)
    assert ping.id == 1
    assert isinstance(second, Rejected)
    assert second.id == 2
    assert isinstance(third, Send)
    assert third.body_json == "9999999999999999999"


def _contains(value: object, bad: object) -> bool:
    if isinstance(value, dict):
        return any(_contains(v, bad) for v in value.values())
    if isinstance(value, list):
        return any(_contains(v, bad) for v in value)
    return bad(value)  # type: ignore[operator, no-any-return]


def _out_of_range(value: object) -> bool:
    return type(value) is int and not MIN_INT <= value <= MAX_INT


def _non_finite(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def any_values(
    integers: st.SearchStrategy[int], floats: st.SearchStrategy[float]
) -> st.SearchStrategy[object]:
    return st.recursive(
        st.none() | st.booleans() | integers | floats | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=6), children, max_size=4)
        ),
        max_leaves=12,
    )


@settings(max_examples=300, deadline=None)
@given(
    any_values(
        st.integers(-(2**80), 2**80) | st.integers(MAX_INT - 2, MAX_INT + 2),
        st.floats(allow_nan=False, allow_infinity=False),
    )
)
def test_a_json_body_is_kept_exactly_or_refused(body: object) -> None:
    (command,) = decode_commands(JSON, send_frame(json.dumps(body)))
    if isinstance(command, Send):
        assert json.loads(command.body_json) == body
        assert not _contains(body, _out_of_range)
    else:
        assert isinstance(command, Rejected)
        assert command.code is ErrorCode.BAD_REQUEST
        assert _contains(body, _out_of_range)


@settings(max_examples=300, deadline=None)
@given(any_values(st.integers(MIN_INT, MAX_INT), st.floats()))
def test_a_msgpack_body_is_kept_exactly_or_refused(body: object) -> None:
    frame = msgpack.packb({"id": 1, "op": "send", "room": "swap:1", "body": body})
    (command,) = decode_commands(MSGPACK, frame)
    if isinstance(command, Send):
        assert json.loads(command.body_json) == body
        assert not _contains(body, _non_finite)
    else:
        assert isinstance(command, Rejected)
        assert command.code is ErrorCode.BAD_REQUEST
        assert _contains(body, _non_finite)


@pytest.mark.parametrize("offset", range(20))
def test_a_huge_integer_is_found_at_every_offset(offset: int) -> None:
    text = '["' + "x" * offset + '",' + str(2**64) + "]"
    assert jsonvalue.loads(text) == ["x" * offset, 2**64]
    assert jsonvalue.loads(text.encode()) == ["x" * offset, 2**64]
