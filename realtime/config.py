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
from typing import Any, Literal, get_args, get_origin, get_type_hints

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


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "auth": AuthSettings,
    "storage": StorageSettings,
    "broker": BrokerSettings,
    "presence": PresenceSettings,
    "delivery": DeliverySettings,
    "demo": DemoSettings,
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
        if key not in _SECTIONS and key != "namespaces":
            raise ConfigError(f"unknown section [{key}] (known: {', '.join(_known_sections())})")
    _apply_environment(sections, env)
    values: dict[str, Any] = {
        name: _build(cls, sections[name], name) for name, cls in _SECTIONS.items()
    }
    values["namespaces"] = _namespaces(raw.get("namespaces"))
    settings = Settings(**values)
    settings.check(auth=auth)
    return settings


def _known_sections() -> list[str]:
    return [*_SECTIONS, "namespaces"]


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
