"""A user's notification preferences: the document, its checks, and the pure decisions
made from it (which channels a notification uses, which transports carry it, and how
long quiet hours hold the offline ones back).

Layers, resolved in this order: the type's default channels, then the user's choice
for that type and channel, then the global mute. A critical type ignores the last two
and quiet hours. No I/O here: the store keeps the document as JSON text, the inbox
(``notices.py``) reads and writes it, the outbox asks the functions below.
"""

from __future__ import annotations

import logging
import zoneinfo
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Annotated, Any, Final, Literal, cast

import orjson

from protocol import CommandError, ErrorCode

from .config import CHANNELS, TYPE_NAME, NotificationSettings, NotificationTypeSettings
from .schema import Choices, Doc, Example, Length, Pattern, spec_of

log = logging.getLogger(__name__)

# The names every part of issue 10 shares.
TRANSPORTS: Final = ("webpush", "webhook", "email")
"""Delivery transports: one outbox job per recipient per transport."""

HHMM: Final = r"([01][0-9]|2[0-3]):[0-5][0-9]"
EMAIL: Final = r"[^@\s]{1,64}@[^@\s]{1,189}"
MAX_EMAIL: Final = 254
# What zoneinfo can load here; UTC always (a system without tz data still has it).
TIMEZONES: Final = tuple(sorted(zoneinfo.available_timezones() | {"UTC"}))

Channel = Literal["in_app", "push", "email"]
TypeName = Annotated[str, Pattern(TYPE_NAME, "a notification type"), Length(1, 64)]
Time = Annotated[str, Pattern(HHMM, "a time HH:MM")]


@dataclass(frozen=True, slots=True)
class QuietHours:
    """Local times between which offline channels wait; a start after the end spans
    midnight, and a start equal to the end is never quiet."""

    start: Annotated[Time, Example("22:00")]
    end: Annotated[Time, Example("07:00")]

    def minutes(self) -> tuple[int, int]:
        return _minutes(self.start), _minutes(self.end)


@dataclass(frozen=True, slots=True)
class Preferences:
    """A user's notification preferences; what is left out is the default."""

    mute: Annotated[bool, Doc("Every non-critical notification off, on every channel.")] = False
    timezone: Annotated[
        str,
        Choices(TIMEZONES, "an IANA time zone name like Europe/Paris"),
        Doc("The user's time zone, for quiet hours."),
        Example("Europe/Paris"),
    ] = "UTC"
    quiet_hours: Annotated[
        QuietHours | None, Doc("While they last, push and email wait (in_app does not).")
    ] = None
    email: Annotated[
        str | None,
        Pattern(EMAIL, "an email address"),
        Length(3, MAX_EMAIL),
        Doc("Where email notifications go; set over REST only."),
        Example("bob@example.com"),
    ] = None
    types: Annotated[
        dict[TypeName, dict[Channel, bool]] | None,
        Doc(
            "Per type, per channel (in_app, push, email): true or false; a channel left "
            'out is the type\'s default. E.g. {"post_liked": {"push": false}}.'
        ),
    ] = None

    def choice(self, type_name: str) -> Mapping[str, bool]:
        # Keys are Channel literals; readers look them up by plain names.
        return cast("Mapping[str, bool]", (self.types or {}).get(type_name, {}))

    def to_wire(self) -> dict[str, Any]:
        """The whole document, defaults included (what GET answers)."""
        quiet = self.quiet_hours
        return {
            "mute": self.mute,
            "timezone": self.timezone,
            "quiet_hours": None if quiet is None else {"start": quiet.start, "end": quiet.end},
            "email": self.email,
            "types": {name: dict(channels) for name, channels in (self.types or {}).items()},
        }

    def to_json(self) -> str:
        return orjson.dumps(self.to_wire(), option=orjson.OPT_SORT_KEYS).decode()


DEFAULT: Final = Preferences()
_SPEC = spec_of(Preferences)


def read(value: object, name: str = "preferences") -> Preferences:
    """The document's checked form, or ``CommandError`` (bad_request) saying what is wrong."""
    found: Preferences = _SPEC.read(value, name)
    return found


