"""``[[ingest]]`` rules, and what one event becomes under one rule. Pure: no I/O.

A rule reads a source (a Redis pub/sub channel or pattern, or a Redis Stream with a
consumer group), keeps the events whose fields ``match``, and maps each to one
notification: its ``type``, its recipients (user ids at a path in the event, or the
followers of the user at a path), its ``actor`` and its ``data``. Paths are dotted
(``post.author_id``); a digit segment indexes a list (``mentions.0``).

``parse_rules`` turns the TOML tables into ``IngestRule`` values and refuses a bad
one with ``RuleError`` naming the setting (``ingest[0].recipients``); ``apply``
maps an event to an ``Outcome``: a ``Notify`` to carry out, ``Ignored`` (no match),
or ``Poison`` (it matched but cannot be mapped; the reason says why).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from protocol import jsonvalue

from ..auth import USER_ID

Path = tuple[str, ...]
Source = Literal["pubsub", "stream"]

MAX_TYPE: Final = 64
"""Characters of a notification type, as ``POST /notifications`` allows."""
MAX_RECIPIENTS: Final = 10_000
"""User ids one event may list, as ``POST /notifications`` allows in ``to``."""
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MISSING: Final = object()


class RuleError(ValueError):
    """A rule is invalid; the message names the setting."""


@dataclass(frozen=True, slots=True)
class IngestRule:
    name: str
    source: Source
    type: str
    # The recipients: exactly one of the two paths.
    to: Path | None = None
    followers_of: Path | None = None
    actor: Path | None = None
    # (where in the data, where in the event); None: the data is null.
    data: tuple[tuple[Path, Path], ...] | None = None
    exclude_actor: bool = False
    match: tuple[tuple[Path, Any], ...] = ()
    # pubsub: one of the two.
    channel: str = ""
    pattern: str = ""
    # stream
    stream: str = ""
    group: str = "realtime"
    start: Literal["$", "0"] = "$"
    field: str = "data"
    claim_idle: float = 60.0
    batch: int = 100
    concurrency: int = 8
    # Empty: broker.url.
    redis_url: str = ""


@dataclass(frozen=True, slots=True)
class Notify:
    """What ``Notices.notify`` is asked to do for one event."""

    to: tuple[str, ...] | None
    followers_of: str | None
    type: str
    data_json: str
    actor: str | None


@dataclass(frozen=True, slots=True)
class Ignored:
    """The event does not match the rule."""


@dataclass(frozen=True, slots=True)
class Poison:
    """The event matches but cannot be mapped: logged, acknowledged, counted."""

    reason: str


Outcome = Notify | Ignored | Poison
IGNORED: Final = Ignored()


# Events ---------------------------------------------------------------------------------


def decode_event(data: bytes | str, max_bytes: int) -> dict[str, Any] | Poison:
    """The JSON object in a pub/sub message or a Stream entry's field."""
    if len(data) > max_bytes:
        return Poison(f"event larger than {max_bytes} bytes")
    try:
        event = jsonvalue.loads(data)
    except ValueError as error:
        return Poison(f"not JSON: {error}")
    if not isinstance(event, dict):
        return Poison(f"not a JSON object but {type(event).__name__}")
    return event


def stream_event(
    fields: Mapping[bytes, bytes] | None, field: str, max_bytes: int
) -> dict[str, Any] | Poison:
    """A Stream entry's event: the JSON in ``field``, or, without it, the fields
    themselves (their values as strings)."""
    if not fields:
        return Poison("the entry is gone from the stream (trimmed or deleted)")
    key = field.encode()
    if key in fields:
        return decode_event(fields[key], max_bytes)
    if sum(len(k) + len(v) for k, v in fields.items()) > max_bytes:
        return Poison(f"event larger than {max_bytes} bytes")
    try:
        return {k.decode(): v.decode() for k, v in fields.items()}
    except UnicodeDecodeError:
        return Poison("a field of the entry is not UTF-8")


def lookup(event: Any, path: Path) -> Any:
    """The value at ``path``, or ``_MISSING``."""
    value = event
    for segment in path:
        if isinstance(value, dict):
            value = value.get(segment, _MISSING)
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def dotted(path: Path) -> str:
    return ".".join(path)


# Mapping --------------------------------------------------------------------------------


def apply(rule: IngestRule, event: Mapping[str, Any], max_data_bytes: int) -> Outcome:
    """What ``event`` becomes under ``rule``."""
    for path, expected in rule.match:
        if not _equal(lookup(event, path), expected):
            return IGNORED
    actor: str | None = None
    if rule.actor is not None:
        value = lookup(event, rule.actor)
        if value is not None:  # an event without an actor (null) has none
            actor = _user_id(value)
            if actor is None:
                return Poison(f"actor {dotted(rule.actor)}: {_shown(value)} is not a user id")
    to: tuple[str, ...] | None = None
    followers_of: str | None = None
    if rule.to is not None:
        ids = _user_ids(lookup(event, rule.to))
        if isinstance(ids, Poison):
            return Poison(f"recipients.to {dotted(rule.to)}: {ids.reason}")
        to = tuple(u for u in ids if not (rule.exclude_actor and u == actor))
    else:
        assert rule.followers_of is not None
        value = lookup(event, rule.followers_of)
        followers_of = _user_id(value)
        if followers_of is None:
            where = dotted(rule.followers_of)
            return Poison(f"recipients.followers_of {where}: {_shown(value)} is not a user id")
    data: object = None if rule.data is None else _data(event, rule.data)
    try:
        data_json = jsonvalue.dumps(data)
    except ValueError as error:
        return Poison(f"data: {error}")
    if len(data_json.encode()) > max_data_bytes:
        return Poison(f"data larger than {max_data_bytes} bytes (namespaces.user.max_body_bytes)")
    return Notify(to, followers_of, rule.type, data_json, actor)


