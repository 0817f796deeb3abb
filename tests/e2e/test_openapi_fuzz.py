"""A fuzzer against a real server finds no disagreement with the OpenAPI document.

schemathesis reads ``/api/v1/openapi.json`` from a server process and runs every
check it has (server errors, undocumented statuses, schema-valid requests refused,
invalid ones accepted, answers off their schema, 405 without ``Allow``, auth ignored,
...) over its phases (examples, coverage of each schema's edges, fuzzing, stateful),
with the service key. The run is bounded: few examples per operation, a fixed seed so
that a run is repeatable, one worker. The server's log must show no traceback.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from realtime.outbound.vapid import generate_key_file
from tests.e2e.helpers_auth import running, server_process
from tests.outbound.push_service import Browser
from tests.server import SERVICE_KEY, ServerProcess

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 20
SEED = 20261202
TIMEOUT = 600  # an outer bound: the run takes about 20 s


# Notification types are the operator's, so the document cannot list them: with free
# types every type (and preferences for it) that the document allows is taken.
FREE_TYPES = "[notifications]\nfree_types = true\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Web Push on, so that its key route answers 200 like the others (not only 404).
    key_file = tmp_path_factory.mktemp("vapid") / "vapid.pem"
    generate_key_file(key_file)
    webpush = {
        "REALTIME_WEBPUSH_VAPID_PRIVATE_KEY_FILE": str(key_file),
        "REALTIME_WEBPUSH_VAPID_SUBJECT": "mailto:ops@example.com",
    }
    # A webhook nobody answers, and one try: delivery jobs are dead letters at once,
    # so that requeueing one (the documented example, job 1) answers 200 too.
    outbox = {
        "REALTIME_WEBHOOK_URL": "http://127.0.0.1:9/hook",
        "REALTIME_WEBHOOK_SECRET": "fuzz-webhook-secret-" + "f" * 16,
        "REALTIME_OUTBOX_MAX_ATTEMPTS": "1",
        "REALTIME_OUTBOX_POLL_INTERVAL": "0.1",
    }
    process = server_process(
        tmp_path_factory, "fuzz", config_text=FREE_TYPES, env={**webpush, **outbox}
    )
    with running(process):
        dead_letter(process)
        yield process


def dead_letter(server: ServerProcess) -> None:
    """Job 1, dead: a notification whose Web Push (to a push service nobody runs) and
    webhook both fail."""
    nowhere = Browser(
        "x", "https://127.0.0.1:9/push/x", ec.generate_private_key(ec.SECP256R1()), b"a" * 16
    )
    path = "/api/v1/users/alice/push-subscriptions"
    status, _ = asyncio.run(server.rest("PUT", path, nowhere.subscription()))
    assert status == 204
    body = {"to": ["alice"], "type": "post_liked"}
    status, _ = asyncio.run(server.rest("POST", "/api/v1/notifications", body))
    assert status == 202
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, reply = asyncio.run(server.rest("GET", "/api/v1/deliveries?state=dead"))
        if status == 200 and [job["id"] for job in reply["deliveries"]][:1] == [1]:
            return
        time.sleep(0.1)
    raise AssertionError("no dead letter within 60 s")


def schemathesis(server: ServerProcess, workdir: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{server.url}/api/v1/openapi.json",
        "--url",
        server.url,
        "--header",
        f"Authorization: Bearer {SERVICE_KEY}",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        # One worker: hypothesis parses source with ast in each worker thread, and
        # CPython 3.11's ast is not thread-safe ("AST constructor recursion depth
        # mismatch").
        "--workers",
        "1",
        # The one health check that depends on the machine's speed, not the schema.
        "--suppress-health-check",
        "too_slow",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
    # Its own directory: no configuration file is picked up, and nothing is left behind.
    return subprocess.run(
        command,
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_schemathesis_with_every_check_finds_nothing(server: ServerProcess, tmp_path: Path) -> None:
    before = len(server.log())
    result = schemathesis(server, tmp_path)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-20_000:]
    assert "No issues found" in report, report[-20_000:]
    logged = server.log()[before:]
    assert "Traceback" not in logged, logged[-20_000:]
    assert " ERROR " not in logged, logged[-20_000:]
