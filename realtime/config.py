"""Settings: defaults here, then ``config.toml``, then ``REALTIME_<SECTION>_<KEY>``.

Every setting is a typed dataclass field whose default is the documented default
(``config.toml`` at the top of the repository documents each one). Anything
unknown or ill-typed stops start-up with a ``ConfigError`` naming the setting.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin, get_type_hints

if TYPE_CHECKING:
    from .ingest.rules import IngestRule

ENV_PREFIX = "REALTIME_"

JoinPolicy = Literal["members", "followers", "owner", "anyone"]
SendPolicy = Literal["members", "owner", "nobody", "anyone"]


class ConfigError(Exception):
    """A setting is unknown or invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    allowed_origins: list[str] = field(default_factory=list)
    max_frame_bytes: int = 256 * 1024
    max_request_bytes: int = 1024 * 1024
    send_buffer_bytes: int = 1024 * 1024
    # 0: half of send_buffer_bytes; equal to it: never degrade, only close.
    send_buffer_soft_bytes: int = 0
    ping_interval: float = 25.0
    ping_timeout: float = 60.0
    max_connections_per_user: int = 16
    max_rooms_per_connection: int = 1000
    rate_limit: float = 50.0
    rate_burst: int = 100
    rate_limit_strikes: int = 100
    shutdown_timeout: float = 10.0
    close_timeout: float = 3.0
    # Before a connection is an authenticated WebSocket (see admission.py).
    handshake_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_unauthenticated: int = 2048
    # Pacing reconnects (pacing.py): the advice in paced closes, and new WebSockets
    # per second past which handshakes get 503 with Retry-After (0: no limit), and
    # the WebSockets still opening past which they do too.
    reconnect_rate: float = 200.0
    reconnect_delay: float = 0.5
    max_handshake_rate: float = 0.0
    # Socket.IO polling on several instances (sio_relay.py): the wait for the owning
    # instance beyond a long poll's own, and relayed requests waiting or served at once.
    relay_timeout: float = 10.0
    max_relayed: int = 1000
    max_opening: int = 256
    max_lag: float = 2.0
    instance_id: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Operations: log lines as text or JSON (with each connection's user and
    # session), and one line per REST request.
    log_format: Literal["text", "json"] = "text"
    access_log: bool = False

    def check(self) -> None:
        _at_least("server.port", self.port, 0)
        _at_least("server.max_frame_bytes", self.max_frame_bytes, 1024)
        _at_least("server.max_request_bytes", self.max_request_bytes, 1024)
        _at_least("server.send_buffer_bytes", self.send_buffer_bytes, 1024)
        _at_least("server.send_buffer_soft_bytes", self.send_buffer_soft_bytes, 0)
        if self.send_buffer_soft_bytes > self.send_buffer_bytes:
            raise ConfigError("server.send_buffer_soft_bytes must be at most send_buffer_bytes")
        _at_least("server.ping_interval", self.ping_interval, 0.1)
        if self.ping_timeout <= self.ping_interval:
            raise ConfigError("server.ping_timeout must be greater than server.ping_interval")
        _at_least("server.max_connections_per_user", self.max_connections_per_user, 1)
        _at_least("server.max_rooms_per_connection", self.max_rooms_per_connection, 1)
        _at_least("server.rate_limit", self.rate_limit, 0.1)
        _at_least("server.rate_burst", self.rate_burst, 1)
        _at_least("server.rate_limit_strikes", self.rate_limit_strikes, 1)
        _at_least("server.shutdown_timeout", self.shutdown_timeout, 0)
        _at_least("server.close_timeout", self.close_timeout, 0.1)
        _at_least("server.handshake_timeout", self.handshake_timeout, 0.1)
        _at_least("server.keepalive_timeout", self.keepalive_timeout, 0.1)
        _at_least("server.max_unauthenticated", self.max_unauthenticated, 1)
        _at_least("server.reconnect_rate", self.reconnect_rate, 0.1)
        _at_least("server.reconnect_delay", self.reconnect_delay, 0)
        _at_least("server.max_handshake_rate", self.max_handshake_rate, 0)
        _at_least("server.relay_timeout", self.relay_timeout, 0.1)
        _at_least("server.max_relayed", self.max_relayed, 1)
        _at_least("server.max_opening", self.max_opening, 0)
        _at_least("server.max_lag", self.max_lag, 0)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    secret: str = ""
    public_key_file: str = ""
    jwks_file: str = ""
    algorithms: list[str] = field(default_factory=lambda: ["HS256"])
    issuer: str = ""
    audience: str = ""
    leeway: float = 5.0
    auth_timeout: float = 10.0
    service_keys: list[str] = field(default_factory=list)
    token_ttl: int = 3600

    def check(self) -> None:
        allowed = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384"}
        for algorithm in self.algorithms:
            if algorithm not in allowed:
                raise ConfigError(
                    f"auth.algorithms: {algorithm!r} is not allowed; use some of {sorted(allowed)}"
                )
        if not self.algorithms:
            raise ConfigError("auth.algorithms must name at least one algorithm")
        symmetric = any(a.startswith("HS") for a in self.algorithms)
        asymmetric = any(not a.startswith("HS") for a in self.algorithms)
        if symmetric and not self.secret:
            raise ConfigError(
                "auth.secret is required for HS algorithms "
                "(set it in the config file or REALTIME_AUTH_SECRET)"
            )
        if asymmetric and not (self.public_key_file or self.jwks_file):
            raise ConfigError("auth.public_key_file or auth.jwks_file is required for RS/ES")
        if self.public_key_file and self.jwks_file:
            raise ConfigError("set auth.public_key_file or auth.jwks_file, not both")
        if symmetric and 0 < len(self.secret.encode()) < 32:
            # RFC 7518 3.2: an HS256 key is at least as long as the hash (32 bytes).
            raise ConfigError("auth.secret must be at least 32 bytes")
        _at_least("auth.leeway", self.leeway, 0)
        _at_least("auth.auth_timeout", self.auth_timeout, 0.1)
        _at_least("auth.token_ttl", self.token_ttl, 1)
        for key in self.service_keys:
            if len(key) < 16:
                raise ConfigError("auth.service_keys: every key must be at least 16 characters")


@dataclass(frozen=True, slots=True)
class StorageSettings:
    dsn: str = ""
    timeout: float = 5.0
    pool_size: int = 10
    sqlite_synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    retention_interval: float = 60.0

    def check(self) -> None:
        if self.dsn and not re.match(r"^(sqlite:///|postgres(ql)?://)", self.dsn):
            raise ConfigError(
                "storage.dsn must be empty, sqlite:///relative.db, sqlite:////abs.db "
                f"or postgresql://…, got {self.dsn!r}"
            )
        _at_least("storage.timeout", self.timeout, 0.1)
        _at_least("storage.pool_size", self.pool_size, 1)
        _at_least("storage.retention_interval", self.retention_interval, 1)


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    url: str = ""
    timeout: float = 5.0
    prefix: str = "rt"
    pool_size: int = 64
    canary_interval: float = 2.0
    canary_timeout: float = 5.0

    def check(self) -> None:
        if self.url and not re.match(r"^(redis|rediss|redis\+cluster)://", self.url):
            raise ConfigError(
                f"broker.url must be empty, redis://… or redis+cluster://…, got {self.url!r}"
            )
        _at_least("broker.timeout", self.timeout, 0.1)
        _at_least("broker.pool_size", self.pool_size, 1)
        _at_least("broker.canary_interval", self.canary_interval, 0.1)
        _at_least("broker.canary_timeout", self.canary_timeout, 0.1)
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", self.prefix):
            raise ConfigError("broker.prefix must be 1 to 32 of [A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class PresenceSettings:
    ttl: float = 10.0

    def check(self) -> None:
        _at_least("presence.ttl", self.ttl, 1.0)


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    gap_timeout: float = 0.2
    tail_check_interval: float = 5.0
    recent_messages: int = 64
    recovery_limit: int = 200
    typing_timeout: float = 8.0

    def check(self) -> None:
        _at_least("delivery.gap_timeout", self.gap_timeout, 0.001)
        _at_least("delivery.tail_check_interval", self.tail_check_interval, 0.1)
        _at_least("delivery.recent_messages", self.recent_messages, 0)
        _at_least("delivery.recovery_limit", self.recovery_limit, 1)
        _at_least("delivery.typing_timeout", self.typing_timeout, 0.1)


@dataclass(frozen=True, slots=True)
class NamespaceSettings:
    join: JoinPolicy = "members"
    send: SendPolicy = "members"
    history: bool = True
    history_ttl: int = 0
    history_max: int = 0
    presence: bool = False
    typing: bool = False
    max_body_bytes: int = 64 * 1024

    def check(self, name: str) -> None:
        _at_least(f"namespaces.{name}.history_ttl", self.history_ttl, 0)
        _at_least(f"namespaces.{name}.history_max", self.history_max, 0)
        _at_least(f"namespaces.{name}.max_body_bytes", self.max_body_bytes, 1)


# The demo page (realtime/demo/): off unless asked for. While on, POST /demo/token
# mints a token for any user who asks over loopback (see docs/demo.md).
@dataclass(frozen=True, slots=True)
class DemoSettings:
    enabled: bool = False
    room: str = "swap:demo"

    def check(self, namespaces: Mapping[str, NamespaceSettings]) -> None:
        namespace, _, key = self.room.partition(":")
        rules = namespaces.get(namespace)
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", key) or rules is None:
            raise ConfigError(
                f"demo.room must be <namespace>:<key> of a configured namespace, got {self.room!r}"
            )
        # The demo lets its users in by granting membership.
        if rules.join not in ("members", "anyone"):
            raise ConfigError(f"demo.room: namespace {namespace!r} must join 'members' or 'anyone'")


# Offline delivery channels (realtime/outbound/): each transport is off until its
# first setting is given.

Urgency = Literal["very-low", "low", "normal", "high"]


@dataclass(frozen=True, slots=True)
class WebPushSettings:
    vapid_private_key_file: str = ""
    vapid_subject: str = ""
    ttl: int = 86400
    urgency: Urgency = "normal"
    timeout: float = 10.0
    max_subscriptions: int = 10
    allow_http_endpoints: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.vapid_private_key_file)

    def check(self) -> None:
        # What py_vapid signs: a mailto: address, or an https:// origin without a path.
        subject = r"mailto:[^@\s]+@[\w.-]+|https://[\w-]+(\.[\w-]+)+"
        if self.enabled and not re.fullmatch(subject, self.vapid_subject):
            raise ConfigError(
                "webpush.vapid_subject must be a mailto: address or an https:// origin "
                f"(push services contact the sender there), got {self.vapid_subject!r}"
            )
        _at_least("webpush.ttl", self.ttl, 0)
        _at_least("webpush.timeout", self.timeout, 0.1)
        _at_least("webpush.max_subscriptions", self.max_subscriptions, 1)


@dataclass(frozen=True, slots=True)
class EmailSettings:
    smtp_host: str = ""
    smtp_port: int = 587
    username: str = ""
    password: str = ""
    starttls: bool = True
    sender: str = ""
    timeout: float = 10.0
    templates_dir: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.smtp_host)

    def check(self) -> None:
        if self.enabled and not re.fullmatch(r"(.*<)?[^@<>\s]+@[^@<>\s]+>?", self.sender):
            raise ConfigError(
                f"email.sender must be an address (or 'Name <address>'), got {self.sender!r}"
            )
        if not 0 < self.smtp_port < 65536:
            raise ConfigError(f"email.smtp_port must be a port number, got {self.smtp_port}")
        if bool(self.username) != bool(self.password):
            raise ConfigError("email.username and email.password go together")
        _at_least("email.timeout", self.timeout, 0.1)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    url: str = ""
    secret: str = ""
    timeout: float = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def check(self) -> None:
        if self.url and not re.match(r"^https?://[^/\s]+", self.url):
            raise ConfigError(f"webhook.url must be http://… or https://…, got {self.url!r}")
        if self.url and len(self.secret.encode()) < 32:
            raise ConfigError("webhook.secret (at least 32 bytes) is required with webhook.url")
        _at_least("webhook.timeout", self.timeout, 0.1)


