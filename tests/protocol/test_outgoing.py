"""Pushes added to the contract encode as documented, in both encodings."""

from __future__ import annotations

import pytest

from protocol import JSON, MSGPACK, Codec
from protocol.outgoing import LaggedPush


@pytest.mark.parametrize("codec", [JSON, MSGPACK])
def test_lagged_push_says_where_the_rooms_stream_stopped(codec: Codec) -> None:
    (message,) = codec.decode(codec.encode(LaggedPush("swap:1", 41)))
    assert message == {"push": "lagged", "room": "swap:1", "seq": 41}
