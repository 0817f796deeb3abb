"""The [webpush], [email] and [webhook] settings, the senders they turn on, and the
``vapid`` command."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from realtime.config import ConfigError, load_settings
from realtime.metrics import Metrics
from realtime.outbound import build_senders
from realtime.outbound.templates import TemplateError
from realtime.outbound.vapid import VapidKeyError, load_vapid_key
from storage import SqliteStore
from tests.e2e.support import cli_env, run_cli

ROOT = Path(__file__).resolve().parents[2]
ENV = {"REALTIME_AUTH_SECRET": "s" * 32}
SECTIONS = ("webpush", "email", "webhook")


def test_every_channel_setting_is_in_config_toml_and_everything_is_off() -> None:
    text = (ROOT / "config.toml").read_text()
    settings = load_settings(None, ENV)
    for section in SECTIONS:
        assert f"\n[{section}]\n" in text
        for key in getattr(settings, section).__dataclass_fields__:
            assert f"\n{key} = " in text, f"{section}.{key} is not documented in config.toml"
        assert getattr(settings, section).enabled is False


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"REALTIME_WEBPUSH_VAPID_PRIVATE_KEY_FILE": "k.pem"}, "webpush.vapid_subject must be"),
        (
            {
                "REALTIME_WEBPUSH_VAPID_PRIVATE_KEY_FILE": "k.pem",
                "REALTIME_WEBPUSH_VAPID_SUBJECT": "ops@example.com",
            },
            "webpush.vapid_subject must be",
        ),
        (
            {
                "REALTIME_WEBPUSH_VAPID_PRIVATE_KEY_FILE": "k.pem",
                "REALTIME_WEBPUSH_VAPID_SUBJECT": "https://app.example/contact",
            },
            "webpush.vapid_subject must be",
        ),
        ({"REALTIME_WEBPUSH_URGENCY": "urgent"}, "webpush.urgency must be one of"),
        ({"REALTIME_WEBPUSH_MAX_SUBSCRIPTIONS": "0"}, "webpush.max_subscriptions must be"),
        ({"REALTIME_EMAIL_SMTP_HOST": "mail"}, "email.sender must be an address"),
        ({"REALTIME_EMAIL_USERNAME": "u"}, "email.username and email.password go together"),
        ({"REALTIME_EMAIL_SMTP_PORT": "70000"}, "email.smtp_port must be a port number"),
        ({"REALTIME_WEBHOOK_URL": "ftp://x"}, "webhook.url must be http"),
        ({"REALTIME_WEBHOOK_URL": "https://hooks.example"}, "webhook.secret (at least 32 bytes)"),
        (
            {"REALTIME_WEBHOOK_URL": "https://hooks.example", "REALTIME_WEBHOOK_SECRET": "short"},
            "webhook.secret (at least 32 bytes)",
        ),
        ({"REALTIME_WEBHOOK_TIMEOUT": "0"}, "webhook.timeout must be at least"),
    ],
)
def test_bad_settings_are_named(environment: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {**ENV, **environment})
    assert message in str(caught.value)


async def test_build_senders_makes_the_configured_ones(
    tmp_path: Path,
    vapid_file: tuple[Path, str],
    store: SqliteStore,
    metrics: Metrics,
    http: aiohttp.ClientSession,
) -> None:
    assert build_senders(load_settings(None, ENV), store, metrics, http) == {}
    every = load_settings(
        None,
        {
            **ENV,
            "REALTIME_WEBPUSH_VAPID_PRIVATE_KEY_FILE": str(vapid_file[0]),
            "REALTIME_WEBPUSH_VAPID_SUBJECT": "https://app.example",
            "REALTIME_EMAIL_SMTP_HOST": "127.0.0.1",
            "REALTIME_EMAIL_SENDER": "App <notify@app.example>",
            "REALTIME_WEBHOOK_URL": "https://hooks.app.example/realtime",
            "REALTIME_WEBHOOK_SECRET": "w" * 32,
        },
    )
    senders = build_senders(every, store, metrics, http)
    assert {name: sender.transport for name, sender in senders.items()} == {
        "webpush": "webpush",
        "email": "email",
        "webhook": "webhook",
    }
    bad_dir = load_settings(
        None,
        {
            **ENV,
            "REALTIME_EMAIL_SMTP_HOST": "127.0.0.1",
            "REALTIME_EMAIL_SENDER": "a@b.c",
            "REALTIME_EMAIL_TEMPLATES_DIR": str(tmp_path / "nowhere"),
        },
    )
    with pytest.raises(TemplateError, match="nowhere is not a directory"):
        build_senders(bad_dir, store, metrics, http)


def test_the_vapid_command_writes_a_private_key_and_prints_its_public_key(
    tmp_path: Path,
) -> None:
    out = tmp_path / "vapid.pem"
    result = run_cli("vapid", "--out", str(out), env=cli_env())
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert result.stdout.strip() == load_vapid_key(str(out)).public_key
    assert len(result.stdout.strip()) == 87  # 65 bytes, base64url
    again = run_cli("vapid", "--out", str(out), env=cli_env())
    assert again.returncode == 1 and "--force" in again.stderr
    forced = run_cli("vapid", "--out", str(out), "--force", env=cli_env())
    assert forced.returncode == 0 and forced.stdout != result.stdout
    assert load_vapid_key(str(out)).public_key == forced.stdout.strip()


def test_a_key_of_another_kind_is_refused(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "p384.pem"
    path.write_bytes(other)
    with pytest.raises(VapidKeyError, match="not a P-256"):
        load_vapid_key(str(path))


def test_serve_with_a_missing_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        env=cli_env(
            REALTIME_AUTH_SECRET="s" * 32,
            REALTIME_SERVER_PORT="0",
            REALTIME_STORAGE_DSN=f"sqlite:///{tmp_path / 'r.db'}",
            REALTIME_WEBPUSH_VAPID_PRIVATE_KEY_FILE=str(tmp_path / "missing.pem"),
            REALTIME_WEBPUSH_VAPID_SUBJECT="mailto:ops@example.com",
        ),
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "configuration error: webpush.vapid_private_key_file" in result.stderr
    assert "missing.pem" in result.stderr and "Traceback" not in result.stderr