def _data(event: Mapping[str, Any], spec: tuple[tuple[Path, Path], ...]) -> dict[str, Any]:
    """Missing fields are left out: events of one kind need not carry every field."""
    data: dict[str, Any] = {}
    for target, source in spec:
        value = lookup(event, source)
        if value is _MISSING:
            continue
        node = data
        for segment in target[:-1]:
            node = node.setdefault(segment, {})
        node[target[-1]] = value
    return data


def _equal(value: Any, expected: Any) -> bool:
    # True == 1 in Python; an event's true is not a rule's 1.
    if isinstance(value, bool) or isinstance(expected, bool):
        return type(value) is type(expected) and value == expected
    return value is not _MISSING and bool(value == expected)


def _user_id(value: Any) -> str | None:
    """A user id, from a string or an integer (services often use numeric ids)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str) and USER_ID.fullmatch(value):
        return value
    return None


def _user_ids(value: Any) -> tuple[str, ...] | Poison:
    if value is _MISSING:
        return Poison("missing")
    values = value if isinstance(value, list) else [value]
    if len(values) > MAX_RECIPIENTS:
        return Poison(f"more than {MAX_RECIPIENTS} user ids")
    ids: list[str] = []
    for item in values:
        user = _user_id(item)
        if user is None:
            return Poison(f"{_shown(item)} is not a user id")
        if user not in ids:
            ids.append(user)
    return tuple(ids)


def _shown(value: Any) -> str:
    if value is _MISSING:
        return "missing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Parsing the configuration --------------------------------------------------------------

_KEYS: Final = {
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
}


def parse_rules(raw: object) -> tuple[IngestRule, ...]:
    """The ``[[ingest]]`` array of tables; ``RuleError`` names a bad setting."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise RuleError("ingest must be an array of tables: write each rule as [[ingest]]")
    rules = tuple(_rule(f"ingest[{i}]", table) for i, table in enumerate(raw))
    seen: dict[str, str] = {}
    streams: dict[tuple[str, str, str], IngestRule] = {}
    for i, rule in enumerate(rules):
        where = f"ingest[{i}]"
        if rule.name in seen:
            raise RuleError(
                f"{where}.name: {rule.name!r} is also the name of {seen[rule.name]}; "
                "every rule needs its own name (it labels the rule's metrics)"
            )
        seen[rule.name] = where
        if rule.source == "stream":
            # Rules on one stream and group share one consumer: its settings must agree.
            first = streams.setdefault((rule.redis_url, rule.stream, rule.group), rule)
            for setting in ("start", "field", "claim_idle", "batch", "concurrency"):
                if getattr(first, setting) != getattr(rule, setting):
                    raise RuleError(
                        f"{where}.{setting}: rules reading stream {rule.stream!r} with group "
                        f"{rule.group!r} share one consumer and must agree on {setting} "
                        f"(rule {first.name!r} has {getattr(first, setting)!r})"
                    )
    return rules


