"""Histogram buckets and percentiles; seq checks count lost, duplicated and reordered
deliveries exactly."""

from __future__ import annotations

import random

import pytest

from loadtest.stats import (
    BUCKETS,
    MAX_MICROS,
    Histogram,
    SeqCheck,
    SeqTotals,
    bucket,
    bucket_low,
    bucket_width,
)


def test_buckets_are_contiguous_and_within_one_point_six_percent() -> None:
    previous = -1
    for value in [*range(5000), *(random.randrange(5000, MAX_MICROS) for _ in range(20000))]:
        index = bucket(value)
        low, width = bucket_low(index), bucket_width(index)
        assert low <= value < low + width
        assert width == 1 or width / low <= 1 / 64
        if value < 5000:
            assert index in (previous, previous + 1)
            previous = index
    assert bucket(MAX_MICROS) < BUCKETS


def test_out_of_range_values_are_clamped() -> None:
    histogram = Histogram()
    histogram.add(-5)
    histogram.add(MAX_MICROS * 10)
    assert histogram.counts[0] == 1
    assert histogram.counts[bucket(MAX_MICROS)] == 1
    assert histogram.total == 2


def test_percentiles() -> None:
    histogram = Histogram()
    for value in range(1, 10001):
        histogram.add(value)
    assert histogram.percentile(0.5) == pytest.approx(5000, rel=0.016)
    assert histogram.percentile(0.99) == pytest.approx(9900, rel=0.016)
    assert histogram.maximum == 10000
    summary = histogram.summary_ms()
    assert summary["max"] == 10.0
    assert summary["p50"] == pytest.approx(5.0, rel=0.016)
    assert Histogram().summary_ms()["p99"] == 0.0


def test_merge_minus_and_json() -> None:
    first, second = Histogram(), Histogram()
    for value in (3, 300, 30000):
        first.add(value)
    earlier = first.copy()
    for value in (4, 400000):
        first.add(value)
        second.add(value)
    assert first.minus(earlier).counts == second.counts
    assert first.minus(earlier).total == 2
    merged = Histogram()
    merged.merge(earlier)
    merged.merge(second)
    assert merged.counts == first.counts and merged.maximum == 400000
    assert Histogram.from_json(first.to_json()) == first


def test_seq_check_in_order() -> None:
    check = SeqCheck(last=10)
    for seq in range(11, 21):
        check.add(seq)
    assert (check.lost(20), check.duplicated, check.reordered) == (0, 0, 0)
    assert check.lost(25) == 5


def test_seq_check_counts_exactly() -> None:
    check = SeqCheck()
    for seq in (1, 2, 3, 5, 4, 4, 7, 2, 10, 9, 8):
        check.add(seq)
    # 4 arrived after 5 (reordered), again (duplicated); 6 never; 2 again (duplicated);
    # 10 before 9 and 8 (two reordered).
    assert check.missing == {6}
    assert (check.duplicated, check.reordered) == (2, 3)
    assert check.lost(12) == 3  # 6, 11, 12


def test_seq_totals_sum_subscribers() -> None:
    totals = SeqTotals()
    for seqs in ((1, 2, 3), (1, 3, 2), (1, 1, 2)):
        check = SeqCheck()
        for seq in seqs:
            check.add(seq)
        totals.add(check, 3)
    assert (totals.lost, totals.duplicated, totals.reordered) == (1, 1, 1)
    other = SeqTotals(1, 1, 1)
    totals.merge(other)
    assert (totals.lost, totals.duplicated, totals.reordered) == (2, 2, 2)
