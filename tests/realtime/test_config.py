"""Settings: the shipped config.toml is the defaults; bad settings are named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from realtime.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
ENV = {"REALTIME_AUTH_SECRET": "s" * 32}


def test_config_toml_documents_exactly_the_defaults() -> None:
    assert load_settings(ROOT / "config.toml", ENV) == Settings(auth=load_settings(None, ENV).auth)


def test_every_setting_is_in_config_toml() -> None:
    text = (ROOT / "config.toml").read_text()
    settings = load_settings(None, ENV)
    for section in ("server", "auth", "storage", "broker", "presence", "delivery"):
        assert f"[{section}]" in text
        for key in getattr(settings, section).__dataclass_fields__:
            assert f"\n{key} = " in text, f"{section}.{key} is not documented in config.toml"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 9000\n[auth]\nsecret = "' + "f" * 40 + '"\n')
    settings = load_settings(
        path,
        {
            "REALTIME_SERVER_PORT": "9100",
            "REALTIME_AUTH_SERVICE_KEYS": "k" * 16 + ", " + "j" * 16,
            "REALTIME_SERVER_ALLOWED_ORIGINS": "https://a.example",
            "REALTIME_STORAGE_DSN": "postgresql://x@y/z",
            "REALTIME_DELIVERY_GAP_TIMEOUT": "0.5",
        },
    )
    assert settings.server.port == 9100
    assert settings.auth.service_keys == ["k" * 16, "j" * 16]
    assert settings.server.allowed_origins == ["https://a.example"]
    assert settings.storage.dsn == "postgresql://x@y/z"
    assert settings.delivery.gap_timeout == 0.5
    assert settings.auth.secret == "f" * 40


@pytest.mark.parametrize(
    ("text", "env", "named"),
    [
        ("[server]\nprot = 1\n", {}, "server.prot"),
        ("[serve]\nport = 1\n", {}, "[serve]"),
        ('[server]\nport = "80"\n', {}, "server.port"),
        ("[server]\nport = true\n", {}, "server.port"),
        ("[server]\nping_timeout = 1.0\n", {}, "server.ping_timeout"),
        ('[server]\nlog_level = "loud"\n', {}, "server.log_level"),
        ('[namespaces.swap]\njoin = "friends"\n', {}, "namespaces.swap.join"),
        ("[namespaces.swap]\ncolour = 1\n", {}, "namespaces.swap.colour"),
        ('[storage]\ndsn = "mysql://x"\n', {}, "storage.dsn"),
        ('[auth]\nalgorithms = ["none"]\n', {}, "auth.algorithms"),
        ("", {"REALTIME_SERVER_PROT": "1"}, "REALTIME_SERVER_PROT"),
        ("", {"REALTIME_NOPE_X": "1"}, "REALTIME_NOPE_X"),
        ("", {"REALTIME_SERVER_PORT": "eighty"}, "REALTIME_SERVER_PORT"),
        ("[server\n", {}, "not valid TOML"),
    ],
)
def test_bad_settings_stop_start_up_naming_the_setting(
    tmp_path: Path, text: str, env: dict[str, str], named: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings(path, {**ENV, **env})


def test_a_secret_is_required_for_hs256() -> None:
    with pytest.raises(ConfigError, match=r"auth\.secret"):
        load_settings(None, {})


# Notifications (inbox) -------------------------------------------------------------------


def test_every_notification_setting_and_default_type_is_in_config_toml() -> None:
    text = (ROOT / "config.toml").read_text()
    notifications = load_settings(None, ENV).notifications
    assert "[notifications]" in text and "[notifications.default_type]" in text
    for key in ("free_types", "dedupe_window", "unread_delay", "digest_window"):
        assert f"\n{key} = " in text, key
    assert set(notifications.types) == {
        "post_liked",
        "post_commented",
        "user_followed",
        "user_mentioned",
        "friend_request",
        "direct_message",
    }
    for name, rules in notifications.types.items():
        assert f"[notifications.types.{name}]" in text
        assert rules.name == name
        for key in ("channels", "group", "critical"):
            assert f"\n{key} = " in text.split(f"[notifications.types.{name}]")[1], (name, key)


def test_a_file_adds_types_and_changes_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[notifications]\ndedupe_window = 60\n"
        '[notifications.types.security]\ncritical = true\nchannels = ["in_app", "email"]\n'
        '[notifications.types.post_liked]\ngroup = ""\n'
        '[notifications.default_type]\nchannels = ["in_app"]\n'
    )
    settings = load_settings(path, {**ENV, "REALTIME_NOTIFICATIONS_FREE_TYPES": "yes"})
    rules = settings.notifications
    assert (rules.dedupe_window, rules.free_types) == (60.0, True)
    security = rules.types["security"]
    assert (security.name, security.channels, security.critical) == (
        "security",
        ["in_app", "email"],
        True,
    )
    liked = rules.types["post_liked"]
    assert (liked.group, liked.channels) == ("", ["in_app", "push", "email"])
    assert rules.types["direct_message"].group == "conversation_id"  # untouched default
    # Free types take the default type's rules, under their own name.
    free = rules.type_settings("anything")
    assert free is not None and (free.name, free.channels) == ("anything", ["in_app"])
    assert Settings().notifications.type_settings("anything") is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[notifications.types.x]\nchannels = ["sms"]\n', "notifications.types.x.channels"),
        ('[notifications.types.x]\nchannels = ["push", "push"]\n', "notifications.types.x"),
        ("[notifications.types.x]\ncolour = 1\n", "notifications.types.x.colour"),
        ('[notifications.types.x]\nname = "y"\n', "notifications.types.x.name"),
        ('[notifications.types."a b"]\n', "a type name is"),
        ("[notifications]\ntypes = 3\n", "notifications.types must be a table"),
        ('[notifications.default_type]\nchannels = ["fax"]\n', "notifications.default_type"),
        ("[notifications]\ndedupe_window = -1\n", "notifications.dedupe_window"),
        ("[notifications]\nfree = true\n", "notifications.free"),
    ],
)
def test_bad_notification_settings_are_named(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings(path, ENV)


def test_every_outbox_setting_is_in_config_toml() -> None:
    text = (ROOT / "config.toml").read_text()
    assert "\n[outbox]\n" in text
    for key in load_settings(None, ENV).outbox.__dataclass_fields__:
        assert f"\n{key} = " in text, f"outbox.{key} is not documented in config.toml"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[outbox]\nconcurrency = 0\n", "outbox.concurrency"),
        ("[outbox]\nlease = 0.5\n", "outbox.lease"),
        ("[outbox]\nbackoff_base = 10.0\nbackoff_max = 5.0\n", "outbox.backoff_max"),
        ("[outbox]\nmax_attempts = 0\n", "outbox.max_attempts"),
        ("[outbox]\nkeep_finished = -1.0\n", "outbox.keep_finished"),
        ("[outbox]\nworkers = 2\n", "outbox.workers"),
    ],
)
def test_bad_outbox_settings_are_named(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings(path, ENV)


def test_outbox_settings_come_from_the_environment() -> None:
    env = {**ENV, "REALTIME_OUTBOX_ENABLED": "false", "REALTIME_OUTBOX_POLL_INTERVAL": "0.2"}
    outbox = load_settings(None, env).outbox
    assert (outbox.enabled, outbox.poll_interval) == (False, 0.2)
