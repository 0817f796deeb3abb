"""Periodic upkeep owned by the node: history retention, tail checks, dedupe keys,
finished delivery jobs."""

from __future__ import annotations

import asyncio
import logging

from storage import StorageError, Store

from .config import Settings
from .convert import now_ms
from .hub import Hub

log = logging.getLogger(__name__)

TAIL_CHECK_BATCH = 1000


async def check_tails(store: Store, hub: Hub, interval: float) -> None:
    """Catch up rooms whose latest stored message never came through the broker."""
    while True:
        await asyncio.sleep(interval)
        try:
            await catch_up_tails(store, hub)
        except StorageError as error:
            log.warning("tail check failed, retrying later: %s", error)


async def catch_up_tails(store: Store, hub: Hub) -> None:
    """One pass: the latest seq of every room, a query per ``TAIL_CHECK_BATCH`` rooms,
    and a read of what is missing only where the store is ahead of the room."""
    rooms = hub.sequenced_rooms()
    for start in range(0, len(rooms), TAIL_CHECK_BATCH):
        hub.catch_up(await store.latest_seqs(rooms[start : start + TAIL_CHECK_BATCH]))


async def retain(store: Store, settings: Settings) -> None:
    """Remove history past each namespace's age or count limit."""
    while True:
        await asyncio.sleep(settings.storage.retention_interval)
        for name, namespace in settings.namespaces.items():
            if not namespace.history or not (namespace.history_ttl or namespace.history_max):
                continue
            older_than = now_ms() - namespace.history_ttl * 1000 if namespace.history_ttl else None
            try:
                deleted = await store.prune(
                    name, older_than_ms=older_than, keep_last=namespace.history_max or None
                )
            except StorageError as error:
                log.warning("retention of %s failed, retrying later: %s", name, error)
                continue
            if deleted:
                log.info("retention removed %d messages of %s:*", deleted, name)


async def forget_dedupe_keys(store: Store, interval: float) -> None:
    """Delete notification dedupe keys whose window has ended (they block nothing)."""
    while True:
        await asyncio.sleep(interval)
        try:
            deleted = await store.forget_dedupe_keys(before_ms=now_ms())
        except StorageError as error:
            log.warning("forgetting expired dedupe keys failed, retrying later: %s", error)
            continue
        if deleted:
            log.info("forgot %d expired notification dedupe keys", deleted)


async def forget_deliveries(store: Store, settings: Settings) -> None:
    """Delete delivery jobs done or skipped longer than ``outbox.keep_finished`` ago."""
    while True:
        await asyncio.sleep(settings.storage.retention_interval)
        before = now_ms() - int(settings.outbox.keep_finished * 1000)
        try:
            deleted = await store.forget_deliveries(before_ms=before)
        except StorageError as error:
            log.warning("forgetting finished delivery jobs failed, retrying later: %s", error)
            continue
        if deleted:
            log.info("forgot %d finished delivery jobs", deleted)
