"""Preferences: the document's checks and the pure decisions (no loop, no store)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from protocol import CommandError, ErrorCode
from realtime import preferences as p
from realtime.config import NotificationSettings, NotificationTypeSettings
from realtime.preferences import Preferences, QuietHours

LIKED = NotificationTypeSettings(group="post_id", name="post_liked")
IN_APP_ONLY = NotificationTypeSettings(channels=["in_app"], name="poke")
CRITICAL = NotificationTypeSettings(critical=True, name="security")


def refused(value: object) -> str:
    with pytest.raises(CommandError) as error:
        p.read(value)
    assert error.value.code is ErrorCode.BAD_REQUEST
    return error.value.message


def test_a_document_reads_and_writes_back_whole() -> None:
    doc = {
        "mute": False,
        "timezone": "Europe/Paris",
        "quiet_hours": {"start": "22:00", "end": "07:30"},
        "email": "bob@example.com",
        "types": {"post_liked": {"push": False, "email": True}},
    }
    prefs = p.read(doc)
    assert prefs.quiet_hours == QuietHours("22:00", "07:30")
    assert prefs.to_wire() == doc
    assert p.load(prefs.to_json()) == prefs
    assert p.read({}) == p.DEFAULT == p.load(None)
    assert p.DEFAULT.to_wire() == {
        "mute": False,
        "timezone": "UTC",
        "quiet_hours": None,
        "email": None,
        "types": {},
    }


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([], "must be a JSON object"),
        ({"mute": "yes"}, "'mute' must be true or false"),
        ({"timezone": "Mars/Olympus"}, "'timezone' must be an IANA time zone name"),
        ({"timezone": "europe/paris"}, "'timezone' must be an IANA time zone name"),
        ({"quiet_hours": {"start": "22:00"}}, "'end' is required"),
        ({"quiet_hours": {"start": "24:00", "end": "07:00"}}, "'start' must be a time HH:MM"),
        ({"quiet_hours": {"start": "7:00", "end": "08:00"}}, "'start' must be a time HH:MM"),
        ({"quiet_hours": "22-07"}, "quiet_hours must be a JSON object"),
        ({"email": "not an address"}, "'email' must be an email address"),
        ({"types": {"post_liked": {"pussh": False}}}, "keys must be one of 'in_app'"),
        ({"types": {"post_liked": {"push": "off"}}}, "'types.post_liked.push' must be true"),
        ({"types": {"bad type": {}}}, "keys must be a notification type"),
        ({"types": []}, "'types' must be an object"),
    ],
)
def test_a_bad_document_is_refused_saying_what_is_wrong(value: object, fragment: str) -> None:
    assert fragment in refused(value)


def test_choices_for_unknown_types_are_refused_unless_types_are_free() -> None:
    prefs = p.read({"types": {"post_liked": {"push": False}, "made_up": {"email": False}}})
    with pytest.raises(CommandError, match="unknown notification type 'made_up'"):
        p.check_types(prefs, NotificationSettings())
    p.check_types(prefs, NotificationSettings(free_types=True))
    p.check_types(p.read({"types": {"post_liked": {}}}), NotificationSettings())


def test_a_stored_document_that_no_longer_reads_is_the_defaults() -> None:
    assert p.load('{"timezone": "Gone/Away"}') == p.DEFAULT
    assert p.load("not json") == p.DEFAULT


def choose(**fields: Any) -> Preferences:
    return dataclasses.replace(p.DEFAULT, **fields)


def test_channels_resolve_type_defaults_then_choices_then_the_mute() -> None:
    assert p.channels_for(p.DEFAULT, LIKED) == {"in_app", "push", "email"}
    assert p.channels_for(p.DEFAULT, IN_APP_ONLY) == {"in_app"}
    off = choose(types={"post_liked": {"push": False, "in_app": False}})
    assert p.channels_for(off, LIKED) == {"email"}
    # A choice can turn on what the type leaves off, for that type only.
    on = choose(types={"poke": {"email": True}})
    assert p.channels_for(on, IN_APP_ONLY) == {"in_app", "email"}
    assert p.channels_for(on, LIKED) == {"in_app", "push", "email"}
    assert p.channels_for(choose(mute=True, types={"poke": {"email": True}}), IN_APP_ONLY) == set()


def test_a_critical_type_ignores_the_mute_and_the_choices() -> None:
    muted = choose(mute=True, types={"security": {"in_app": False, "push": False}})
    assert p.channels_for(muted, CRITICAL) == {"in_app", "push", "email"}


def configured(**sections: dict[str, str]) -> object:
    """Settings with the channel sections the channels part adds ([webpush] …)."""
    return SimpleNamespace(**{name: SimpleNamespace(**keys) for name, keys in sections.items()})


def test_transports_are_those_configured_for_the_channels_wanted() -> None:
    everything = configured(
        webpush={"vapid_private_key_file": "/k.pem"},
        webhook={"url": "http://127.0.0.1:9/hook"},
        email={"smtp_host": "127.0.0.1"},
    )
    all_channels = {"in_app", "push", "email"}
    with_address = choose(email="bob@example.com")
    assert p.transports_for(all_channels, everything, with_address) == (
        "webpush",
        "webhook",
        "email",
    )
    # No address, no email; in_app is no transport.
    assert p.transports_for(all_channels, everything, p.DEFAULT) == ("webpush", "webhook")
    assert p.transports_for({"in_app", "email"}, everything, with_address) == ("email",)
    assert p.transports_for({"in_app"}, everything, with_address) == ()
    only_hook = configured(webhook={"url": "http://127.0.0.1:9/hook"}, webpush={})
    assert p.transports_for(all_channels, only_hook, with_address) == ("webhook",)
    # Nothing configured (these sections missing or empty): nothing is queued.
    assert p.transports_for(all_channels, object(), with_address) == ()
    assert p.transports_for(all_channels, configured(email={"smtp_host": ""}), with_address) == ()


def ms(text: str, zone: str) -> int:
    """A local wall-clock time in a zone, as ms since the epoch."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)


