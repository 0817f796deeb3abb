"""``[[ingest]]`` rules: parsing the configuration and mapping events (pure)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from realtime.config import ConfigError, load_settings
from realtime.ingest.rules import (
    IGNORED,
    IngestRule,
    Notify,
    Poison,
    apply,
    decode_event,
    parse_rules,
    stream_event,
)

ROOT = Path(__file__).resolve().parents[2]
ENV = {"REALTIME_AUTH_SECRET": "s" * 32, "REALTIME_BROKER_URL": "redis://127.0.0.1:1/0"}
LIMIT = 65536


def rules(text: str) -> tuple[IngestRule, ...]:
    return parse_rules(tomllib.loads(text).get("ingest"))


def rule(text: str) -> IngestRule:
    (one,) = rules("[[ingest]]\n" + text)
    return one


POST_CREATED = rule(
    """
    source = "pubsub"
    channel = "post.created"
    type = "post_created"
    recipients = { followers_of = "post.author_id" }
    actor = "post.author_id"
    data = { post_id = "post.id", title = "post.title" }
    """
)
POST_LIKED = rule(
    """
    source = "pubsub"
    pattern = "post.*"
    match = { event = "post.liked" }
    type = "post_liked"
    recipients = { to = "post.author_id" }
    actor = "user_id"
    exclude_actor = true
    data = ["post.id", "user_id"]
    """
)
USER_FOLLOWED = rule(
    """
    name = "follows"
    source = "stream"
    stream = "events"
    match = { event = "user.followed", "meta.version" = 2 }
    type = "user_followed"
    recipients = { to = "followed_id" }
    actor = "follower_id"
    """
)


def test_the_three_events_of_the_app_map_to_their_notifications() -> None:
    created = {"post": {"id": 7, "author_id": "bob", "title": "Hi", "body": "long"}}
    assert apply(POST_CREATED, created, LIMIT) == Notify(
        None, "bob", "post_created", '{"post_id":7,"title":"Hi"}', "bob"
    )
    liked = {"event": "post.liked", "post": {"id": 7, "author_id": "bob"}, "user_id": "alice"}
    assert apply(POST_LIKED, liked, LIMIT) == Notify(
        ("bob",), None, "post_liked", '{"post":{"id":7},"user_id":"alice"}', "alice"
    )
    followed = {
        "event": "user.followed",
        "meta": {"version": 2},
        "follower_id": "alice",
        "followed_id": 42,
    }
    assert apply(USER_FOLLOWED, followed, LIMIT) == Notify(
        ("42",), None, "user_followed", "null", "alice"
    )


def test_defaults_of_a_rule() -> None:
    assert POST_CREATED.name == "post_created"
    assert (USER_FOLLOWED.group, USER_FOLLOWED.start, USER_FOLLOWED.field) == (
        "realtime",
        "$",
        "data",
    )
    assert (USER_FOLLOWED.claim_idle, USER_FOLLOWED.batch, USER_FOLLOWED.concurrency) == (
        60.0,
        100,
        8,
    )
    assert USER_FOLLOWED.redis_url == ""


def test_match_is_equality_on_every_path() -> None:
    base = {
        "event": "user.followed",
        "meta": {"version": 2},
        "follower_id": "a",
        "followed_id": "b",
    }
    assert isinstance(apply(USER_FOLLOWED, base, LIMIT), Notify)
    changes: list[dict[str, Any]] = [
        {"event": "user.unfollowed"},
        {"meta": {"version": 3}},
        {"meta": {"version": "2"}},
        {"meta": 2},
        {"meta": {}},
    ]
    for changed in changes:
        assert apply(USER_FOLLOWED, {**base, **changed}, LIMIT) is IGNORED, changed
    no_event = {k: v for k, v in base.items() if k != "event"}
    assert apply(USER_FOLLOWED, no_event, LIMIT) is IGNORED
    # true is not 1, 1 is 1.0
    flag = rule(
        'source = "pubsub"\nchannel = "c"\ntype = "t"\nrecipients = { to = "u" }\nmatch = { n = 1 }'
    )
    assert apply(flag, {"n": True, "u": "x"}, LIMIT) is IGNORED
    assert isinstance(apply(flag, {"n": 1.0, "u": "x"}, LIMIT), Notify)


def test_the_actor_is_left_out_of_its_own_notification() -> None:
    self_like = {"event": "post.liked", "post": {"id": 7, "author_id": "bob"}, "user_id": "bob"}
    outcome = apply(POST_LIKED, self_like, LIMIT)
    assert isinstance(outcome, Notify) and outcome.to == ()
    keep = rule(
        'source = "pubsub"\nchannel = "c"\ntype = "t"\nrecipients = { to = "to" }\nactor = "a"'
    )
    outcome = apply(keep, {"to": ["bob", "amy", "bob", 5], "a": "bob"}, LIMIT)
    assert isinstance(outcome, Notify) and outcome.to == ("bob", "amy", "5")


def test_data_fields_the_event_lacks_are_left_out_and_lists_are_indexed() -> None:
    spec = rule(
        'source = "pubsub"\nchannel = "c"\ntype = "t"\nrecipients = { to = "tags.1" }\n'
        'data = { first = "tags.0", deep.er = "x.y", none = "nope" }'
    )
    outcome = apply(spec, {"tags": ["a", "b"], "x": {"y": [1, None]}}, LIMIT)
    assert outcome == Notify(("b",), None, "t", '{"first":"a","deep":{"er":[1,null]}}', None)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"event": "post.liked", "user_id": "alice"}, "recipients.to post.author_id: missing"),
        (
            {"event": "post.liked", "post": {"author_id": "no spaces"}, "user_id": "alice"},
            "is not a user id",
        ),
        (
            {"event": "post.liked", "post": {"author_id": True}, "user_id": "alice"},
            "is not a user id",
        ),
        (
            {"event": "post.liked", "post": {"author_id": ["a", 1.5]}, "user_id": "alice"},
            "1.5 is not a user id",
        ),
        (
            {"event": "post.liked", "post": {"author_id": "bob"}, "user_id": {"id": 1}},
            "actor user_id",
        ),
        (
            {"event": "post.liked", "post": {"author_id": "bob", "id": "x" * LIMIT}, "user_id": 1},
            "data larger than",
        ),
    ],
)
def test_an_event_that_matches_but_cannot_be_mapped_is_poison(
    event: dict[str, Any], reason: str
) -> None:
    outcome = apply(POST_LIKED, event, LIMIT)
    assert isinstance(outcome, Poison) and reason in outcome.reason, outcome


def test_followers_of_needs_one_user_id() -> None:
    outcome = apply(POST_CREATED, {"post": {"author_id": ["a", "b"]}}, LIMIT)
    assert isinstance(outcome, Poison) and "post.author_id: ['a', 'b']" in outcome.reason
    followers = rule(
        'source = "pubsub"\nchannel = "c"\ntype = "t"\nrecipients = { followers_of = "u" }'
    )
    outcome = apply(followers, {"u": ["a", "b"]}, LIMIT)
    assert outcome == Poison("recipients.followers_of u: ['a', 'b'] is not a user id")
    assert apply(followers, {"u": 12}, LIMIT) == Notify(None, "12", "t", "null", None)
    assert isinstance(apply(POST_CREATED, {"post": {}}, LIMIT), Poison)
    # no actor in the event (null): none
    outcome = apply(POST_LIKED, {"event": "post.liked", "post": {"author_id": "b"}}, LIMIT)
    assert isinstance(outcome, Poison)  # the actor path is missing, not null
    outcome = apply(
        POST_LIKED, {"event": "post.liked", "post": {"author_id": "b"}, "user_id": None}, LIMIT
    )
    assert isinstance(outcome, Notify) and outcome.actor is None and outcome.to == ("b",)


def test_decoding_events() -> None:
    assert decode_event(b'{"a": 1}', 100) == {"a": 1}
    assert decode_event(b'{"big": 123456789012345678901234}', 100) == {
        "big": 123456789012345678901234
    }
    for data, reason in (
        (b"[1]", "not a JSON object but list"),
        (b"{", "not JSON"),
        (b'"x"', "not a JSON object"),
        (b'{"a": "' + b"x" * 100 + b'"}', "larger than 100 bytes"),
    ):
        outcome = decode_event(data, 100)
        assert isinstance(outcome, Poison) and reason in outcome.reason
    assert stream_event({b"data": b'{"a": [1]}', b"other": b"x"}, "data", 100) == {"a": [1]}
    assert stream_event({b"event": b"post.liked", b"user": b"7"}, "data", 100) == {
        "event": "post.liked",
        "user": "7",
    }
    assert stream_event({b"payload": b"{}"}, "payload", 100) == {}
    for fields in ({}, None, {b"k": b"\xff"}, {b"k": b"x" * 200}):
        assert isinstance(stream_event(fields, "data", 100), Poison), fields


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[ingest]\nsource = 'pubsub'\n", "array of tables"),
        ("[[ingest]]\nsource = 'kafka'\n", "ingest[0].source"),
        ("[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\n", "ingest[0].type is required"),
        (
            "[[ingest]]\nsource = 'pubsub'\ntype = 't'\nrecipients = { to = 'u' }\n",
            "exactly one of channel and pattern",
        ),
        (
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\npattern = 'p'\ntype = 't'\n"
            "recipients = { to = 'u' }\n",
            "exactly one of channel and pattern",
        ),
        (
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = 't'\nstream = 's'\n"
            "recipients = { to = 'u' }\n",
            "ingest[0].stream is a stream setting",
        ),
        (
            "[[ingest]]\nsource = 'stream'\nchannel = 'c'\nstream = 's'\ntype = 't'\n"
            "recipients = { to = 'u' }\n",
            "ingest[0].channel is a pubsub setting",
        ),
        ("[[ingest]]\nsource = 'stream'\ntype = 't'\nrecipients = { to = 'u' }\n", "stream"),
        ("[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = 't'\n", "ingest[0].recipients"),
        (
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = 't'\n"
            "recipients = { to = 'u', followers_of = 'v' }\n",
            "ingest[0].recipients",
        ),
        (
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = 't'\nrecipients = { to = '' }\n",
            "ingest[0].recipients.to",
        ),
        (
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = 't'\n"
            "recipients = { to = 'a..b' }\n",
            "empty segment",
        ),
        (
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = 't'\nrecipients = { to = 'u' }\n"
            "exclude_actor = true\n",
            "ingest[0].exclude_actor needs an actor",
        ),
        (
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = 't'\nactor = 'a'\n"
            "recipients = { followers_of = 'u' }\nexclude_actor = true\n",
            "exclude_actor applies to recipients.to only",
        ),
        (
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = 't'\nrecipients = { to = 'u' }\n"
            "data = 'x'\n",
            "ingest[0].data",
        ),
        (
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = 't'\nrecipients = { to = 'u' }\n"
            "data = ['a', 'a.b']\n",
            "'a.b' lies inside 'a'",
        ),
        (
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = 't'\nrecipients = { to = 'u' }\n"
            "colour = 1\n",
            "unknown setting ingest[0].colour",
        ),
        (
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = 't'\nrecipients = { to = 'u' }\n"
            "name = 'a b'\n",
            "ingest[0].name",
        ),
        (
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = ''\nrecipients = { to = 'u' }\n",
            "ingest[0].type must be 1 to 64",
        ),
        (
            "[[ingest]]\nsource = 'stream'\nstream = 's'\ntype = 't'\nrecipients = { to = 'u' }\n"
            "batch = 0\n",
            "ingest[0].batch must be at least 1",
        ),
        (
            "[[ingest]]\nsource = 'stream'\nstream = 's'\ntype = 't'\nrecipients = { to = 'u' }\n"
            "claim_idle = 'soon'\n",
            "ingest[0].claim_idle must be a number",
        ),
        (
            "[[ingest]]\nsource = 'stream'\nstream = 's'\ntype = 't'\nrecipients = { to = 'u' }\n"
            "start = '>'\n",
            "ingest[0].start",
        ),
        (
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = 't'\nrecipients = { to = 'u' }\n"
            "redis_url = 'http://x'\n",
            "ingest[0].redis_url",
        ),
        (
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = 't'\nrecipients = { to = 'u' }\n"
            "[[ingest]]\nsource = 'pubsub'\nchannel = 'd'\ntype = 't'\nrecipients = { to = 'u' }\n",
            "ingest[1].name: 't' is also the name of ingest[0]",
        ),
        (
            "[[ingest]]\nsource = 'stream'\nstream = 's'\ntype = 't'\nrecipients = { to = 'u' }\n"
            "[[ingest]]\nsource = 'stream'\nstream = 's'\ntype = 'v'\nrecipients = { to = 'u' }\n"
            "field = 'payload'\n",
            "ingest[1].field: rules reading stream 's' with group 'realtime'",
        ),
    ],
)
def test_a_bad_rule_stops_start_up_naming_the_setting(
    tmp_path: Path, text: str, named: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings(path, ENV)


def test_a_rule_needs_a_redis_and_a_notification_type(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[[ingest]]\nsource = 'pubsub'\nchannel = 'c'\ntype = 'user_followed'\n"
        "recipients = { to = 'u' }\n"
    )
    env = {"REALTIME_AUTH_SECRET": "s" * 32}
    with pytest.raises(ConfigError, match=re.escape("ingest[0].redis_url is required")):
        load_settings(path, env)
    with pytest.raises(ConfigError, match="Redis Cluster is not supported"):
        load_settings(path, {**env, "REALTIME_BROKER_URL": "redis+cluster://127.0.0.1:1"})
    assert load_settings(path, ENV).ingest[0].channel == "c"
    path.write_text(path.read_text() + "redis_url = 'redis://elsewhere:6379/1'\n")
    assert load_settings(path, env).ingest[0].redis_url == "redis://elsewhere:6379/1"
    path.write_text(path.read_text().replace("user_followed", "post_shared"))
    with pytest.raises(ConfigError, match=re.escape("ingest[0].type: 'post_shared' is not a")):
        load_settings(path, env)
    path.write_text(path.read_text() + "[notifications.types.post_shared]\n")
    assert load_settings(path, env).ingest[0].type == "post_shared"
    path.write_text(
        path.read_text().replace(
            "[notifications.types.post_shared]", "[notifications]\nfree_types = true"
        )
    )
    assert load_settings(path, env).ingest[0].type == "post_shared"


def test_the_examples_in_config_toml_are_valid_rules_and_every_setting_is_documented() -> None:
    text = (ROOT / "config.toml").read_text()
    section = text[text.index("# Ingest:") :]
    examples = "\n".join(
        line.removeprefix("# ")
        for line in section[section.index("# # publish(") :].splitlines()
        if not line.startswith("# #")
    )
    parsed = rules(examples)
    assert [r.name for r in parsed] == ["post_created", "post_liked", "user_followed"]
    assert [r.source for r in parsed] == ["pubsub", "pubsub", "stream"]
    for key in (
        "name",
        "source",
        "channel",
        "pattern",
        "stream",
        "group",
        "start",
        "field",
        "claim_idle",
        "batch",
        "concurrency",
        "redis_url",
        "match",
        "type",
        "recipients",
        "actor",
        "data",
        "exclude_actor",
    ):
        assert f"#   {key}" in section or f"`{key}`" in section, key
