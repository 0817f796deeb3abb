"""Node.js for the Node Socket.IO peer: the binary, and the peer's packages from npm.

``node_modules`` is not committed: ``npm ci`` installs exactly what
``package-lock.json`` pins (from the npm registry) the first time, and again
whenever the lock file is newer than the installed tree, as the JS tests do
(``tests/node_tools.py``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

NODE_MAJOR = 20
NPM_TIMEOUT = 600


class NodeUnavailable(Exception):
    """No usable node (or npm could not install the packages): the reason is the message."""


def node_binary() -> str:
    """The path of node >= NODE_MAJOR on PATH."""
    path = shutil.which("node")
    if path is None:
        raise NodeUnavailable(f"Node.js >= {NODE_MAJOR} is not on PATH")
    version = subprocess.run(
        [path, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    major = int(version.strip().lstrip("v").split(".")[0])
    if major < NODE_MAJOR:
        raise NodeUnavailable(f"Node.js >= {NODE_MAJOR} needed, found {version.strip()}")
    return path


def installed(package: Path) -> bool:
    tree = package / "node_modules" / ".package-lock.json"
    lock = package / "package-lock.json"
    return tree.exists() and tree.stat().st_mtime >= lock.stat().st_mtime


def node_with_packages(package: Path) -> str:
    """The node binary, after ``npm ci`` in ``package`` when its packages are not installed."""
    node = node_binary()
    if not installed(package):
        npm = shutil.which("npm")
        if npm is None:
            raise NodeUnavailable("npm is not on PATH")
        result = subprocess.run(
            [npm, "ci", "--prefix", str(package), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise NodeUnavailable(f"npm ci failed:\n{result.stdout}\n{result.stderr}"[-2000:])
    return node
