"""The inbox's entry point in process, on both stores: what ``notify`` stores, pushes
and queues for the outbox, by type and preferences.

The channel transports are configured in sections the channels part of the server
adds ([webpush], [webhook], [email]); ``WithTransports`` stands in for them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from protocol import CommandError, ErrorCode
from protocol.outgoing import NotificationPush
from realtime import notices as notices_module
from realtime.broker_memory import MemoryBroker
from realtime.config import NotificationSettings, NotificationTypeSettings, Settings
from realtime.events import Event
from realtime.metrics import Metrics
from realtime.notices import Notices
from realtime.preferences import read as read_preferences
from realtime.publisher import Publisher
from realtime.store_calls import StoreCalls
from storage import PostgresStore, SqliteStore, Store

TYPES = {
    "post_liked": NotificationTypeSettings(group="post_id", name="post_liked"),
    "security": NotificationTypeSettings(critical=True, name="security"),
    "quiet": NotificationTypeSettings(channels=["in_app"], name="quiet"),
}


@dataclasses.dataclass(frozen=True)
class WithTransports(Settings):
    """Settings with the channel sections (as the channels part names them)."""

    webhook: Any = None
    email: Any = None


def configured(**notifications: Any) -> Settings:
    return WithTransports(
        notifications=NotificationSettings(types=TYPES, **notifications),
        webhook=SimpleNamespace(url="http://127.0.0.1:9/hook"),
        email=SimpleNamespace(smtp_host="127.0.0.1"),
    )


class Recorder:
    """The broker's handler: keeps every event pushed to a room."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Event]] = []

    def on_event(self, room: str, event: Event) -> None:
        self.events.append((room, event))

    def on_resync(self) -> None:
        raise AssertionError("the memory broker never resyncs")

    def on_direct(self, data: bytes) -> None:
        raise AssertionError("nothing sends these tests direct messages")

    def pushed_to(self) -> list[str]:
        return sorted(room for room, event in self.events if isinstance(event, NotificationPush))


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    made: Store
    if request.param == "sqlite":
        made = SqliteStore(tmp_path / "realtime.db")
    else:
        made = PostgresStore(request.getfixturevalue("pg_dsn"))
    await made.migrate()
    await made.open()
    yield made
    await made.close()


async def make(store: Store, settings: Settings, users: list[str]) -> tuple[Notices, Recorder]:
    metrics = Metrics()
    broker = MemoryBroker()
    recorder = Recorder()
    await broker.start(recorder)
    for user in users:
        await broker.subscribe(f"user:{user}")
    notices = Notices(
        store, StoreCalls(metrics, 10.0), Publisher(broker, metrics), metrics, settings
    )
    return notices, recorder


async def set_prefs(notices: Notices, user: str, doc: dict[str, Any]) -> None:
    await notices.set_preferences(user, read_preferences(doc))


async def test_jobs_follow_each_recipients_preferences(store: Store) -> None:
    users = ["ann", "bob", "cat", "dan", "eve"]
    notices, recorder = await make(store, configured(), users)
    await set_prefs(notices, "ann", {"email": "ann@example.com"})
    await set_prefs(notices, "bob", {"types": {"post_liked": {"in_app": False}}})
    await set_prefs(notices, "cat", {"mute": True})
    await set_prefs(notices, "dan", {"types": {"post_liked": {"push": False}}})
    reached = await notices.notify(
        to=users, followers_of=None, type="post_liked", data_json='{"post_id":9}', actor="zed"
    )
    # cat muted everything; bob is reached by push alone.
    assert reached == 4
    assert recorder.pushed_to() == ["user:ann", "user:dan", "user:eve"]
    jobs = await store.deliveries(limit=100)
    assert [(j.user, j.transport) for j in jobs] == [
        ("ann", "webhook"),
        ("ann", "email"),
        ("bob", "webhook"),
        ("eve", "webhook"),
    ]
    assert {j.group_key for j in jobs} == {"9"}
    bob = (await store.notifications("bob", after=None, limit=10, unread_only=False)).items
    assert bob == [] and jobs[2].notification_id is None
    ann = (await store.notifications("ann", after=None, limit=10, unread_only=False)).items
    assert [j.notification_id for j in jobs[:2]] == [ann[0].id, ann[0].id]
    assert await store.deliveries(user="dan", limit=10) == []  # in_app only now


