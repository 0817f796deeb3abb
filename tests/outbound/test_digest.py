"""The words and keys of a job, without a network: digests, payloads, idempotency keys."""

from __future__ import annotations

import orjson
import pytest

from realtime.outbound import Job, JobItem, idempotency_key
from realtime.outbound.digest import actors, names, summary
from realtime.outbound.payload import MAX_PUSH_PLAINTEXT, encode_within
from tests.outbound.support import T0, job


@pytest.mark.parametrize(
    ("people", "text"),
    [
        ((), "Someone"),
        (("bob",), "bob"),
        (("bob", "carol"), "bob and carol"),
        (("bob", "carol", "dave"), "bob and 2 others"),
        (("bob", "c", "d", "e", "f"), "bob and 4 others"),
    ],
)
def test_names(people: tuple[str, ...], text: str) -> None:
    assert names(people) == text


def test_actors_are_distinct_and_most_recent_first() -> None:
    items = (
        JobItem(1, "{}", "carol", T0),
        JobItem(2, "{}", "bob", T0 + 5),
        JobItem(3, "{}", None, T0 + 6),
        JobItem(4, "{}", "carol", T0 + 9),
        JobItem(5, "{}", "dave", T0 + 1),
        # Same millisecond as carol's latest: the later row counts as more recent.
        JobItem(6, "{}", "eve", T0 + 9),
    )
    assert actors(items) == ["eve", "carol", "bob", "dave"]


@pytest.mark.parametrize(
    ("type", "who", "text"),
    [
        ("post_liked", ("bob",), "bob liked your post"),
        ("post_liked", ("a", "b", "c", "d", "bob"), "bob and 4 others liked your post"),
        ("post_commented", ("a", "b"), "b and a commented on your post"),
        ("user_followed", ("a",), "a started following you"),
        ("user_mentioned", ("a",), "a mentioned you"),
        ("friend_request", ("a",), "a sent you a friend request"),
        ("direct_message", ("a", "a", "a"), "a sent you a message (3 times)"),
        ("custom_type", (None,), "Someone sent you a notification"),
        ("post_liked", (None, None), "Someone liked your post (2 times)"),
    ],
)
def test_summary(type: str, who: tuple[str | None, ...], text: str) -> None:
    assert summary(job("email", type=type, actors=who)) == text


def test_idempotency_keys() -> None:
    assert idempotency_key((12,)) == "rt-12"
    digest = idempotency_key((14, 12, 13))
    assert digest.startswith("rt-12-") and digest == idempotency_key((12, 13, 14))
    # Another set of rows is another key, even with the same first row.
    assert idempotency_key((12, 13)) != digest
    with pytest.raises(ValueError, match="at least one"):
        idempotency_key(())


def test_a_payload_over_the_push_limit_is_cut_step_by_step() -> None:
    big = orjson.dumps({"text": "y" * 1500}).decode()
    whole = job("webpush", actors=("a", "b"), data='{"n":1}')
    assert orjson.loads(encode_within(whole)).get("truncated") is None
    two_big = job("webpush", actors=("a", "b"), data=big)
    cut = orjson.loads(encode_within(two_big, limit=2500))
    assert cut["truncated"] is True and [n["actor"] for n in cut["notifications"]] == ["b"]
    none = orjson.loads(encode_within(two_big, limit=1000))
    assert none["notifications"] == [] and none["delivery_keys"] == ["rt-7", "rt-8"]
    many = Job(
        tuple(range(1, 1000)),
        "u",
        "webpush",
        "post_liked",
        tuple(JobItem(None, "{}", f"user{i}", T0) for i in range(999)),
    )
    bare = orjson.loads(encode_within(many))
    assert "delivery_keys" not in bare and bare["count"] == 999
    assert len(encode_within(many)) <= MAX_PUSH_PLAINTEXT
