"""push.subscribe and push.unsubscribe: what a browser's subscription looks like."""

from __future__ import annotations

import base64
import os
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protocol import ErrorCode, parse_command
from protocol.commands import PushSubscribe, PushUnsubscribe, Rejected
from protocol.push import AUTH_PATTERN, MAX_ENDPOINT, P256DH_PATTERN


def b64url(data: bytes, *, padded: bool = False) -> str:
    text = base64.urlsafe_b64encode(data).decode()
    return text if padded else text.rstrip("=")


def browser_key() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


@pytest.mark.parametrize("padded", [False, True])
def test_the_patterns_take_every_real_key_padded_or_not(padded: bool) -> None:
    for _ in range(200):
        assert re.fullmatch(P256DH_PATTERN, b64url(browser_key(), padded=padded))
        assert re.fullmatch(AUTH_PATTERN, b64url(os.urandom(16), padded=padded))


@pytest.mark.parametrize(
    "value",
    [
        b64url(browser_key()[:64]),  # a byte short
        b64url(browser_key() + b"\0"),  # a byte long
        b64url(b"\x02" + browser_key()[1:33]),  # compressed
        b64url(b"\x05" + browser_key()[1:]),  # not an uncompressed point's prefix
        base64.b64encode(b"\x04" + b"\xfb" * 64).decode().rstrip("="),  # standard base64
    ],
)
def test_the_p256dh_pattern_refuses_what_is_no_uncompressed_p256_key(value: str) -> None:
    assert re.fullmatch(P256DH_PATTERN, value) is None


def test_the_auth_pattern_refuses_other_lengths() -> None:
    for size in (8, 15, 17, 32):
        assert re.fullmatch(AUTH_PATTERN, b64url(os.urandom(size))) is None


P256DH = b64url(browser_key())
AUTH = b64url(os.urandom(16))
ENDPOINT = "https://push.example.net/send/abc123"


def subscribe(**subscription: object) -> PushSubscribe | Rejected:
    command = parse_command({"id": 1, "op": "push.subscribe", "subscription": subscription})
    assert isinstance(command, PushSubscribe | Rejected)
    return command


def test_a_browser_subscription_parses_and_extra_fields_are_ignored() -> None:
    command = subscribe(
        endpoint=ENDPOINT, expirationTime=None, keys={"p256dh": P256DH, "auth": AUTH}
    )
    assert command == PushSubscribe(1, ENDPOINT, P256DH, AUTH)
    assert parse_command({"id": 2, "op": "push.unsubscribe", "endpoint": ENDPOINT}) == (
        PushUnsubscribe(2, ENDPOINT)
    )


@pytest.mark.parametrize(
    ("subscription", "words"),
    [
        ({"endpoint": ENDPOINT}, "'subscription' must be {endpoint, keys"),
        ({"endpoint": ENDPOINT, "keys": {"p256dh": P256DH}}, "'auth' must be"),
        ({"endpoint": ENDPOINT, "keys": {"p256dh": "x", "auth": AUTH}}, "'p256dh' must be"),
        (
            {"endpoint": "wss://push.example/x", "keys": {"p256dh": P256DH, "auth": AUTH}},
            "'endpoint' must be an http(s) URL",
        ),
        (
            {"endpoint": "https://" + "a" * MAX_ENDPOINT, "keys": {"p256dh": P256DH, "auth": AUTH}},
            "'endpoint' must be",
        ),
        (
            {"endpoint": "https://push.example/a b", "keys": {"p256dh": P256DH, "auth": AUTH}},
            "'endpoint' must be",
        ),
    ],
)
def test_what_is_no_subscription_is_a_bad_request(
    subscription: dict[str, object], words: str
) -> None:
    command = subscribe(**subscription)
    assert isinstance(command, Rejected) and command.code is ErrorCode.BAD_REQUEST
    assert words in command.message and command.message.startswith("push.subscribe: ")


def test_a_subscription_that_is_not_an_object_is_a_bad_request() -> None:
    for value in ("https://push.example/x", None, ["x"]):
        command = parse_command({"id": 1, "op": "push.subscribe", "subscription": value})
        assert isinstance(command, Rejected) and command.code is ErrorCode.BAD_REQUEST
