"""The demo page end to end in headless Chromium: tests/browser/demo.e2e.mjs drives
Debian's /usr/bin/chromium through playwright-core against a real server process
with the demo on, and this side stops and starts that server when the script asks
(``CONTROL stop`` / ``CONTROL start`` on its stdout, ``ok`` back on its stdin): same
port, same database.

The screenshots are kept in results/screenshots/ (git-ignored) and their paths printed.
playwright-core is installed with ``npm ci`` from tests/browser/package-lock.json when
missing; it never downloads a browser of its own (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD).
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from tests.node_tools import node_with_packages
from tests.server import ROOT, SERVICE_KEY, ServerProcess

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "demo.e2e.mjs"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "results" / "screenshots"
RUN_TIMEOUT = 300
"""Seconds for the whole script: about 20 s on an idle machine."""


@pytest.fixture(scope="module")
def node() -> str:
    """node, with playwright-core installed, and Debian's Chromium."""
    if not CHROMIUM.exists():
        pytest.fail(f"the browser test needs {CHROMIUM}: `./scripts/system-packages test`")
    # Debian's Chromium is the browser: playwright must not try to download its own.
    return node_with_packages(
        HERE, "the browser tests", env={"PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    )


def _read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_two_browsers_chat_ring_the_bell_and_survive_a_restart(node: str, tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "server",
        # A small recovery limit: a page kept away longer must page the gap from history.
        env={"REALTIME_DEMO_ENABLED": "true", "REALTIME_DELIVERY_RECOVERY_LIMIT": "3"},
    )
    server.start()
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RT_")} | {
        "RT_HTTP_URL": server.url,
        "RT_SERVICE_KEY": SERVICE_KEY,
        "RT_SCREENSHOTS": str(SCREENSHOTS),
        "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
    }
    script = subprocess.Popen(
        [node, str(SCRIPT)],
        cwd=HERE,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert script.stdin is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(script.stdout, lines), daemon=True)
    reader.start()
    output: list[str] = []
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"the browser script ran past {RUN_TIMEOUT} s:\n" + "\n".join(output))
            if line is None:
                break
            output.append(line)
            if line.startswith("CONTROL "):
                action = line.removeprefix("CONTROL ")
                if action == "stop":
                    server.stop()  # SIGTERM: clients are closed with 1012 and advice
                elif action == "start":
                    server.start()
                script.stdin.write("ok\n" if action in ("stop", "start") else "unknown\n")
                script.stdin.flush()
        code = script.wait(timeout=30)
    finally:
        if script.poll() is None:
            script.kill()
            script.wait(timeout=30)
        script.stdin.close()
        if script.stdout is not None:
            script.stdout.close()
        reader.join(10)
        server.stop()
    print("\n".join(output))  # shown by pytest -s, and with a failure
    if code != 0:
        pytest.fail(
            f"{SCRIPT.name} failed ({code}):\n"
            + "\n".join(output)
            + f"\n--- server log (tail)\n{server.log()[-4000:]}",
            pytrace=False,
        )
    shots = sorted(SCREENSHOTS.glob("*.png"))
    assert len(shots) >= 7, shots
    print("screenshots:", *shots, sep="\n  ")
