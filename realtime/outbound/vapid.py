"""VAPID keys (RFC 8292): the P-256 key pair a server signs its Web Push requests with.

The private key lives in a PEM file (``webpush.vapid_private_key_file``), made by
``python -m realtime vapid --out FILE``. Browsers subscribe with the public key in
the uncompressed-point, base64url form (``applicationServerKey``).
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02, VapidException

# RFC 8292 section 2: exp at most 24 hours ahead; 12 leaves room for clock skew.
TOKEN_LIFETIME = 12 * 3600


class VapidKeyError(ValueError):
    """The key file is missing or is not a P-256 private key; the message says which."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_key_text(key: ec.EllipticCurvePublicKey) -> str:
    raw = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url(raw)


@dataclass(frozen=True, slots=True)
class VapidKey:
    signer: Any  # py_vapid.Vapid02: untyped
    public_key: str
    """base64url of the uncompressed point: what pages pass as applicationServerKey."""

    def headers(self, endpoint: str, subject: str) -> dict[str, str]:
        """The ``Authorization: vapid t=<JWT>,k=<key>`` header for a push to ``endpoint``."""
        parts = urlsplit(endpoint)
        claims = {
            "aud": f"{parts.scheme}://{parts.netloc}",
            "sub": subject,
            "exp": int(time.time()) + TOKEN_LIFETIME,
        }
        signed: dict[str, str] = self.signer.sign(claims)
        return signed


def load_vapid_key(path: str) -> VapidKey:
    """Read the PEM file. Reads a file: call it at start-up or off the loop."""
    try:
        pem = Path(path).read_bytes()
    except OSError as error:
        raise VapidKeyError(f"webpush.vapid_private_key_file {path}: {error.strerror}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as error:
        raise VapidKeyError(
            f"webpush.vapid_private_key_file {path} is not an unencrypted PEM private key: {error}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise VapidKeyError(f"webpush.vapid_private_key_file {path} is not a P-256 (EC) key")
    return VapidKey(Vapid02(key), public_key_text(key.public_key()))


def check_subject(key: VapidKey, subject: str) -> None:
    """Sign once, so that a subject py_vapid refuses stops start-up, not every push."""
    try:
        key.headers("https://push.example", subject)
    except VapidException as error:
        raise VapidKeyError(f"webpush.vapid_subject {subject!r}: {error}") from None


def generate_key_file(path: Path, *, force: bool = False) -> str:
    """Write a new private key (PEM, mode 0600); return its public key text."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    descriptor = os.open(path, flags, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    return public_key_text(key.public_key())
