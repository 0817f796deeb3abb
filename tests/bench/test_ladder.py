"""The rate search of bench.compare: bounded, climbs, bisects, steps down to its floor."""

from __future__ import annotations

from collections.abc import Callable

from bench.ladder import Ladder


def climb(ladder: Ladder, passes: Callable[[float], bool]) -> list[tuple[float, bool]]:
    history: list[tuple[float, bool]] = []
    while (rate := ladder.next_rate(history)) is not None:
        history.append((rate, passes(rate)))
        assert len(history) <= ladder.attempts
    return history


def test_climbs_then_bisects_within_the_attempts() -> None:
    history = climb(Ladder(start=25_000, floor=2_000, attempts=7), lambda r: r <= 150_000)
    rates = [rate for rate, _ in history]
    assert rates[:4] == [25_000, 50_000, 100_000, 200_000]
    best = max(rate for rate, passed in history if passed)
    assert 125_000 < best <= 150_000
    assert len(history) <= 7


def test_stops_once_precise_enough() -> None:
    history = climb(Ladder(start=10_000, floor=2_000, attempts=20), lambda r: r <= 30_000)
    best = max(rate for rate, passed in history if passed)
    lowest_failure = min(rate for rate, passed in history if not passed and rate > best)
    assert lowest_failure / best <= 1.15
    assert len(history) < 20


def test_steps_down_to_the_floor_when_nothing_passes() -> None:
    history = climb(Ladder(start=25_000, floor=5_000, attempts=7), lambda r: False)
    assert [rate for rate, _ in history] == [25_000, 12_500, 6_250, 5_000]
