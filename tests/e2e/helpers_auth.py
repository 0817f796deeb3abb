"""Helpers for the auth and limits end-to-end tests: tokens crafted by hand, keys,
raw WebSocket peers, close codes, and module-scoped servers with their own settings.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import msgpack
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import ClientConnection, connect

from tests.client import TIMEOUT, Client
from tests.server import SECRET, ServerProcess

# Close codes of the contract (section 4).
BAD_FRAME = 4000
UNAUTHORIZED = 4001
LIMIT = 4008
TOO_SLOW = 4009
TOKEN_EXPIRED = 4010
TOO_MANY_CONNECTIONS = 4029


# Servers -------------------------------------------------------------------------------


def server_process(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    *,
    env: dict[str, str] | None = None,
    config_text: str = "",
) -> ServerProcess:
    """A SQLite server with its own settings (not started)."""
    return ServerProcess(tmp_path_factory.mktemp(name), env=env, config_text=config_text, name=name)


@contextmanager
def running(*processes: ServerProcess) -> Iterator[None]:
    """Start servers side by side (start-up is mostly waiting), kill them at the end."""
    try:
        with ThreadPoolExecutor(len(processes)) as pool:
            for started in [pool.submit(process.start) for process in processes]:
                started.result()
        yield
    finally:
        for process in processes:
            process.kill()


# Closing -------------------------------------------------------------------------------


async def closed(client: Client | ClientConnection, timeout: float = TIMEOUT) -> tuple[int, str]:
    """Wait until the server closes; (code, reason) of the server's close frame.

    Fails when the connection ended without a close frame from the server.
    """
    ws = client.ws if isinstance(client, Client) else client
    async with asyncio.timeout(timeout):
        await ws.wait_closed()
    received = ws.protocol.close_rcvd
    assert received is not None, "the connection ended without a close frame from the server"
    return received.code, received.reason


async def expect_close(
    client: Client | ClientConnection, code: int, timeout: float = TIMEOUT
) -> str:
    """Assert the server closes with ``code`` (and some reason); returns the reason."""
    got, reason = await closed(client, timeout)
    assert got == code, f"closed with {got} ({reason!r}), expected {code}"
    return reason


async def still_open(client: Client) -> None:
    """Assert the connection still answers commands."""
    assert await client.call("ping") == {}
    assert client.ws.protocol.close_rcvd is None


# Tokens --------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


DROP: Any = object()
"""Pass as a claim value to leave that claim out: ``claims("u", exp=DROP)``."""


def claims(user: Any, *, ttl: float = 3600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": user, "iat": now, "exp": now + ttl}
    payload.update(extra)
    return {k: v for k, v in payload.items() if v is not DROP}


def craft(
    header: dict[str, Any],
    payload: dict[str, Any],
    *,
    hmac_key: bytes | None = None,
    hmac_alg: str | None = None,
    signature: bytes = b"",
) -> str:
    """A JWS compact token built by hand. With ``hmac_key`` (any bytes, even a PEM) it is
    signed with HMAC by ``hmac_alg`` (default: the header's ``alg``), else it carries
    ``signature`` as is."""
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(payload, separators=(",", ":")).encode())
    )
    if hmac_key is not None:
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[
            hmac_alg or header["alg"]
        ]
        signature = hmac.new(hmac_key, signing_input.encode(), digest).digest()
    return signing_input + "." + b64url(signature)


def hs(payload: dict[str, Any], *, secret: str = SECRET, algorithm: str = "HS256") -> str:
    """An HMAC token signed by hand (so any payload goes, even what PyJWT would refuse)."""
    return craft({"alg": algorithm, "typ": "JWT"}, payload, hmac_key=secret.encode())


# Keys ----------------------------------------------------------------------------------


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwk(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, *, kid: str, alg: str
) -> dict[str, Any]:
    """The public half of ``key`` as a JWK with ``kid`` and ``alg``."""
    if isinstance(key, rsa.RSAPrivateKey):
        data = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        data = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**data, "kid": kid, "alg": alg, "use": "sig"}


def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


# Raw WebSocket peers -------------------------------------------------------------------


async def raw_open(
    url: str, subprotocols: list[str] | None = None, **options: Any
) -> ClientConnection:
    """A bare ``websockets`` connection (no reader task): frames exactly as sent."""
    return await connect(
        url,
        subprotocols=subprotocols,  # type: ignore[arg-type]
        open_timeout=TIMEOUT,
        close_timeout=2,
        ping_interval=None,
        compression=None,
        proxy=None,
        **options,
    )


def encode(encoding: str, message: dict[str, Any]) -> bytes | str:
    if encoding == "msgpack":
        data: bytes = msgpack.packb(message)
        return data
    return orjson.dumps(message).decode()


def decode_frame(frame: bytes | str) -> list[dict[str, Any]]:
    """The messages of one server frame: text is JSON lines, binary is msgpack."""
    if isinstance(frame, str):
        return [orjson.loads(line) for line in frame.split("\n") if line.strip()]
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(frame)
    return list(unpacker)


async def raw_reply(ws: ClientConnection, command_id: int) -> tuple[bytes | str, dict[str, Any]]:
    """Read frames until the reply to ``command_id``; returns (its frame, the reply)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            frame = await ws.recv()
            for message in decode_frame(frame):
                if message.get("id") == command_id:
                    return frame, message
