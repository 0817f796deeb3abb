"""JSON values kept exactly as the client sent them, or refused.

orjson reads an integer beyond 64 bits as a float (``2**70`` would come back as
``1.1805916207174113e+21``) and writes NaN and infinity (which msgpack can carry) as
``null``. Either would store something other than what the client sent, so ``loads``
keeps such integers exact and ``dumps`` refuses what JSON text cannot carry exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Final

import orjson

# An integer beyond 64 bits has at least 19 digits (-2**63 - 1 has 19, 2**64 has 20).
# Only text with such a run of digits (anywhere, even in a string) is read twice.
_RUN: Final = 19
_AS_DIGIT: Final = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
"""A translation table: every digit to ``0``, every other byte to a space."""
MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**64 - 1
"""The integers JSON bodies may hold: what orjson and msgpack both carry exactly."""


def loads(data: bytes | str) -> object:
    """Parse JSON text; raises ``ValueError`` (with the reason) when it is not JSON."""
    value = orjson.loads(data)
    if not _has_long_digit_run(data.encode() if isinstance(data, str) else data):
        return value
    # orjson accepted the text (it is stricter than json), so json reads the same
    # value, with integers exact instead of floats.
    try:
        exact: object = json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply to check its integers") from None
    return exact


def _has_long_digit_run(data: bytes) -> bool:
    # Any 19 bytes in a row include one at an offset divisible by 19, so when none of
    # those bytes is a digit (most frames) there is no such run. The checks run in C:
    # a regular expression took several times as long as parsing the frame.
    if b"0" not in data[::_RUN].translate(_AS_DIGIT):
        return False
    return b"0" * _RUN in data.translate(_AS_DIGIT)


def dumps(value: object) -> str:
    """The JSON text of a decoded value; ``ValueError`` says why it has none.

    Refused: integers beyond 64 bits, NaN and infinity, bytes, and map keys that are
    not strings.
    """
    try:
        text = orjson.dumps(value)
    except orjson.JSONEncodeError as error:
        if any(type(item) is int and not MIN_INT <= item <= MAX_INT for item in _scalars(value)):
            raise ValueError("integers must fit in 64 bits (send larger ones as strings)") from None
        raise ValueError(str(error)) from None
    # orjson writes NaN and infinity as null: look closer only when a null is there.
    if b"null" in text and any(
        type(item) is float and not math.isfinite(item) for item in _scalars(value)
    ):
        raise ValueError("NaN and infinity are not JSON numbers")
    return text.decode()


def _scalars(value: object) -> Iterator[object]:
    """Every value inside ``value`` that is not a list or a map (without recursion)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        else:
            yield item
