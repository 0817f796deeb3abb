"""Authentication over real sockets (PROTOCOL.md section 3, and sections 2 and 4 where
they meet it): every way a token can be bad, header and ``connect`` auth, the
connect-first rule, the auth timeout, ``refresh``, expiry (4010), too many connections
(4029), RS256 with a PEM key, ES256 with a JWKS, iss/aud, and subprotocols.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import jwt
import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.client import Client, CommandFailed, close_all
from tests.e2e.helpers_auth import (
    DROP,
    TOKEN_EXPIRED,
    TOO_MANY_CONNECTIONS,
    UNAUTHORIZED,
    b64url,
    claims,
    closed,
    craft,
    decode_frame,
    ec_key,
    encode,
    expect_close,
    hs,
    jwk,
    public_pem,
    raw_open,
    raw_reply,
    rsa_key,
    running,
    server_process,
    still_open,
    write,
)
from tests.server import SECRET, ServerProcess, unique

# The "tuned" server: short auth timeout and leeway, two connections per user.
AUTH_TIMEOUT = 1.0
LEEWAY = 1.0
MAX_CONNECTIONS = 2
OTHER_SECRET = "another-secret-" + "y" * 20
LAST_NUMERIC_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z


@cache
def stray_rsa() -> rsa.RSAPrivateKey:
    """An RSA key no server knows."""
    return rsa_key()


@cache
def stray_ec() -> ec.EllipticCurvePrivateKey:
    return ec_key()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def later(seconds: int) -> int:
    return int(time.time()) + seconds


# Tokens that must never authenticate a connection on a default (HS256) server -----------


def _tampered(user: str) -> str:
    header, _, signature = hs(claims(user)).split(".")
    return ".".join([header, b64url(json.dumps(claims("admin")).encode()), signature])


def _unsigned(user: str) -> str:
    header, payload, _ = hs(claims(user)).split(".")
    return f"{header}.{payload}."


BAD_TOKENS: dict[str, Callable[[str], str]] = {
    # time
    "expired": lambda u: hs(claims(u, exp=later(-60))),
    "expired-long-ago": lambda u: hs(claims(u, iat=1, exp=2)),
    "nbf-in-the-future": lambda u: hs(claims(u, nbf=later(120))),
    "exp-not-a-number": lambda u: hs(claims(u, exp="tomorrow")),
    # claims PyJWT reads with int(): numbers as strings, booleans, beyond any encoding
    "exp-a-numeric-string": lambda u: hs(claims(u, exp=str(later(3600)))),
    "exp-2-to-the-64": lambda u: hs(claims(u, exp=2**64)),
    "exp-2-to-the-70": lambda u: hs(claims(u, exp=2**70)),
    "exp-after-the-year-9999": lambda u: hs(claims(u, exp=LAST_NUMERIC_DATE + 1)),
    "exp-a-huge-float": lambda u: hs(claims(u, exp=1e300)),
    "exp-a-list": lambda u: hs(claims(u, exp=[later(3600)])),
    "iat-a-numeric-string": lambda u: hs(claims(u, iat=str(later(-10)))),
    "iat-true": lambda u: hs(claims(u, iat=True)),
    "nbf-a-numeric-string": lambda u: hs(claims(u, nbf=str(later(-10)))),
    "nbf-negative": lambda u: hs(claims(u, nbf=-1)),
    # signature
    "wrong-secret": lambda u: hs(claims(u), secret=OTHER_SECRET),
    "tampered-payload": _tampered,
    "signature-stripped": _unsigned,
    "signature-truncated": lambda u: hs(claims(u))[:-6],
    # algorithm
    "alg-none": lambda u: craft({"alg": "none", "typ": "JWT"}, claims(u)),
    "alg-None": lambda u: craft({"alg": "None", "typ": "JWT"}, claims(u)),
    "alg-NONE-with-signature": lambda u: craft(
        {"alg": "NONE"}, claims(u), hmac_key=SECRET.encode(), hmac_alg="HS256"
    ),
    "alg-missing": lambda u: craft(
        {"typ": "JWT"}, claims(u), hmac_key=SECRET.encode(), hmac_alg="HS256"
    ),
    "alg-hs256-lowercase": lambda u: craft(
        {"alg": "hs256"}, claims(u), hmac_key=SECRET.encode(), hmac_alg="HS256"
    ),
    "alg-HS384-not-configured": lambda u: hs(claims(u), algorithm="HS384"),
    "alg-HS512-not-configured": lambda u: hs(claims(u), algorithm="HS512"),
    "alg-RS256-not-configured": lambda u: jwt.encode(claims(u), stray_rsa(), algorithm="RS256"),
    "alg-ES256-not-configured": lambda u: jwt.encode(claims(u), stray_ec(), algorithm="ES256"),
    # required claims
    "missing-sub": lambda u: hs(claims(DROP)),
    "missing-exp": lambda u: hs(claims(u, exp=DROP)),
    # sub must be a user id string
    "sub-integer": lambda u: hs(claims(12345)),
    "sub-null": lambda u: hs(claims(None)),
    "sub-list": lambda u: hs(claims([u])),
    "sub-object": lambda u: hs(claims({"id": u})),
    "sub-empty": lambda u: hs(claims("")),
    "sub-with-space": lambda u: hs(claims(u + " x")),
    "sub-with-slash": lambda u: hs(claims(u + "/x")),
    "sub-non-ascii": lambda u: hs(claims(u + "ü")),
    "sub-too-long": lambda u: hs(claims("x" * 129)),
    # a room token is for join, not for connecting
    "room-token": lambda u: hs(claims(u, room="swap:1")),
    # not a JWT at all
    "garbage": lambda u: "garbage",
    "three-segments-of-junk": lambda u: "a.b.c",
    "empty-segments": lambda u: "..",
    "header-only": lambda u: b64url(b'{"alg":"HS256"}'),
    "header-not-json": lambda u: b64url(b"not json") + "." + hs(claims(u)).split(".", 1)[1],
    "header-an-array": lambda u: b64url(b'["HS256"]') + "." + hs(claims(u)).split(".", 1)[1],
    "bearer-prefix-inside": lambda u: "Bearer " + hs(claims(u)),
    "emoji": lambda u: "\U0001f642",
}


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_good_tokens_connect(server: ServerProcess, encoding: str) -> None:
    """Controls for the refusals below: the same hand-made tokens, valid, are accepted."""
    user = unique("u")
    accepted = [
        server.token(user),
        hs(claims(user)),
        hs(claims(user, nbf=later(-60))),
        hs(claims(user, exp=later(-2))),  # expired, but within the leeway (5 s by default)
        hs(claims(user, exp=float(later(60)) + 0.5)),  # NumericDate may be fractional
        hs(claims(user, exp=LAST_NUMERIC_DATE)),
    ]
    for token in accepted:
        client = await Client.connected(server.ws_url, token, encoding=encoding)
        assert client.session["user"] == user
        await still_open(client)
        await client.close()
    odd = "A-z_0.9:" + "x" * 120  # every character a user id may have, 128 of them
    client = await Client.connected(server.ws_url, hs(claims(odd)), encoding=encoding)
    assert client.session["user"] == odd
    await client.close()


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_connect_with_a_bad_token_is_unauthorized_and_closes_4001(
    server: ServerProcess, case: str
) -> None:
    client = await Client.open(server.ws_url)
    reply = await client.request("connect", token=BAD_TOKENS[case](unique("u")))
    assert "ok" not in reply, f"{case} token was accepted: {reply}"
    assert reply["error"]["code"] == "unauthorized", reply
    assert reply["error"]["message"]
    assert await expect_close(client, UNAUTHORIZED)


async def test_connect_with_a_bad_token_over_msgpack(server: ServerProcess) -> None:
    client = await Client.open(server.ws_url, encoding="msgpack")
    reply = await client.request("connect", token=BAD_TOKENS["alg-none"](unique("u")))
    assert reply["error"]["code"] == "unauthorized", reply
    await expect_close(client, UNAUTHORIZED)


async def test_connect_without_a_token_is_unauthorized(server: ServerProcess) -> None:
    client = await Client.open(server.ws_url)
    reply = await client.request("connect")
    assert reply["error"]["code"] == "unauthorized", reply
    await expect_close(client, UNAUTHORIZED)


async def test_aud_is_ignored_when_no_audience_is_configured(server: ServerProcess) -> None:
    user = unique("u")
    client = await Client.open(server.ws_url)
    try:
        reply = await client.request("connect", token=hs(claims(user, aud="some-other-service")))
        assert reply.get("ok", {}).get("user") == user, reply
    finally:
        await client.close()


async def test_iss_is_ignored_when_no_issuer_is_configured(server: ServerProcess) -> None:
    user = unique("u")
    client = await Client.connected(server.ws_url, hs(claims(user, iss="https://idp.example")))
    assert client.session["user"] == user
    await client.close()


# Header auth -------------------------------------------------------------------------------


async def test_header_auth_needs_no_connect(server: ServerProcess) -> None:
    user = unique("u")
    client = await Client.open(server.ws_url, headers=bearer(server.token(user)))
    await still_open(client)
    # the connection is in its user room from the start: a notification reaches it
    status, body = await server.rest(
        "POST", "/api/v1/notifications", {"to": [user], "type": "like", "data": {"n": 1}}
    )
    assert (status, body) == (202, {"recipients": 1})
    push = await client.push("notification")
    assert push["type"] == "like" and push["data"] == {"n": 1} and push["read"] is False
    await client.close()


@pytest.mark.parametrize(
    "case",
    [
        "garbage",
        "expired",
        "alg-none",
        "wrong-secret",
        "room-token",
        "missing-sub",
        "exp-2-to-the-64",
        "exp-a-numeric-string",
    ],
)
async def test_header_auth_with_a_bad_token_upgrades_then_closes_4001(
    server: ServerProcess, case: str
) -> None:
    client = await Client.open(server.ws_url, headers=bearer(BAD_TOKENS[case](unique("u"))))
    assert client.ws.subprotocol == "rt1.json"  # the upgrade itself succeeded
    reason = await expect_close(client, UNAUTHORIZED)
    assert reason
    assert client.pushes.empty()


@pytest.mark.parametrize("how", ["header", "connect"])
async def test_a_second_connect_cannot_switch_to_another_user(
    server: ServerProcess, how: str
) -> None:
    alice, mallory = unique("alice"), unique("mallory")
    if how == "header":
        client = await Client.open(server.ws_url, headers=bearer(server.token(alice)))
    else:
        client = await Client.connected(server.ws_url, server.token(alice))
    reply = await client.request("connect", token=server.token(mallory))
    assert "ok" not in reply, reply
    assert reply["error"]["code"] in ("forbidden", "unauthorized"), reply
    again = await client.call("connect")  # still alice
    assert again["user"] == alice
    assert [r["room"] for r in again["rooms"]] == [f"user:{alice}"]
    await client.close()


# Connect first ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("ping", {}),
        ("join", {"room": "swap:1"}),
        ("send", {"room": "swap:1", "body": "hi"}),
        ("history", {"room": "swap:1"}),
        ("presence", {"room": "swap:1"}),
        ("notifications", {}),
        ("refresh", {"token": None}),  # a valid token, made in the test
    ],
)
@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_first_message_other_than_connect_is_unauthorized_and_closes_4001(
    server: ServerProcess, op: str, args: dict[str, Any], encoding: str
) -> None:
    client = await Client.open(server.ws_url, encoding=encoding)
    if op == "refresh":
        args = {"token": server.token(unique("u"))}
    reply = await client.request(op, **args)
    assert reply["error"]["code"] == "unauthorized", reply
    await expect_close(client, UNAUTHORIZED)


async def test_first_message_without_id_closes_4001_without_reply(server: ServerProcess) -> None:
    client = await Client.open(server.ws_url)
    await client.fire("ping")
    await expect_close(client, UNAUTHORIZED)
    assert client.pushes.empty()


@pytest.mark.parametrize(
    "message",
    [
        {"op": "frobnicate"},
        {"op": "join"},
        {"op": "send", "room": "swap:1"},
        {"op": "connect", "token": ""},
        {"op": "connect", "token": 12345},
    ],
    ids=["unknown-op", "join-without-room", "send-without-body", "empty-token", "int-token"],
)
async def test_first_message_that_cannot_authenticate_closes_4001(
    server: ServerProcess, message: dict[str, Any]
) -> None:
    client = await Client.open(server.ws_url)
    try:
        args = {k: v for k, v in message.items() if k != "op"}
        reply = await client.request(str(message["op"]), **args)
        assert "error" in reply, reply
        if message["op"] != "connect":
            assert reply["error"]["code"] == "unauthorized", reply
        # the default auth timeout is 10 s: a close within 5 s is the connect-first rule
        await expect_close(client, UNAUTHORIZED, timeout=5)
    finally:
        await client.close()


# Subprotocols ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "chosen", "text"),
    [
        (["rt1.json"], "rt1.json", True),
        (["rt1.msgpack"], "rt1.msgpack", False),
        (None, None, True),
    ],
    ids=["json", "msgpack", "none-offered"],
)
async def test_subprotocol_picks_the_encoding_and_is_echoed(
    server: ServerProcess, offered: list[str] | None, chosen: str | None, text: bool
) -> None:
    user = unique("u")
    ws = await raw_open(server.ws_url, offered)
    try:
        assert ws.subprotocol == chosen
        encoding = "msgpack" if chosen == "rt1.msgpack" else "json"
        await ws.send(encode(encoding, {"id": 1, "op": "connect", "token": server.token(user)}))
        frame, reply = await raw_reply(ws, 1)
        assert isinstance(frame, str) is text
        assert reply["ok"]["user"] == user
        # pushes too: a notification over REST
        status, _ = await server.rest(
            "POST", "/api/v1/notifications", {"to": [user], "type": "t", "data": [1, "x"]}
        )
        assert status == 202
        async with asyncio.timeout(10):
            frame = await ws.recv()
        assert isinstance(frame, str) is text
        (push,) = decode_frame(frame)
        assert push["push"] == "notification" and push["data"] == [1, "x"]
        if not text:
            assert isinstance(frame, bytes)
            assert msgpack.unpackb(frame, raw=False) == push
    finally:
        await ws.close()


async def test_subprotocol_both_offered_one_is_chosen_and_used(server: ServerProcess) -> None:
    ws = await raw_open(server.ws_url, ["rt1.msgpack", "rt1.json"])
    try:
        assert ws.subprotocol in ("rt1.msgpack", "rt1.json")
        encoding = "msgpack" if ws.subprotocol == "rt1.msgpack" else "json"
        await ws.send(encode(encoding, {"id": 9, "op": "connect", "token": server.token("x")}))
        frame, reply = await raw_reply(ws, 9)
        assert isinstance(frame, bytes) is (encoding == "msgpack")
        assert reply["ok"]["user"] == "x"
    finally:
        await ws.close()


# Refresh (fast cases, default server) ---------------------------------------------------------


async def test_refresh_returns_the_new_expiry(server: ServerProcess) -> None:
    user = unique("u")
    client = await Client.connected(server.ws_url, hs(claims(user, exp=later(300))))
    new_exp = later(7200)
    assert await client.call("refresh", token=hs(claims(user, exp=new_exp))) == {
        "expires_at": new_exp
    }
    await client.close()


async def test_refresh_with_another_users_token_is_forbidden(server: ServerProcess) -> None:
    user = unique("u")
    client = await Client.connected(server.ws_url, server.token(user))
    with pytest.raises(CommandFailed) as refused:
        await client.call("refresh", token=server.token(unique("mallory")))
    assert refused.value.code == "forbidden"
    await still_open(client)
    await client.close()


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "wrong-secret",
        "alg-none",
        "room-token",
        "garbage",
        "missing-exp",
        "exp-2-to-the-64",
        "exp-a-numeric-string",
    ],
)
async def test_refresh_with_a_bad_token_is_unauthorized_and_keeps_the_connection(
    server: ServerProcess, case: str
) -> None:
    user = unique("u")
    client = await Client.connected(server.ws_url, server.token(user))
    with pytest.raises(CommandFailed) as refused:
        await client.call("refresh", token=BAD_TOKENS[case](user))
    assert refused.value.code == "unauthorized"
    await still_open(client)
    await client.close()


# Timing, expiry and connection limits: a server with short settings ---------------------------


@dataclass
class KeyedServer:
    server: ServerProcess
    key: Any
    pem: bytes


@dataclass
class JwksServer:
    server: ServerProcess
    keys: dict[str, Any]


ISSUER = "https://auth.example.test"
AUDIENCE = "realtime-ws"


@dataclass
class Fleet:
    """The servers with their own auth settings, started side by side."""

    tuned: ServerProcess
    rs256: KeyedServer
    mixed: KeyedServer
    es256: JwksServer
    issued: ServerProcess


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    keys = tmp_path_factory.mktemp("keys")
    # RS256 only, with a PEM public key
    rs_key = rsa_key()
    rs_pem = public_pem(rs_key)
    rs_path = write(keys / "rs256.pem", rs_pem)
    # RS256 and HS256 together
    mixed_key = rsa_key()
    mixed_pem = public_pem(mixed_key)
    mixed_path = write(keys / "mixed.pem", mixed_pem)
    # ES256 with a JWKS holding two EC keys and an RSA key
    jwks_keys: dict[str, Any] = {"ec-1": ec_key(), "ec-2": ec_key(), "rsa-1": rsa_key()}
    jwks = {
        "keys": [
            jwk(jwks_keys["ec-1"], kid="ec-1", alg="ES256"),
            jwk(jwks_keys["ec-2"], kid="ec-2", alg="ES256"),
            jwk(jwks_keys["rsa-1"], kid="rsa-1", alg="RS256"),
        ]
    }
    jwks_path = write(keys / "jwks.json", json.dumps(jwks))

    def process(name: str, env: dict[str, str]) -> ServerProcess:
        return server_process(tmp_path_factory, name, env=env)

    fleet = Fleet(
        tuned=process(
            "tuned",
            {
                "REALTIME_AUTH_AUTH_TIMEOUT": str(AUTH_TIMEOUT),
                "REALTIME_AUTH_LEEWAY": str(LEEWAY),
                "REALTIME_SERVER_MAX_CONNECTIONS_PER_USER": str(MAX_CONNECTIONS),
            },
        ),
        rs256=KeyedServer(
            process(
                "rs256",
                {"REALTIME_AUTH_ALGORITHMS": "RS256", "REALTIME_AUTH_PUBLIC_KEY_FILE": rs_path},
            ),
            rs_key,
            rs_pem,
        ),
        mixed=KeyedServer(
            process(
                "mixed",
                {
                    "REALTIME_AUTH_ALGORITHMS": "RS256,HS256",
                    "REALTIME_AUTH_PUBLIC_KEY_FILE": mixed_path,
                },
            ),
            mixed_key,
            mixed_pem,
        ),
        es256=JwksServer(
            process(
                "es256",
                {"REALTIME_AUTH_ALGORITHMS": "ES256", "REALTIME_AUTH_JWKS_FILE": jwks_path},
            ),
            jwks_keys,
        ),
        issued=process(
            "issued", {"REALTIME_AUTH_ISSUER": ISSUER, "REALTIME_AUTH_AUDIENCE": AUDIENCE}
        ),
    )
    with running(
        fleet.tuned, fleet.rs256.server, fleet.mixed.server, fleet.es256.server, fleet.issued
    ):
        yield fleet


@pytest.fixture
def tuned(fleet: Fleet) -> ServerProcess:
    """Short auth timeout and leeway, two connections per user."""
    return fleet.tuned


@pytest.fixture
def rs256(fleet: Fleet) -> KeyedServer:
    """RS256 only, with a PEM public key file (and an auth.secret it must not use)."""
    return fleet.rs256


@pytest.fixture
def mixed(fleet: Fleet) -> KeyedServer:
    """RS256 and HS256 both allowed: the PEM must still not work as an HMAC secret."""
    return fleet.mixed


@pytest.fixture
def es256(fleet: Fleet) -> JwksServer:
    """ES256 only, with a JWKS file."""
    return fleet.es256


@pytest.fixture
def issued(fleet: Fleet) -> ServerProcess:
    """auth.issuer and auth.audience configured."""
    return fleet.issued


async def test_auth_timeout_closes_4001_only_sockets_that_did_not_authenticate(
    tuned: ServerProcess,
) -> None:
    started = time.monotonic()
    silent = await Client.open(tuned.ws_url)
    by_connect = await Client.connected(tuned.ws_url, tuned.token(unique("u")))
    by_header = await Client.open(tuned.ws_url, headers=bearer(tuned.token(unique("u"))))
    await expect_close(silent, UNAUTHORIZED, timeout=10 * AUTH_TIMEOUT)
    elapsed = time.monotonic() - started
    assert elapsed >= AUTH_TIMEOUT - 0.2, elapsed  # (expect_close bounds it from above)
    await asyncio.sleep(max(0.0, AUTH_TIMEOUT + 0.3 - (time.monotonic() - started)))
    await still_open(by_connect)
    await still_open(by_header)
    await close_all(by_connect, by_header)


async def test_expiry_closes_4010_at_exp_plus_leeway_unless_refreshed(
    tuned: ServerProcess,
) -> None:
    url = tuned.ws_url
    exp = later(2)
    users = {name: unique(name) for name in ("connect", "header", "refreshed", "refused")}
    by_connect = await Client.connected(url, hs(claims(users["connect"], exp=exp)))
    by_header = await Client.open(url, headers=bearer(hs(claims(users["header"], exp=exp))))
    refreshed = await Client.connected(url, hs(claims(users["refreshed"], exp=exp)))
    refused = await Client.connected(url, hs(claims(users["refused"], exp=exp)))

    new_exp = later(600)
    reply = await refreshed.call("refresh", token=hs(claims(users["refreshed"], exp=new_exp)))
    assert reply == {"expires_at": new_exp}
    # refused refreshes leave the deadline where it was
    with pytest.raises(CommandFailed) as forbidden:
        await refused.call("refresh", token=hs(claims(users["connect"], exp=new_exp)))
    assert forbidden.value.code == "forbidden"
    with pytest.raises(CommandFailed) as unauthorized:
        bad = hs(claims(users["refused"], exp=new_exp), secret=OTHER_SECRET)
        await refused.call("refresh", token=bad)
    assert unauthorized.value.code == "unauthorized"

    async def closed_at(client: Client) -> float:
        await expect_close(client, TOKEN_EXPIRED, timeout=30)
        return time.time()

    expiring = {"connect": by_connect, "header": by_header, "refused": refused}
    waits = {name: asyncio.create_task(closed_at(c)) for name, c in expiring.items()}
    # past exp but within the leeway: everyone is still there
    await asyncio.sleep(max(0.0, exp + 0.3 - time.time()))
    for client in (*expiring.values(), refreshed):
        await still_open(client)
    for name, wait in waits.items():
        moment = await wait
        # never early; late only by what a busy machine may add
        assert exp + LEEWAY - 0.2 <= moment <= exp + LEEWAY + 15, (name, moment - exp)
    await still_open(refreshed)
    await refreshed.close()


async def test_one_connection_too_many_closes_4029(tuned: ServerProcess) -> None:
    user = unique("u")
    first = await Client.connected(tuned.ws_url, tuned.token(user))
    second = await Client.open(tuned.ws_url, headers=bearer(tuned.token(user)))
    await still_open(second)

    extra = await Client.open(tuned.ws_url)
    try:
        reply = await extra.request("connect", token=tuned.token(user))
    except ConnectionError:
        reply = {}
    assert "ok" not in reply, reply
    await expect_close(extra, TOO_MANY_CONNECTIONS)

    extra_by_header = await Client.open(tuned.ws_url, headers=bearer(tuned.token(user)))
    await expect_close(extra_by_header, TOO_MANY_CONNECTIONS)

    # the first two are untouched, and other users are not limited by this one
    await still_open(first)
    await still_open(second)
    stranger = await Client.connected(tuned.ws_url, tuned.token(unique("v")))

    # a closed connection frees its place, and the limit still holds afterwards
    await first.close()
    replacement = await _connect_soon(tuned, user)
    await still_open(replacement)
    one_more = await Client.open(tuned.ws_url, headers=bearer(tuned.token(user)))
    await expect_close(one_more, TOO_MANY_CONNECTIONS)
    await close_all(second, stranger, replacement)


async def _connect_soon(server: ServerProcess, user: str, within: float = 15.0) -> Client:
    """Connect as ``user``, retrying while the server has not yet noticed a close."""
    deadline = time.monotonic() + within
    while True:
        client = await Client.open(server.ws_url)
        try:
            client.session = await client.call("connect", token=server.token(user))
            return client
        except ConnectionError:
            code, _ = await closed(client)
            assert code == TOO_MANY_CONNECTIONS
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# RS256 with a PEM public key ------------------------------------------------------------------


async def test_rs256_token_with_the_configured_public_key_works(rs256: KeyedServer) -> None:
    user = unique("u")
    token = jwt.encode(claims(user), rs256.key, algorithm="RS256")
    client = await Client.connected(rs256.server.ws_url, token)
    assert client.session["user"] == user
    by_header = await Client.open(rs256.server.ws_url, headers=bearer(token))
    await still_open(by_header)
    # room tokens are signed like user tokens
    room = unique("swap:")
    room_token = jwt.encode(claims(user, room=room), rs256.key, algorithm="RS256")
    joined = await client.call("join", room=room, token=room_token)
    assert joined["room"] == room and joined["presence"] == [user]
    await close_all(client, by_header)


RS256_REFUSED: dict[str, Callable[[KeyedServer, str], str]] = {
    # HS/RS confusion: the public key PEM used as an HMAC secret
    "hs256-signed-with-the-public-pem": lambda s, u: craft(
        {"alg": "HS256", "typ": "JWT"}, claims(u), hmac_key=s.pem
    ),
    "hs256-signed-with-the-pem-stripped": lambda s, u: craft(
        {"alg": "HS256", "typ": "JWT"}, claims(u), hmac_key=s.pem.strip()
    ),
    # the server still has an auth.secret, but HS256 is not among its algorithms
    "hs256-signed-with-the-secret": lambda s, u: hs(claims(u)),
    "rs256-from-another-key": lambda s, u: jwt.encode(claims(u), stray_rsa(), algorithm="RS256"),
    "rs512-not-configured": lambda s, u: jwt.encode(claims(u), s.key, algorithm="RS512"),
    "ps256-not-configured": lambda s, u: jwt.encode(claims(u), s.key, algorithm="PS256"),
    "es256-not-configured": lambda s, u: jwt.encode(claims(u), stray_ec(), algorithm="ES256"),
    "alg-none": lambda s, u: craft({"alg": "none"}, claims(u)),
    "rs256-expired": lambda s, u: jwt.encode(claims(u, exp=later(-60)), s.key, algorithm="RS256"),
}


@pytest.mark.parametrize("case", sorted(RS256_REFUSED))
async def test_rs256_server_refuses(rs256: KeyedServer, case: str) -> None:
    client = await Client.open(rs256.server.ws_url)
    reply = await client.request("connect", token=RS256_REFUSED[case](rs256, unique("u")))
    assert reply.get("error", {}).get("code") == "unauthorized", reply
    await expect_close(client, UNAUTHORIZED)


async def test_rs256_and_hs256_together_resist_key_confusion(mixed: KeyedServer) -> None:
    url = mixed.server.ws_url
    user = unique("u")
    for token in (jwt.encode(claims(user), mixed.key, algorithm="RS256"), hs(claims(user))):
        client = await Client.connected(url, token)
        assert client.session["user"] == user
        await client.close()
    for pem in (mixed.pem, mixed.pem.strip()):
        forged = craft({"alg": "HS256", "typ": "JWT"}, claims(user), hmac_key=pem)
        client = await Client.open(url)
        reply = await client.request("connect", token=forged)
        assert reply.get("error", {}).get("code") == "unauthorized", reply
        await expect_close(client, UNAUTHORIZED)


# ES256 with a JWKS file -------------------------------------------------------------------------


def _es(s: JwksServer, user: str, kid: str | None, signer: str, **extra: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(user, **extra), s.keys[signer], algorithm="ES256", headers=headers)


@pytest.mark.parametrize("kid", ["ec-1", "ec-2"])
async def test_es256_token_checked_against_the_jwks_works(es256: JwksServer, kid: str) -> None:
    user = unique("u")
    token = _es(es256, user, kid, kid)
    client = await Client.connected(es256.server.ws_url, token)
    assert client.session["user"] == user
    new_exp = later(900)
    refreshed = await client.call("refresh", token=_es(es256, user, kid, kid, exp=new_exp))
    assert refreshed == {"expires_at": new_exp}
    by_header = await Client.open(es256.server.ws_url, headers=bearer(token))
    await still_open(by_header)
    await close_all(client, by_header)


ES256_REFUSED: dict[str, Callable[[JwksServer, str], str]] = {
    "kid-of-another-key": lambda s, u: _es(s, u, "ec-1", "ec-2"),
    "unknown-kid": lambda s, u: _es(s, u, "ec-9", "ec-1"),
    "key-not-in-the-jwks": lambda s, u: jwt.encode(
        claims(u), stray_ec(), algorithm="ES256", headers={"kid": "ec-1"}
    ),
    "rs256-key-in-jwks-but-alg-not-configured": lambda s, u: jwt.encode(
        claims(u), s.keys["rsa-1"], algorithm="RS256", headers={"kid": "rsa-1"}
    ),
    "hs256-with-the-secret": lambda s, u: hs(claims(u)),
    "es384-not-configured": lambda s, u: jwt.encode(
        claims(u),
        ec.generate_private_key(ec.SECP384R1()),
        algorithm="ES384",
        headers={"kid": "ec-1"},
    ),
    "alg-none-with-kid": lambda s, u: craft({"alg": "none", "kid": "ec-1"}, claims(u)),
    "expired": lambda s, u: _es(s, u, "ec-1", "ec-1", exp=later(-60)),
}


@pytest.mark.parametrize("case", sorted(ES256_REFUSED))
async def test_es256_jwks_server_refuses(es256: JwksServer, case: str) -> None:
    client = await Client.open(es256.server.ws_url)
    reply = await client.request("connect", token=ES256_REFUSED[case](es256, unique("u")))
    assert reply.get("error", {}).get("code") == "unauthorized", reply
    await expect_close(client, UNAUTHORIZED)


# iss and aud, when configured -----------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [{"iss": ISSUER, "aud": AUDIENCE}, {"iss": ISSUER, "aud": ["other", AUDIENCE]}],
    ids=["aud-string", "aud-list"],
)
async def test_right_iss_and_aud_connect(issued: ServerProcess, extra: dict[str, Any]) -> None:
    user = unique("u")
    client = await Client.connected(issued.ws_url, hs(claims(user, **extra)))
    assert client.session["user"] == user
    await client.close()


@pytest.mark.parametrize(
    "extra",
    [
        {"iss": "https://evil.example", "aud": AUDIENCE},
        {"aud": AUDIENCE},
        {"iss": ISSUER, "aud": "another-service"},
        {"iss": ISSUER, "aud": ["a", "b"]},
        {"iss": ISSUER},
        {"iss": ISSUER.upper(), "aud": AUDIENCE},
    ],
    ids=["wrong-iss", "missing-iss", "wrong-aud", "aud-list-without", "missing-aud", "iss-case"],
)
async def test_wrong_or_missing_iss_or_aud_is_refused(
    issued: ServerProcess, extra: dict[str, Any]
) -> None:
    client = await Client.open(issued.ws_url)
    reply = await client.request("connect", token=hs(claims(unique("u"), **extra)))
    assert reply.get("error", {}).get("code") == "unauthorized", reply
    await expect_close(client, UNAUTHORIZED)