def test_quiet_hours_across_midnight_end_at_the_local_end_time() -> None:
    prefs = choose(timezone="Europe/Paris", quiet_hours=QuietHours("22:00", "07:00"))
    end = ms("2026-03-10T07:00", "Europe/Paris")
    assert p.quiet_until(prefs, LIKED, ms("2026-03-09T23:30", "Europe/Paris")) == end
    assert p.quiet_until(prefs, LIKED, ms("2026-03-10T06:59", "Europe/Paris")) == end
    assert p.quiet_until(prefs, LIKED, ms("2026-03-10T07:00", "Europe/Paris")) is None
    assert p.quiet_until(prefs, LIKED, ms("2026-03-10T21:59", "Europe/Paris")) is None
    at_ten = ms("2026-03-10T22:00", "Europe/Paris")
    assert p.quiet_until(prefs, LIKED, at_ten) == ms("2026-03-11T07:00", "Europe/Paris")
    # Critical types and users without quiet hours never wait.
    assert p.quiet_until(prefs, CRITICAL, at_ten) is None
    assert p.quiet_until(p.DEFAULT, LIKED, at_ten) is None


def test_quiet_hours_within_a_day_and_an_empty_window() -> None:
    lunch = choose(quiet_hours=QuietHours("12:00", "13:30"))  # UTC
    noon = int(datetime(2026, 5, 1, 12, 15, tzinfo=UTC).timestamp() * 1000)
    assert p.quiet_until(lunch, LIKED, noon) == noon + 75 * 60_000
    assert p.quiet_until(lunch, LIKED, noon - 30 * 60_000) is None
    never = choose(quiet_hours=QuietHours("09:00", "09:00"))
    assert p.quiet_until(never, LIKED, noon) is None


def test_quiet_hours_follow_daylight_saving_time() -> None:
    # Europe/Paris moves from +01:00 to +02:00 at 02:00 on 2026-03-29: the night is an
    # hour shorter, and 07:00 local is 05:00 UTC, no longer 06:00.
    prefs = choose(timezone="Europe/Paris", quiet_hours=QuietHours("22:00", "07:00"))
    night = ms("2026-03-28T23:00", "Europe/Paris")
    until = p.quiet_until(prefs, LIKED, night)
    assert until == int(datetime(2026, 3, 29, 5, 0, tzinfo=UTC).timestamp() * 1000)
    assert until is not None and until - night == 7 * 3600_000