def check_types(prefs: Preferences, settings: NotificationSettings) -> None:
    """Refuse choices for types that are not configured (unless types are free)."""
    if settings.free_types:
        return
    unknown = sorted(set(prefs.types or {}) - set(settings.types))
    if unknown:
        raise CommandError(
            ErrorCode.BAD_REQUEST,
            f"unknown notification type {unknown[0]!r} in 'types'; "
            f"configured: {', '.join(sorted(settings.types))}",
        )


def load(text: str | None) -> Preferences:
    """A stored document (None: the user has none). It was checked when it was written;
    one that no longer reads (its time zone left the tz database) counts as the
    defaults, with a warning."""
    if text is None:
        return DEFAULT
    try:
        return read(orjson.loads(text))
    except (CommandError, orjson.JSONDecodeError) as error:
        log.warning("stored preferences do not read, using the defaults: %s", error)
        return DEFAULT


# Decisions ---------------------------------------------------------------------------


def channels_for(prefs: Preferences, type_settings: NotificationTypeSettings) -> frozenset[str]:
    """The channels a notification of this type uses for this user."""
    defaults = frozenset(type_settings.channels)
    if type_settings.critical:
        return defaults
    if prefs.mute:
        return frozenset()
    choice = prefs.choice(type_settings.name)
    return frozenset(c for c in CHANNELS if choice.get(c, c in defaults))


def configured_transports(settings: object) -> frozenset[str]:
    """The transports this server can deliver on.

    The ``[webpush]``, ``[webhook]`` and ``[email]`` sections belong to the channels
    part of the server; a section that is missing or empty counts as off.
    """
    found = set()
    if _setting(settings, "webpush", "vapid_private_key_file"):
        found.add("webpush")
    if _setting(settings, "webhook", "url"):
        found.add("webhook")
    if _setting(settings, "email", "smtp_host"):
        found.add("email")
    return frozenset(found)


def _setting(settings: object, section: str, key: str) -> bool:
    return bool(getattr(getattr(settings, section, None), key, ""))


def transports_for(
    channels: Collection[str], settings: object, prefs: Preferences
) -> tuple[str, ...]:
    """The transports that carry a notification on these channels (in TRANSPORTS order):
    push by Web Push and by the webhook, whichever are configured; email when SMTP is
    configured and the user gave an address."""
    configured = configured_transports(settings)
    wanted: set[str] = set()
    if "push" in channels:
        wanted |= configured & {"webpush", "webhook"}
    if "email" in channels and prefs.email and "email" in configured:
        wanted.add("email")
    return tuple(t for t in TRANSPORTS if t in wanted)


def quiet_until(
    prefs: Preferences, type_settings: NotificationTypeSettings, now_ms: int
) -> int | None:
    """When the user's quiet hours end (ms since the epoch), if they hold now; else None.

    Quiet hours are wall-clock times in the user's time zone, so they follow its
    daylight saving changes.
    """
    quiet = prefs.quiet_hours
    if quiet is None or type_settings.critical:
        return None
    start, end = quiet.minutes()
    if start == end:
        return None
    zone = _zone(prefs.timezone)
    local = datetime.fromtimestamp(now_ms / 1000, zone)
    minute = local.hour * 60 + local.minute
    if start < end:
        if not start <= minute < end:
            return None
        day = local.date()
    else:  # spans midnight
        if end <= minute < start:
            return None
        day = local.date() if minute < end else local.date() + timedelta(days=1)
    until = int(_at(day, end, zone).timestamp() * 1000)
    return until if until > now_ms else None


def _at(day: date, minute: int, zone: tzinfo) -> datetime:
    return datetime.combine(day, time(minute // 60, minute % 60), zone)


def _zone(name: str) -> tzinfo:
    # UTC needs no tz database; every other name was checked against it when read.
    return UTC if name == "UTC" else zoneinfo.ZoneInfo(name)


def _minutes(text: str) -> int:
    hours, _, minutes = text.partition(":")
    return int(hours) * 60 + int(minutes)
