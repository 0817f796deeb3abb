"""An instance's presence in a process of its own, for tests that kill it with SIGKILL.

``python -m tests.seams.presence_owner URL PREFIX OWNER TTL ROOM/USER/CONNECTION...``
records the entries, prints ``ready`` and heartbeats until it is killed.
"""

from __future__ import annotations

import asyncio
import sys

from realtime.config import load_settings
from realtime.redis_seams import create_redis_seams


async def _ignore(room: str, user: str, event: str) -> None:
    return None


async def main(url: str, prefix: str, owner: str, ttl: str, entries: list[str]) -> None:
    settings = load_settings(
        None,
        {
            "REALTIME_AUTH_SECRET": "s" * 32,
            "REALTIME_BROKER_URL": url,
            "REALTIME_BROKER_PREFIX": prefix,
            "REALTIME_BROKER_TIMEOUT": "1",
            "REALTIME_PRESENCE_TTL": ttl,
        },
    )
    _, presence = create_redis_seams(settings, owner)
    await presence.start(_ignore)
    for entry in entries:
        room, user, connection = entry.split("/")
        await presence.add(room, user, connection)
    print("ready", flush=True)
    await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    url, prefix, owner, ttl, *entries = sys.argv[1:]
    asyncio.run(main(url, prefix, owner, ttl, entries))
