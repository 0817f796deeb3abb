"""The webhook verification recipes of docs/notifications.md, run as written: each
accepts what the sender signs and refuses a changed body, another secret, an old
timestamp and a garbled signature."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from realtime.outbound.payload import encode
from realtime.outbound.webhook import signed_headers
from tests.outbound.support import job

DOC = Path(__file__).resolve().parents[2] / "docs" / "notifications.md"
SECRET = "recipe-secret-" + "r" * 24


def snippet(language: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("### Verifying a webhook", 1)[1]
    match = re.search(rf"^```{language}\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert match is not None, f"no {language} block under 'Verifying a webhook'"
    return match[1]


def cases() -> list[tuple[str, bytes, dict[str, str], str, bool]]:
    """(name, body, headers, secret, genuine)"""
    body = encode(job("webhook"))
    headers = signed_headers(SECRET.encode(), body, "rt-7", time.time())
    old = signed_headers(SECRET.encode(), body, "rt-7", time.time() - 3600)
    two = dict(headers)
    two["X-Realtime-Signature"] = "v1=00ff, " + headers["X-Realtime-Signature"]
    garbled = dict(headers)
    garbled["X-Realtime-Signature"] = "v1=zz\u00e9"
    return [
        ("genuine", body, headers, SECRET, True),
        ("one of two signatures", body, two, SECRET, True),
        ("body changed", body.replace(b"bob", b"eve"), headers, SECRET, False),
        ("another secret", body, headers, "x" * 40, False),
        ("an hour old", body, old, SECRET, False),
        ("garbled signature", body, garbled, SECRET, False),
        ("no headers", body, {}, SECRET, False),
    ]


def test_the_python_recipe() -> None:
    namespace: dict[str, Any] = {}
    exec(snippet("python"), namespace)
    verify: Callable[..., bool] = namespace["verify"]
    results = {
        name: verify(secret.encode(), headers, body) for name, body, headers, secret, _ in cases()
    }
    assert results == {name: genuine for name, _, _, _, genuine in cases()}


def test_the_node_recipe(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("the Node recipe test needs Node.js (`node` on PATH)")
    harness = tmp_path / "recipe.js"
    harness.write_text(
        snippet("js")
        + """
const input = JSON.parse(require("node:fs").readFileSync(0, "utf8"));
const out = {};
for (const c of input) {
  const pairs = Object.entries(c.headers).map(([k, v]) => [k.toLowerCase(), v]);
  const headers = Object.fromEntries(pairs);
  out[c.name] = verify(c.secret, headers, Buffer.from(c.body, "base64"));
}
process.stdout.write(JSON.stringify(out));
"""
    )
    payload = [
        {"name": n, "body": base64.b64encode(b).decode(), "headers": h, "secret": s}
        for n, b, h, s, _ in cases()
    ]
    run = subprocess.run(
        [node, str(harness)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {name: genuine for name, _, _, _, genuine in cases()}
