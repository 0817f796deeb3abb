"""PostgreSQL appends have one deadline from the moment ``append`` is called.

The wait for a batch to take an append and that batch's own time used to have a
deadline each (``timeout`` + ``timeout``: sends waited 8-15 s against a 5 s storage
timeout while PostgreSQL hung; issue 8, defect 5). A batch now runs within the
earliest deadline of its appends. Checked by what the store asks of ``_connection``,
not by how long anything took.

The database hangs without stopping the shared PostgreSQL server: another session
holds the room's row lock, which every append of that room waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from storage import NewMessage, PostgresStore, StorageUnavailable

TIMEOUT = 2.0
SLACK = 0.2  # between the store's clock reading and ours; not a speed bound
ROOM = "swap:locked"


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    # One batch at a time: the second append waits for the first batch's slot.
    store = PostgresStore(pg_dsn, timeout=TIMEOUT, max_batches=1)
    await store.open()
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def room_locked(dsn: str) -> AsyncIterator[None]:
    """Another session holds ``ROOM``'s row lock until the block ends."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM rooms WHERE room = $1 FOR UPDATE", ROOM)
            yield
    finally:
        await conn.close(timeout=10)


def record_deadlines(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Loop times by which each ``_connection`` the store opens must be done."""
    deadlines: list[float] = []
    original = store._connection
    loop = asyncio.get_running_loop()

    def connection(*args: Any, **kwargs: Any) -> Any:
        seconds = kwargs.get("seconds", args[0] if args else None)
        deadlines.append(loop.time() + (TIMEOUT if seconds is None else seconds))
        return original(*args, **kwargs)

    monkeypatch.setattr(store, "_connection", connection)
    return deadlines


async def test_an_append_waiting_for_a_batch_is_answered_within_its_own_deadline(
    store: PostgresStore, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.append(NewMessage(ROOM, "u", '"first"', None))  # the room's row exists
    deadlines = record_deadlines(store, monkeypatch)
    loop = asyncio.get_running_loop()
    async with room_locked(pg_dsn):
        first = asyncio.create_task(store.append(NewMessage(ROOM, "u", '"a"', None)))
        while not deadlines:  # its batch holds the only slot, waiting for the lock
            await asyncio.sleep(0.01)
        await asyncio.sleep(TIMEOUT / 4)
        called = loop.time()
        with pytest.raises(StorageUnavailable):
            async with asyncio.timeout(30):
                await store.append(NewMessage(ROOM, "u", '"b"', None))
        with pytest.raises(StorageUnavailable):
            await first
    # The second append's batch (if it got one) had to end by the append's deadline,
    # not a full timeout after it started (that was TIMEOUT * 3 / 4 later here).
    later = deadlines[1:]
    assert all(deadline <= called + TIMEOUT + SLACK for deadline in later), (
        [d - called for d in later],
    )
    assert (await store.recover(ROOM, 0, 10)).seq == 1  # neither was stored