# The durable outbox (issue 10, outbox): the worker that delivers queued jobs -------


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    # Run the delivery worker on this instance (every instance may: they never take
    # the same job at once).
    enabled: bool = True
    # Jobs in flight at once; the worker claims only as many as it has room for.
    concurrency: int = 8
    # At most this many jobs per claim.
    batch: int = 50
    # Seconds between looks for due jobs while there are none.
    poll_interval: float = 1.0
    # Seconds a claimed job is the worker's; a worker that dies holding it loses it
    # then, and another takes it (at least once). A send is cut off before it ends.
    lease: float = 60.0
    # Tries before a job that keeps failing transiently is a dead letter.
    max_attempts: int = 8
    # Retry n waits a random time up to min(backoff_max, backoff_base * 2**(n-1)) seconds.
    backoff_base: float = 2.0
    backoff_max: float = 3600.0
    # Seconds done and skipped jobs are kept (dead ones stay until requeued); 0: forever.
    keep_finished: float = 604800.0

    def check(self) -> None:
        _at_least("outbox.keep_finished", self.keep_finished, 0)
        _at_least("outbox.concurrency", self.concurrency, 1)
        _at_least("outbox.batch", self.batch, 1)
        _at_least("outbox.poll_interval", self.poll_interval, 0.01)
        _at_least("outbox.lease", self.lease, 1.0)
        _at_least("outbox.max_attempts", self.max_attempts, 1)
        _at_least("outbox.backoff_base", self.backoff_base, 0.001)
        if self.backoff_max < self.backoff_base:
            raise ConfigError("outbox.backoff_max must be at least outbox.backoff_base")


