"""Web Push subscriptions over a real server: REST for any user, the socket for one's
own, and the VAPID public key pages subscribe with."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from realtime.outbound.vapid import b64url, generate_key_file
from tests.client import Client, CommandFailed, close_all
from tests.e2e.conftest import ServerFactory
from tests.e2e.support import assert_error
from tests.server import Http, ServerProcess, unique

API = "/api/v1"


def browser_subscription(endpoint: str | None = None) -> dict[str, Any]:
    """What a browser's PushSubscription.toJSON() gives: real P-256 keys."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    raw = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return {
        "endpoint": endpoint or f"https://push.example.net/send/{unique('e')}",
        "expirationTime": None,
        "keys": {"p256dh": b64url(raw), "auth": b64url(os.urandom(16))},
    }


async def registered(http: Http, user: str) -> list[dict[str, Any]]:
    status, body = await http.call("GET", f"{API}/users/{user}/push-subscriptions")
    assert status == 200, body
    subscriptions: list[dict[str, Any]] = body["subscriptions"]
    return subscriptions


async def test_rest_registers_lists_refreshes_and_removes(server: ServerProcess) -> None:
    alice = unique("alice")
    phone, laptop = browser_subscription(), browser_subscription()
    async with Http(server) as http:
        assert await registered(http, alice) == []
        for subscription in (phone, laptop):
            status, body = await http.call(
                "PUT", f"{API}/users/{alice}/push-subscriptions", subscription
            )
            assert (status, body) == (204, None)
            await asyncio.sleep(0.005)  # the next one a later millisecond: newest first
        listed = await registered(http, alice)
        assert [s["endpoint"] for s in listed] == [laptop["endpoint"], phone["endpoint"]]
        assert listed[1]["keys"] == phone["keys"] and isinstance(listed[1]["created_at"], int)
        # The same endpoint again, with new keys: replaced, and now the newest.
        renewed = browser_subscription(phone["endpoint"])
        await http.call("PUT", f"{API}/users/{alice}/push-subscriptions", renewed)
        listed = await registered(http, alice)
        assert [s["endpoint"] for s in listed] == [phone["endpoint"], laptop["endpoint"]]
        assert listed[0]["keys"] == renewed["keys"]
        path = f"{API}/users/{alice}/push-subscriptions"
        status, body = await http.call("DELETE", f"{path}?endpoint={_quoted(phone['endpoint'])}")
        assert (status, body) == (204, None)
        assert [s["endpoint"] for s in await registered(http, alice)] == [laptop["endpoint"]]
        status, _ = await http.call("DELETE", f"{path}?endpoint={_quoted(phone['endpoint'])}")
        assert status == 204


def _quoted(text: str) -> str:
    return quote(text, safe="")


async def test_rest_refuses_what_is_no_subscription(server: ServerProcess) -> None:
    alice = unique("alice")
    path = f"{API}/users/{alice}/push-subscriptions"
    good = browser_subscription()
    async with Http(server) as http:
        bad_key = {**good, "keys": {**good["keys"], "p256dh": "not-a-key"}}
        assert_error(await http.call("PUT", path, bad_key), 400, "bad_request")
        no_auth = {**good, "keys": {"p256dh": good["keys"]["p256dh"]}}
        assert_error(await http.call("PUT", path, no_auth), 400, "bad_request")
        assert_error(
            await http.call("PUT", path, {**good, "endpoint": "ftp://push.example/x"}),
            400,
            "bad_request",
        )
        # Well formed, refused by a rule: http:// is for local test services only.
        reply = await http.call("PUT", path, {**good, "endpoint": "http://push.example/x"})
        assert_error(reply, 403, "forbidden")
        assert_error(await http.call("DELETE", path), 400, "bad_request")  # no endpoint
        assert await registered(http, alice) == []


async def test_the_socket_registers_the_connections_own_user(server: ServerProcess) -> None:
    alice, bob = unique("alice"), unique("bob")
    a = await Client.connected(server.ws_url, server.token(alice))
    b = await Client.connected(server.ws_url, server.token(bob))
    try:
        shared = browser_subscription()
        assert await a.call("push.subscribe", subscription=shared) == {}
        async with Http(server) as http:
            assert [s["endpoint"] for s in await registered(http, alice)] == [shared["endpoint"]]
            # bob signs in on the same browser: the endpoint is his now.
            assert await b.call("push.subscribe", subscription=shared) == {}
            assert await registered(http, alice) == []
            assert [s["endpoint"] for s in await registered(http, bob)] == [shared["endpoint"]]
            # alice cannot remove bob's.
            assert await a.call("push.unsubscribe", endpoint=shared["endpoint"]) == {}
            assert len(await registered(http, bob)) == 1
            assert await b.call("push.unsubscribe", endpoint=shared["endpoint"]) == {}
            assert await registered(http, bob) == []
        for bad in (
            {"endpoint": shared["endpoint"]},
            {**shared, "keys": {"p256dh": "x", "auth": "y"}},
            "https://push.example/x",
        ):
            try:
                await a.call("push.subscribe", subscription=bad)
            except CommandFailed as error:
                assert error.code == "bad_request"
            else:
                raise AssertionError(f"accepted {bad!r}")
        try:
            await a.call(
                "push.subscribe", subscription={**shared, "endpoint": "http://p.example/1"}
            )
        except CommandFailed as error:
            assert error.code == "forbidden"
        else:
            raise AssertionError("accepted an http:// endpoint")
        assert await a.call("ping") == {}  # the connection stands
    finally:
        await close_all(a, b)


async def test_the_vapid_public_key_is_public_and_404_while_web_push_is_off(
    server: ServerProcess, make_server: ServerFactory, tmp_path: Path
) -> None:
    async with Http(server) as http:
        assert_error(
            await http.call("GET", f"{API}/push/vapid-public-key", key=None), 404, "not_found"
        )
    key_file = tmp_path / "vapid.pem"
    public_key = generate_key_file(key_file)
    configured = make_server(
        env={
            "REALTIME_WEBPUSH_VAPID_PRIVATE_KEY_FILE": str(key_file),
            "REALTIME_WEBPUSH_VAPID_SUBJECT": "mailto:ops@example.com",
            "REALTIME_WEBPUSH_ALLOW_HTTP_ENDPOINTS": "true",
            "REALTIME_WEBPUSH_MAX_SUBSCRIPTIONS": "2",
        }
    )
    alice = unique("alice")
    async with Http(configured) as http:
        status, body = await http.call("GET", f"{API}/push/vapid-public-key", key=None)
        assert (status, body) == (200, {"public_key": public_key})
        # http:// allowed here (a local push service), and only the newest 2 kept.
        endpoints = [f"http://127.0.0.1:9/push/{i}" for i in range(3)]
        for endpoint in endpoints:
            status, _ = await http.call(
                "PUT",
                f"{API}/users/{alice}/push-subscriptions",
                browser_subscription(endpoint),
            )
            assert status == 204
        assert [s["endpoint"] for s in await registered(http, alice)] == endpoints[:0:-1]
