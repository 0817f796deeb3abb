"""Reads processes' CPU time and resident memory from /proc, and finds a local server."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

_TICKS = os.sysconf("SC_CLK_TCK")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def pid_listening_on(port: int) -> int | None:
    """The pid of the local process listening on a TCP port, if this user can see it."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(entry.name)
        except OSError:
            continue
    return None


def local_server_pids(urls: list[str]) -> tuple[int, ...]:
    """The local server processes behind the URLs (none if any is remote or hidden)."""
    pids = []
    for url in urls:
        parsed = urlparse(url)
        pid = None
        if parsed.hostname in LOOPBACK and parsed.port is not None:
            pid = pid_listening_on(parsed.port)
        if pid is None:
            print(
                f"no local server process found for {url}: server CPU and memory not measured",
                file=sys.stderr,
            )
            return ()
        pids.append(pid)
    return tuple(dict.fromkeys(pids))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process (all its threads) has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