# Notifications (issue 10, inbox): types and what the inbox does with them ----------

CHANNELS = ("in_app", "push", "email")
"""Channels a notification type and a user's preferences speak of."""
TYPE_NAME = r"[A-Za-z0-9_.:-]{1,64}"
"""A notification type's name (the REST ``type`` is at most 64 characters)."""


def _all_channels() -> list[str]:
    return list(CHANNELS)


@dataclass(frozen=True, slots=True)
class NotificationTypeSettings:
    """One ``[notifications.types.<name>]`` table (or ``[notifications.default_type]``)."""

    channels: list[str] = field(default_factory=_all_channels)
    # The data field whose value groups notifications into an email digest; "": none.
    group: str = ""
    # Cannot be muted: the global mute, per-type choices and quiet hours are ignored.
    critical: bool = False
    # The table's name, set by the loader (not a setting).
    name: str = ""

    def check(self, where: str) -> None:
        unknown = [c for c in self.channels if c not in CHANNELS]
        if unknown or len(set(self.channels)) != len(self.channels):
            raise ConfigError(
                f"{where}.channels must name each of {list(CHANNELS)} at most once, "
                f"got {self.channels!r}"
            )


def default_notification_types() -> dict[str, NotificationTypeSettings]:
    """The six types of the social app; config.toml documents them."""
    groups = {
        "post_liked": "post_id",
        "post_commented": "post_id",
        "user_followed": "",
        "user_mentioned": "post_id",
        "friend_request": "",
        "direct_message": "conversation_id",
    }
    return {
        name: NotificationTypeSettings(group=group, name=name) for name, group in groups.items()
    }


