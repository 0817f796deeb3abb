"""Reconnect advice in a close reason: built, parsed, always within 123 bytes."""

from __future__ import annotations

import pytest

from protocol.advice import (
    MAX_REASON_BYTES,
    ReconnectAdvice,
    parse_advice,
    reason_text,
    window,
    with_advice,
)


def test_the_reason_text_stays_a_readable_prefix() -> None:
    reason = with_advice("server restarting: reconnect", ReconnectAdvice(500, 9000))
    assert reason == "server restarting: reconnect; retry_ms=500-9500"
    assert reason.startswith("server restarting: reconnect")
    assert reason_text(reason) == "server restarting: reconnect"


def test_parse_round_trips() -> None:
    advice = ReconnectAdvice(1500, 8000)
    assert parse_advice(with_advice("too slow", advice)) == advice
    assert parse_advice("server restarting: reconnect") is None
    assert parse_advice("x; retry_ms=9-3") is None  # high below low: not advice
    assert parse_advice("retry_ms=1-2 is not at the end; ok") is None


def test_advice_already_there_is_replaced() -> None:
    first = with_advice("bye", ReconnectAdvice(1, 2))
    again = with_advice(first, ReconnectAdvice(10, 20))
    assert again == "bye; retry_ms=10-30"


@pytest.mark.parametrize("text", ["x" * 200, "é" * 100, "🙂" * 40])
def test_a_long_reason_is_cut_and_the_advice_kept(text: str) -> None:
    advice = ReconnectAdvice(123_456_789, 876_543_210)
    reason = with_advice(text, advice)
    assert len(reason.encode()) <= MAX_REASON_BYTES
    assert parse_advice(reason) == advice
    assert text.startswith(reason_text(reason))


def test_the_window_grows_with_the_clients_leaving() -> None:
    rate, delay = 200.0, 0.5
    one = window(1, rate, delay)
    many = window(10_000, rate, delay)
    assert one == ReconnectAdvice(500, 500)  # never narrower than the delay
    assert many == ReconnectAdvice(500, 50_000)  # 10,000 at 200/s: 50 s
    assert window(400, rate, delay).jitter_ms < window(4000, rate, delay).jitter_ms


def test_the_window_is_bounded_and_a_delay_is_in_it() -> None:
    huge = window(1e12, 0.1, 10)
    assert huge.high_ms <= 3_600_000
    advice = ReconnectAdvice(100, 1000)
    assert advice.delay_ms(0.0) == 100 and advice.delay_ms(0.5) == 600
    assert advice.delay_ms(7.0) == 1100
    with pytest.raises(ValueError):
        window(1, 0, 1)
