"""The senders' surroundings: a real store, metrics, an HTTP session, a VAPID key
file, and the local stand-ins (push service, SMTP server, webhook receiver)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from realtime.metrics import Metrics
from realtime.outbound.vapid import generate_key_file
from storage import SqliteStore
from tests.outbound.push_service import PushService
from tests.outbound.smtp_server import SmtpServer
from tests.outbound.webhook_receiver import WebhookReceiver

WEBHOOK_SECRET = "webhook-secret-" + "s" * 20


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "outbound.db")
    await store.migrate()
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    session = aiohttp.ClientSession()
    yield session
    await session.close()


@pytest.fixture
def vapid_file(tmp_path: Path) -> tuple[Path, str]:
    """A VAPID private key file and its public key."""
    path = tmp_path / "vapid.pem"
    return path, generate_key_file(path)


@pytest.fixture
async def push_service(vapid_file: tuple[Path, str]) -> AsyncIterator[PushService]:
    service = PushService(vapid_file[1])
    await service.start()
    yield service
    await service.close()


@pytest.fixture
async def smtp_server() -> AsyncIterator[SmtpServer]:
    server = SmtpServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(WEBHOOK_SECRET.encode())
    await receiver.start()
    yield receiver
    await receiver.close()