@dataclass(frozen=True, slots=True)
class NotificationSettings:
    # True: a type not configured is accepted with the [notifications.default_type] rules.
    free_types: bool = False
    dedupe_window: float = 86400.0
    # Used by the outbox: an online recipient gets the offline transports only if it has
    # not read the notification within unread_delay; email within digest_window is merged.
    unread_delay: float = 300.0
    digest_window: float = 600.0
    default_type: NotificationTypeSettings = field(default_factory=NotificationTypeSettings)
    types: dict[str, NotificationTypeSettings] = field(default_factory=default_notification_types)

    def type_settings(self, name: str) -> NotificationTypeSettings | None:
        """The rules of type ``name``; None when it is unknown and types are not free."""
        found = self.types.get(name)
        if found is None and self.free_types:
            found = self.default_type
        if found is not None and found.name != name:  # built by hand, without its name
            found = dataclasses.replace(found, name=name)
        return found

    def check(self) -> None:
        _at_least("notifications.dedupe_window", self.dedupe_window, 0)
        _at_least("notifications.unread_delay", self.unread_delay, 0)
        _at_least("notifications.digest_window", self.digest_window, 0)
        self.default_type.check("notifications.default_type")
        for name, rules in self.types.items():
            if not re.fullmatch(TYPE_NAME, name):
                raise ConfigError(f"notifications.types.{name}: a type name is {TYPE_NAME}")
            rules.check(f"notifications.types.{name}")