async def test_a_critical_type_reaches_a_muted_user_on_every_channel(store: Store) -> None:
    notices, recorder = await make(store, configured(), ["cat"])
    await set_prefs(
        notices, "cat", {"mute": True, "email": "c@example.com", "types": {"security": {}}}
    )
    assert (
        await notices.notify(
            to=["cat"], followers_of=None, type="security", data_json="{}", actor=None
        )
        == 1
    )
    assert recorder.pushed_to() == ["user:cat"]
    assert [j.transport for j in await store.deliveries(limit=10)] == ["webhook", "email"]


async def test_without_transports_nothing_is_queued(store: Store) -> None:
    plain = Settings(notifications=NotificationSettings(types=TYPES))
    notices, recorder = await make(store, plain, ["ann"])
    await set_prefs(notices, "ann", {"email": "ann@example.com"})
    assert (
        await notices.notify(
            to=["ann", "bob"], followers_of=None, type="post_liked", data_json="{}", actor=None
        )
        == 2
    )
    assert await store.deliveries(limit=10) == []
    # in_app off and no transport: the user is not reached at all.
    await set_prefs(notices, "bob", {"types": {"post_liked": {"in_app": False}}})
    assert (
        await notices.notify(
            to=["bob"], followers_of=None, type="post_liked", data_json="{}", actor=None
        )
        == 0
    )
    assert recorder.pushed_to() == ["user:ann"]


async def test_followers_are_paged_each_page_with_its_jobs(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notices_module, "FOLLOWER_BATCH", 4)
    followers = [f"f{i:02d}" for i in range(10)]
    for user in followers:
        await store.follow(user, "star")
    notices, recorder = await make(store, configured(), followers)
    await set_prefs(notices, "f03", {"mute": True})
    await set_prefs(notices, "f07", {"types": {"post_liked": {"in_app": False}}})
    send: dict[str, Any] = {"to": None, "followers_of": "star", "type": "post_liked"}
    assert await notices.notify(**send, data_json="{}", actor="star", dedupe_key="ev-1") == 9
    assert len(recorder.pushed_to()) == 8
    jobs = await store.deliveries(limit=100)
    assert [j.user for j in jobs] == [f for f in followers if f != "f03"]
    stored = {
        f: await store.notifications(f, after=None, limit=5, unread_only=False) for f in followers
    }
    assert [f for f, page in stored.items() if page.items] == [
        f for f in followers if f not in ("f03", "f07")
    ]
    # The same event again reaches nobody and adds nothing, page after page.
    assert await notices.notify(**send, data_json="{}", actor="star", dedupe_key="ev-1") == 0
    assert len(await store.deliveries(limit=100)) == 9
    assert len(recorder.pushed_to()) == 8


async def test_unknown_types_are_refused_by_name_unless_free(store: Store) -> None:
    notices, _ = await make(store, configured(), [])
    with pytest.raises(CommandError) as refused:
        await notices.notify(to=["a"], followers_of=None, type="likd", data_json="{}", actor=None)
    assert refused.value.code is ErrorCode.BAD_REQUEST
    assert "'likd'" in refused.value.message and "post_liked" in refused.value.message
    assert (await store.notifications("a", after=None, limit=5, unread_only=False)).items == []
    free, recorder = await make(store, configured(free_types=True), ["a"])
    assert (
        await free.notify(to=["a"], followers_of=None, type="likd", data_json="{}", actor=None) == 1
    )
    assert recorder.pushed_to() == ["user:a"]
    # The server's own types (the demo's) are known too.
    notices.declare_type(NotificationTypeSettings(channels=["in_app"], name="poke"))
    assert (
        await notices.notify(to=["a"], followers_of=None, type="poke", data_json="{}", actor=None)
        == 1
    )
