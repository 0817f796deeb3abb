"""The reconnect pacer, the handshake limiter and the opening limit, fed with a clock of
the test's own."""

from __future__ import annotations

from protocol import CloseCode
from protocol.advice import ReconnectAdvice, parse_advice
from realtime.pacing import MAX_RETRY_AFTER, HandshakeLimiter, OpeningLimit, ReconnectPacer


def test_leaving_clients_widen_the_window_and_drain_at_the_rate() -> None:
    pacer = ReconnectPacer(rate=100, delay=0.5)
    assert pacer.advice(now=0) == ReconnectAdvice(500, 500)
    assert pacer.leaving(1000, now=0) == ReconnectAdvice(500, 10_000)
    assert pacer.advice(now=5) == ReconnectAdvice(500, 5_000)  # 500 taken back
    assert pacer.advice(now=100) == ReconnectAdvice(500, 500)


def test_advise_adds_advice_only_to_closes_that_invite_a_reconnect() -> None:
    pacer = ReconnectPacer(rate=10, delay=1)
    pacer.leaving(50, now=0)
    restarting = pacer.advise(CloseCode.RESTARTING, "server restarting: reconnect", now=0)
    assert restarting == "server restarting: reconnect; retry_ms=1000-6000"
    assert pacer.advise(CloseCode.UNAUTHORIZED, "bad token", now=0) == "bad token"
    assert pacer.advise(CloseCode.RESTARTING, restarting, now=0) == restarting
    # A 4009 is one client, counted as it is closed.
    slow = pacer.advise(CloseCode.TOO_SLOW, "too slow", now=0)
    assert parse_advice(slow) == ReconnectAdvice(1000, 5100)
    idle = pacer.advise(CloseCode.GOING_AWAY, "no traffic", now=0)
    assert parse_advice(idle) == ReconnectAdvice(1000, 5100)


def test_no_rate_admits_everything() -> None:
    limiter = HandshakeLimiter(0)
    assert all(limiter.admit(now=0) is None for _ in range(10_000))


def test_past_the_rate_refusals_are_told_later_and_later() -> None:
    limiter = HandshakeLimiter(10)
    admitted = [limiter.admit(now=0) for _ in range(10)]
    assert admitted == [None] * 10  # a burst of one second's worth
    waits = [limiter.admit(now=0) for _ in range(40)]
    assert waits == [1] * 10 + [2] * 10 + [3] * 10 + [4] * 10
    assert limiter.refused == 40
    # A second later ten more may open.
    assert [limiter.admit(now=1) for _ in range(10)] == [None] * 10
    assert limiter.admit(now=1) is not None


def test_retry_after_is_bounded() -> None:
    limiter = HandshakeLimiter(1)
    waits = [limiter.admit(now=0) for _ in range(1000)]
    assert max(w for w in waits if w is not None) == MAX_RETRY_AFTER


def _start(limit: OpeningLimit, count: int) -> None:
    for _ in range(count):
        assert limit.admit(now=0) is None
        limit.begin()


def test_no_opening_limit_admits_everything() -> None:
    limit = OpeningLimit(0)
    _start(limit, 10_000)
    assert limit.opening == 10_000


def test_past_the_opening_limit_a_handshake_waits_for_a_place() -> None:
    limit = OpeningLimit(3)
    _start(limit, 3)
    assert limit.admit(now=0) is not None
    assert limit.refused == 1
    limit.end(now=1)  # one start is over: its place is free
    assert limit.admit(now=1) is None
    limit.begin()
    assert limit.admit(now=1) is not None


def test_refused_openings_are_told_to_come_back_at_the_pace_openings_end() -> None:
    limit = OpeningLimit(10)
    _start(limit, 10)
    # Nothing ended yet: the queue is planned at the least rate, one a second.
    assert [limit.admit(now=0) for _ in range(3)] == [1, 2, 3]
    # Then openings end at 20 a second for 10 s (the queue above drains meanwhile).
    for i in range(200):
        limit.end(now=10 + i / 20)
        limit.begin()
    waits = [limit.admit(now=20) or 0 for _ in range(60)]
    assert waits[0] == 1
    assert 2 <= max(waits) <= 4  # 60 at ~20 a second
    assert waits == sorted(waits)  # later and later, not all the same second
    # When openings stop ending the rate decays, and the wait grows again.
    assert limit.admit(now=40) == 1
    assert [limit.admit(now=40) for _ in range(5)][-1] == 6


def test_the_opening_retry_after_is_bounded() -> None:
    limit = OpeningLimit(1)
    _start(limit, 1)
    waits = [limit.admit(now=0) for _ in range(1000)]
    assert max(w for w in waits if w is not None) == MAX_RETRY_AFTER


def test_an_overloaded_instance_refuses_below_the_opening_limit() -> None:
    limit = OpeningLimit(100)
    assert limit.admit(now=0, overloaded=True) == 1
    assert limit.admit(now=0, overloaded=True) == 2
    assert limit.admit(now=0) is None
    unlimited = OpeningLimit(0)
    assert unlimited.admit(now=0, overloaded=True) == 1