def default_namespaces() -> dict[str, NamespaceSettings]:
    return {
        "swap": NamespaceSettings(join="members", send="members", presence=True, typing=True),
        "followers": NamespaceSettings(join="followers", send="owner", history_ttl=7 * 24 * 3600),
        "user": NamespaceSettings(join="owner", send="nobody"),
    }


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    presence: PresenceSettings = field(default_factory=PresenceSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    namespaces: dict[str, NamespaceSettings] = field(default_factory=default_namespaces)
    demo: DemoSettings = field(default_factory=DemoSettings)
    webpush: WebPushSettings = field(default_factory=WebPushSettings)
    email: EmailSettings = field(default_factory=EmailSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    notifications: NotificationSettings = field(default_factory=NotificationSettings)
    # [[ingest]] rules: notifications from other services' events (realtime/ingest/).
    ingest: tuple[IngestRule, ...] = ()
    outbox: OutboxSettings = field(default_factory=OutboxSettings)

    def check(self, *, auth: bool = True) -> None:
        self.server.check()
        if auth:
            self.auth.check()
        self.storage.check()
        self.broker.check()
        self.presence.check()
        self.delivery.check()
        for name, namespace in self.namespaces.items():
            if not re.fullmatch(r"[a-z_]+", name):
                raise ConfigError(f"namespaces.{name}: a namespace name is [a-z_]+")
            namespace.check(name)
        if "user" not in self.namespaces:
            raise ConfigError("namespaces.user is required: every connection joins user:<id>")
        if self.namespaces["user"].join != "owner":
            raise ConfigError("namespaces.user.join must be 'owner'")
        self.demo.check(self.namespaces)
        self.webpush.check()
        self.email.check()
        self.webhook.check()
        self.notifications.check()
        self._check_ingest()

    def _check_ingest(self) -> None:
        for index, rule in enumerate(self.ingest):
            url = rule.redis_url or self.broker.url
            if not url:
                raise ConfigError(
                    f"ingest[{index}].redis_url is required when broker.url is empty "
                    "(the events come from Redis)"
                )
            if not re.match(r"^rediss?://", url):
                raise ConfigError(
                    f"ingest[{index}]: reading events from a Redis Cluster is not supported; "
                    "set redis_url to a redis:// url"
                )
            if self.notifications.type_settings(rule.type) is None:
                # Else every event of the rule would be refused, one by one, at run time.
                raise ConfigError(
                    f"ingest[{index}].type: {rule.type!r} is not a notification type; "
                    f"declare [notifications.types.{rule.type}] or set notifications.free_types"
                )
        self.outbox.check()


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "auth": AuthSettings,
    "storage": StorageSettings,
    "broker": BrokerSettings,
    "presence": PresenceSettings,
    "delivery": DeliverySettings,
    "demo": DemoSettings,
    "webpush": WebPushSettings,
    "email": EmailSettings,
    "webhook": WebhookSettings,
    "notifications": NotificationSettings,
    "outbox": OutboxSettings,
}


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    auth: bool = True,
) -> Settings:
    """Read the file (if any), apply environment overrides, and check everything.

    ``auth=False`` skips the auth checks, for commands that need no tokens.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    env = os.environ if environ is None else environ
    sections = {name: dict(raw.get(name, {})) for name in _SECTIONS}
    for key in raw:
        if key not in _SECTIONS and key not in ("namespaces", "ingest"):
            raise ConfigError(f"unknown section [{key}] (known: {', '.join(_known_sections())})")
    _apply_environment(sections, env)
    values: dict[str, Any] = {
        name: _build(cls, sections[name], name)
        for name, cls in _SECTIONS.items()
        if name not in _NESTED
    }
    values["notifications"] = _notifications(sections["notifications"])
    values["namespaces"] = _namespaces(raw.get("namespaces"))
    from .ingest.rules import RuleError, parse_rules  # imports auth, which imports this

    try:
        values["ingest"] = parse_rules(raw.get("ingest"))
    except RuleError as error:
        raise ConfigError(str(error)) from None
    settings = Settings(**values)
    settings.check(auth=auth)
    return settings


def _known_sections() -> list[str]:
    return [*_SECTIONS, "namespaces", "ingest"]


def _namespaces(raw: object) -> dict[str, NamespaceSettings]:
    if raw is None:
        return default_namespaces()
    if not isinstance(raw, dict):
        raise ConfigError("[namespaces] must be a table of [namespaces.<name>] tables")
    # The file adds namespaces and changes defaults; the three defaults always exist.
    defaults = default_namespaces()
    namespaces = dict(defaults)
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"namespaces.{name} must be a table")
        base = defaults.get(name, NamespaceSettings())
        merged = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        merged.update(table)
        namespaces[name] = _build(NamespaceSettings, merged, f"namespaces.{name}")
    return namespaces


# Sections with tables inside, built by hand; the environment sets their plain keys.
_NESTED = frozenset({"notifications"})
_NOTIFICATION_TABLES = ("types", "default_type")


def _notifications(table: dict[str, Any]) -> NotificationSettings:
    flat = {k: v for k, v in table.items() if k not in _NOTIFICATION_TABLES}
    built: NotificationSettings = _build(NotificationSettings, flat, "notifications")
    default = _notification_type(
        table.get("default_type", {}), NotificationTypeSettings(), "notifications.default_type"
    )
    raw_types = table.get("types", {})
    if not isinstance(raw_types, dict):
        raise ConfigError(
            "notifications.types must be a table of [notifications.types.<name>] tables"
        )
    # The file adds types and changes defaults; the six defaults always exist.
    types = default_notification_types()
    for name, rules in raw_types.items():
        base = types.get(name, NotificationTypeSettings())
        types[name] = dataclasses.replace(
            _notification_type(rules, base, f"notifications.types.{name}"), name=name
        )
    return dataclasses.replace(built, default_type=default, types=types)


def _notification_type(
    table: object, base: NotificationTypeSettings, where: str
) -> NotificationTypeSettings:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    if "name" in table:  # the table's own name says it
        raise ConfigError(
            f"unknown setting {where}.name (known in [{where}]: channels, critical, group)"
        )
    merged = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name != "name"}
    merged.update(table)
    built: NotificationTypeSettings = _build(NotificationTypeSettings, merged, where)
    return dataclasses.replace(built, name=base.name)


def _apply_environment(sections: dict[str, dict[str, Any]], env: Mapping[str, str]) -> None:
    for variable, text in env.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        rest = variable[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or not key:
            raise ConfigError(
                f"unknown environment setting {variable} "
                f"(expected {ENV_PREFIX}<SECTION>_<KEY>, sections: {', '.join(_SECTIONS)})"
            )
        hints = get_type_hints(_SECTIONS[section])
        if key not in hints:
            raise ConfigError(f"unknown environment setting {variable}: no {section}.{key}")
        sections[section][key] = _from_env(variable, text, hints[key])


def _from_env(variable: str, text: str, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin is list:
        return [item.strip() for item in text.split(",") if item.strip()]
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{variable} must be true or false, got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{variable} must be an integer, got {text!r}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{variable} must be a number, got {text!r}") from None
    return text


def _build(cls: type[Any], table: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    for key in table:
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"unknown setting {where}.{key} (known in [{where}]: {known})")
    values = {key: _checked(f"{where}.{key}", value, hints[key]) for key, value in table.items()}
    return cls(**values)


def _checked(name: str, value: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
        return value
    if origin is list:
        (item_type,) = get_args(hint)
        if not isinstance(value, list) or not all(isinstance(v, item_type) for v in value):
            raise ConfigError(f"{name} must be a list of {item_type.__name__}, got {value!r}")
        return list(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if isinstance(hint, type):
        if hint is int and isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if not isinstance(value, hint):
            raise ConfigError(f"{name} must be of type {hint.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported setting type {hint!r}")


def _at_least(name: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