def _rule(where: str, table: dict[str, Any]) -> IngestRule:
    for key in table:
        if key not in _KEYS:
            raise RuleError(f"unknown setting {where}.{key} (known: {', '.join(sorted(_KEYS))})")
    source = _choice(where, table, "source", ("pubsub", "stream"), None)
    kind = _string(where, table, "type", None)
    if not 1 <= len(kind) <= MAX_TYPE:
        raise RuleError(f"{where}.type must be 1 to {MAX_TYPE} characters")
    values: dict[str, Any] = {"source": source, "type": kind}
    if source == "pubsub":
        channel = _string(where, table, "channel", "")
        pattern = _string(where, table, "pattern", "")
        if bool(channel) == bool(pattern):
            raise RuleError(f"{where}: a pubsub rule sets exactly one of channel and pattern")
        for key in ("stream", "group", "start", "field", "claim_idle", "batch", "concurrency"):
            if key in table:
                raise RuleError(f"{where}.{key} is a stream setting; this rule is pubsub")
        values.update(channel=channel, pattern=pattern)
    else:
        for key in ("channel", "pattern"):
            if key in table:
                raise RuleError(f"{where}.{key} is a pubsub setting; this rule is a stream")
        values.update(
            stream=_string(where, table, "stream", None),
            group=_string(where, table, "group", "realtime"),
            start=_choice(where, table, "start", ("$", "0"), "$"),
            field=_string(where, table, "field", "data"),
            claim_idle=_number(where, table, "claim_idle", 60.0, minimum=1.0),
            batch=_integer(where, table, "batch", 100, minimum=1),
            concurrency=_integer(where, table, "concurrency", 8, minimum=1),
        )
        if not values["stream"] or not values["group"]:
            raise RuleError(f"{where}: stream and group must not be empty")
    values["redis_url"] = _string(where, table, "redis_url", "")
    if values["redis_url"] and not re.match(r"^rediss?://", values["redis_url"]):
        raise RuleError(f"{where}.redis_url must be redis://… or rediss://…")
    name = _string(where, table, "name", kind)
    if not _NAME.fullmatch(name):
        raise RuleError(f"{where}.name must be 1 to 64 of [A-Za-z0-9_.-], got {name!r}")
    values["name"] = name
    values["match"] = tuple(_flat_match(f"{where}.match", _table(where, table, "match")))
    recipients = _table(where, table, "recipients")
    if set(recipients) not in ({"to"}, {"followers_of"}):
        raise RuleError(
            f'{where}.recipients must be {{ to = "path" }} or {{ followers_of = "path" }}'
        )
    for key, value in recipients.items():
        values[key] = _path(f"{where}.recipients.{key}", value)
    if "actor" in table:
        values["actor"] = _path(f"{where}.actor", table["actor"])
    exclude = table.get("exclude_actor", False)
    if not isinstance(exclude, bool):
        raise RuleError(f"{where}.exclude_actor must be true or false")
    if exclude and "to" not in recipients:
        raise RuleError(
            f"{where}.exclude_actor applies to recipients.to only "
            "(a user's followers never include that user)"
        )
    if exclude and "actor" not in table:
        raise RuleError(f"{where}.exclude_actor needs an actor path")
    values["exclude_actor"] = exclude
    if "data" in table:
        values["data"] = _data_spec(f"{where}.data", table["data"])
    return IngestRule(**values)


def _string(where: str, table: dict[str, Any], key: str, default: str | None) -> str:
    if key not in table:
        if default is None:
            raise RuleError(f"{where}.{key} is required")
        return default
    value = table[key]
    if not isinstance(value, str):
        raise RuleError(f"{where}.{key} must be a string, got {value!r}")
    return value


def _choice(
    where: str, table: dict[str, Any], key: str, choices: tuple[str, ...], default: str | None
) -> Any:
    value = _string(where, table, key, default)
    if value not in choices:
        raise RuleError(f"{where}.{key} must be one of {list(choices)}, got {value!r}")
    return value


def _number(
    where: str, table: dict[str, Any], key: str, default: float, *, minimum: float
) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleError(f"{where}.{key} must be a number, got {value!r}")
    if value < minimum:
        raise RuleError(f"{where}.{key} must be at least {minimum:g}, got {value}")
    return float(value)


def _integer(where: str, table: dict[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleError(f"{where}.{key} must be an integer, got {value!r}")
    if value < minimum:
        raise RuleError(f"{where}.{key} must be at least {minimum}, got {value}")
    return value


def _table(where: str, table: dict[str, Any], key: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise RuleError(f"{where}.{key} must be a table ({key} = {{ ... }})")
    return value


def _path(where: str, value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise RuleError(f"{where} must be a dotted path to a field of the event, got {value!r}")
    path = tuple(value.split("."))
    if not all(path):
        raise RuleError(f"{where}: {value!r} has an empty segment")
    return path


def _flat_match(where: str, table: dict[str, Any], prefix: Path = ()) -> list[tuple[Path, Any]]:
    """Quoted keys are dotted paths; TOML's own dotted keys arrive as nested tables."""
    pairs: list[tuple[Path, Any]] = []
    for key, value in table.items():
        path = (*prefix, *_path(f"{where}.{key}", key))
        if isinstance(value, dict):
            pairs.extend(_flat_match(where, value, path))
        else:
            pairs.append((path, value))
    return pairs


def _data_spec(where: str, value: object) -> tuple[tuple[Path, Path], ...]:
    """A list of paths copies each to the same place; a table maps field -> path
    (a nested table, or a dotted key, gives a nested field)."""
    if isinstance(value, list):
        spec = [(path, path) for path in (_path(f"{where}[{i}]", v) for i, v in enumerate(value))]
    elif isinstance(value, dict):
        spec = _spec_table(where, value, ())
    else:
        raise RuleError(f'{where} must be a table of field = "path" or a list of paths')
    targets = sorted(target for target, _ in spec)
    for shorter, longer in itertools.pairwise(targets):
        if longer[: len(shorter)] == shorter:
            raise RuleError(f"{where}: {dotted(longer)!r} lies inside {dotted(shorter)!r}")
    return tuple(spec)


def _spec_table(where: str, table: dict[str, Any], prefix: Path) -> list[tuple[Path, Path]]:
    spec: list[tuple[Path, Path]] = []
    for key, value in table.items():
        target = (*prefix, key)
        if isinstance(value, dict):
            spec.extend(_spec_table(where, value, target))
        else:
            spec.append((target, _path(f"{where}.{dotted(target)}", value)))
    return spec
