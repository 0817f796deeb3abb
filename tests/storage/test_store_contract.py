"""The Store contract (``storage/store.py``), checked against every backend.

Each test runs on SQLite (a file under tmp_path) and on PostgreSQL (a fresh
database on the session's real server), unless its name says which backend it
is about. Outage tests that stop or kill PostgreSQL use a server of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest

from protocol.commands import MAX_ID
from storage import (
    Appended,
    NewMessage,
    NotificationBatch,
    NotificationPage,
    PostgresStore,
    Recipient,
    SqliteStore,
    StorageError,
    StorageUnavailable,
    Store,
    StoredMessage,
    create_store,
)
from storage.migrate import Backend, load_migrations
from tests.services import PostgresServer

BACKENDS = ["sqlite", "postgres"]
T0 = 1_700_000_000_000

_names = itertools.count(1)


class FakeClock:
    """The store's clock, moved by hand so that timestamps are exact."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


StoreFactory = Callable[..., Any]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def new_location(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], str]]:
    """Makes empty databases: SQLite files, or databases on the PostgreSQL server."""
    created: list[str] = []

    def make() -> str:
        name = f"store_{next(_names)}"
        if backend == "sqlite":
            return str(tmp_path / f"{name}.db")
        server: PostgresServer = request.getfixturevalue("postgres_server")
        created.append(name)
        return server.create_database(name)

    yield make
    if created:
        server = request.getfixturevalue("postgres_server")
        for name in created:
            server.drop_database(name)


@pytest.fixture
def location(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The test's database: a SQLite file or a fresh PostgreSQL database."""
    if backend == "sqlite":
        return str(tmp_path / "store.db")
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture
async def make_store(
    backend: str, location: str, clock: FakeClock
) -> AsyncIterator[Callable[..., Store]]:
    """Builds unopened stores (on ``location`` unless told otherwise); closes them all."""
    stores: list[Store] = []

    def make(where: str | None = None, **options: Any) -> Store:
        target = where or location
        store: Store
        if backend == "sqlite":
            store = SqliteStore(target, clock=clock, **options)
        else:
            store = PostgresStore(target, clock=clock, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.fixture
async def store(make_store: Callable[..., Store]) -> Store:
    store = make_store()
    await store.migrate()
    await store.open()
    return store


def message(
    room: str, body: str = '"hi"', *, user: str | None = "alice", client_id: str | None = None
) -> NewMessage:
    return NewMessage(room=room, user=user, body=body, client_id=client_id)


async def fill(store: Store, room: str, count: int) -> list[StoredMessage]:
    return [(await store.append(message(room, f'"m{i}"'))).message for i in range(count)]


async def all_messages(store: Store, room: str) -> list[StoredMessage]:
    return await store.messages_after(room, 0, 100_000)


def seqs(messages: list[StoredMessage]) -> list[int]:
    return [m.seq for m in messages]


# Appends and seqs -----------------------------------------------------------------------


async def test_append_numbers_each_room_from_one(store: Store, clock: FakeClock) -> None:
    first = await store.append(message("swap:1", '{"text":"hello"}', client_id="c1"))
    assert first == Appended(
        StoredMessage("swap:1", 1, "alice", '{"text":"hello"}', T0, "c1"), duplicate=False
    )
    clock.advance(5)
    assert (await store.append(message("swap:1", "2", user=None))).message == StoredMessage(
        "swap:1", 2, None, "2", T0 + 5, None
    )
    assert (await store.append(message("swap:2"))).message.seq == 1
    assert (await store.append(message("swap:1"))).message.seq == 3
    assert await all_messages(store, "swap:1") == [
        StoredMessage("swap:1", 1, "alice", '{"text":"hello"}', T0, "c1"),
        StoredMessage("swap:1", 2, None, "2", T0 + 5, None),
        StoredMessage("swap:1", 3, "alice", '"hi"', T0 + 5, None),
    ]


async def test_bodies_are_stored_verbatim(store: Store) -> None:
    bodies = ['{"b": 1,  "a": [1,2]}', '"ünïcødé 🎉"', "null", '"' + "x" * 100_000 + '"']
    for body in bodies:
        await store.append(message("swap:1", body))
    assert [m.body for m in await all_messages(store, "swap:1")] == bodies


async def test_concurrent_appends_are_gapless_per_room(store: Store) -> None:
    rooms = [f"swap:{i}" for i in range(7)]
    bodies = [f'"{i}"' for i in range(600)]
    results = await asyncio.gather(
        *(store.append(message(rooms[i % 7], body)) for i, body in enumerate(bodies))
    )
    assert not any(r.duplicate for r in results)
    for room in rooms:
        acked = {r.message.body: r.message.seq for r in results if r.message.room == room}
        stored = await all_messages(store, room)
        assert seqs(stored) == list(range(1, len(acked) + 1))
        assert {m.body: m.seq for m in stored} == acked
        assert (await store.recover(room, None, 0)).seq == len(acked)


async def test_several_stores_on_one_database_append_gapless(
    make_store: Callable[..., Store],
) -> None:
    # Several server instances: each store has its own connections (PostgreSQL
    # pool, SQLite writer thread) and they race for the same rooms.
    stores = [make_store() for _ in range(3)]
    await stores[0].migrate()
    for s in stores:
        await s.open()
    rooms = ["swap:a", "swap:b", "swap:c"]

    async def burst(s: Store, n: int) -> list[Appended]:
        return await asyncio.gather(
            *(
                s.append(message(rooms[i % 3], f'"{n}-{i}"', client_id=f"shared-{i}"))
                if i % 5 == 0
                else s.append(message(rooms[i % 3], f'"{n}-{i}"'))
                for i in range(150)
            )
        )

    results = [
        r
        for batch in await asyncio.gather(*(burst(s, n) for n, s in enumerate(stores)))
        for r in batch
    ]
    for room in rooms:
        stored = await all_messages(stores[1], room)
        assert seqs(stored) == list(range(1, len(stored) + 1))
        by_seq = {m.seq: m for m in stored}
        for r in results:
            if r.message.room == room:
                assert by_seq[r.message.seq] == r.message
    # Each shared client_id went in once, whichever instance got there first.
    fresh = [r for r in results if r.message.client_id and not r.duplicate]
    assert sorted(r.message.client_id or "" for r in fresh) == sorted(
        f"shared-{i}" for i in range(0, 150, 5)
    )
    stored_count = sum([len(await all_messages(stores[2], room)) for room in rooms])
    assert stored_count == len(results) - sum(r.duplicate for r in results)


async def test_appends_started_in_order_commit_in_that_order(store: Store) -> None:
    """A client pipelining sends to a room gets them stored in the order it sent them."""
    rooms = ["swap:fifo1", "swap:fifo2"]
    appends = [store.append(message(rooms[i % 2], f'"{i}"')) for i in range(300)]
    results = await asyncio.gather(*appends)
    for room in rooms:
        bodies = [int(r.message.body.strip('"')) for r in results if r.message.room == room]
        seqs = [r.message.seq for r in results if r.message.room == room]
        assert bodies == sorted(bodies) and seqs == list(range(1, 151))


async def test_a_failing_message_fails_alone(store: Store) -> None:
    # A lone surrogate cannot be encoded as UTF-8: the driver rejects it.
    good = [store.append(message("swap:1", f'"{i}"')) for i in range(20)]
    bad = store.append(message("swap:1", '"\ud800"'))
    results = await asyncio.gather(*good[:10], bad, *good[10:], return_exceptions=True)
    assert isinstance(results[10], StorageError)
    assert not isinstance(results[10], StorageUnavailable)
    ok = [r for r in results if isinstance(r, Appended)]
    assert len(ok) == 20
    assert seqs(await all_messages(store, "swap:1")) == list(range(1, 21))


# Idempotency ------------------------------------------------------------------------------


async def test_a_repeated_client_id_returns_the_first_message(store: Store) -> None:
    first = await store.append(message("swap:1", '"first"', client_id="k"))
    await store.append(message("swap:1", '"other"'))
    again = await store.append(message("swap:1", '"second"', client_id="k"))
    assert again == Appended(first.message, duplicate=True)
    assert [m.body for m in await all_messages(store, "swap:1")] == ['"first"', '"other"']


async def test_client_ids_are_scoped_by_user_and_room(store: Store) -> None:
    a = await store.append(message("swap:1", client_id="k"))
    b = await store.append(message("swap:1", user="bob", client_id="k"))
    c = await store.append(message("swap:2", client_id="k"))
    system = await store.append(message("swap:1", user=None, client_id="k"))
    assert [x.duplicate for x in (a, b, c, system)] == [False] * 4
    assert (a.message.seq, b.message.seq, system.message.seq) == (1, 2, 3)
    assert c.message.seq == 1
    # System messages (no user) are idempotent too.
    repeat = await store.append(message("swap:1", '"again"', user=None, client_id="k"))
    assert repeat == Appended(system.message, duplicate=True)
    assert len(await all_messages(store, "swap:1")) == 3


async def test_messages_without_client_id_are_never_duplicates(store: Store) -> None:
    results = [await store.append(message("swap:1")) for _ in range(3)]
    assert [(r.message.seq, r.duplicate) for r in results] == [(1, False), (2, False), (3, False)]


async def test_concurrent_repeats_store_one_message(store: Store) -> None:
    results = await asyncio.gather(
        *(store.append(message("swap:1", f'"{i}"', client_id="same")) for i in range(50)),
        *(store.append(message("swap:1", f'"other {i}"')) for i in range(50)),
    )
    repeats = results[:50]
    assert sum(not r.duplicate for r in repeats) == 1
    first = next(r.message for r in repeats if not r.duplicate)
    assert all(r.message == first for r in repeats)
    assert seqs(await all_messages(store, "swap:1")) == list(range(1, 52))


async def test_idempotency_survives_a_restart(make_store: Callable[..., Store]) -> None:
    store = make_store()
    await store.migrate()
    await store.open()
    first = await store.append(message("swap:1", client_id="k"))
    await store.close()
    reopened = make_store()
    await reopened.open()
    again = await reopened.append(message("swap:1", '"later"', client_id="k"))
    assert again == Appended(first.message, duplicate=True)


# Recovery and history ---------------------------------------------------------------------


async def test_recover(store: Store) -> None:
    stored = await fill(store, "swap:1", 10)
    latest = await store.recover("swap:1", None, 100)
    assert (latest.seq, latest.missed) == (10, [])
    epoch = latest.epoch
    assert (await store.recover("swap:1", 0, 100)).missed == stored
    assert (await store.recover("swap:1", 6, 100)).missed == stored[6:]
    assert (await store.recover("swap:1", 2, 3)).missed == stored[2:5]  # the oldest first
    assert (await store.recover("swap:1", 10, 100)).missed == []
    beyond = await store.recover("swap:1", 50, 100)
    assert (beyond.seq, beyond.epoch, beyond.missed) == (10, epoch, [])
    assert (await store.recover("swap:1", 0, 0)).missed == []


async def test_recover_creates_the_room_with_a_fixed_epoch(store: Store) -> None:
    new = await store.recover("swap:new", 0, 10)
    assert (new.seq, new.missed) == (0, [])
    assert len(new.epoch) == 8
    int(new.epoch, 16)
    assert (await store.recover("swap:new", None, 10)).epoch == new.epoch
    await store.append(message("swap:new"))
    assert (await store.recover("swap:new", 0, 10)).epoch == new.epoch
    other = await store.recover("swap:other", None, 10)
    assert other.epoch != new.epoch


async def test_latest_seqs_of_many_rooms(store: Store) -> None:
    await fill(store, "swap:a", 3)
    await fill(store, "swap:b", 1)
    await store.recover("swap:empty", None, 1)
    many = [f"swap:none{i}" for i in range(1200)]  # more than one chunk of parameters
    assert await store.latest_seqs(["swap:a", "swap:b", "swap:empty", *many]) == {
        "swap:a": 3,
        "swap:b": 1,
        "swap:empty": 0,
    }
    assert await store.latest_seqs([]) == {}


async def test_messages_after(store: Store) -> None:
    stored = await fill(store, "swap:1", 6)
    assert await store.messages_after("swap:1", 2, 3) == stored[2:5]
    assert await store.messages_after("swap:1", 4, 10) == stored[4:]
    assert await store.messages_after("swap:1", 6, 10) == []
    assert await store.messages_after("swap:empty", 0, 10) == []


# (before, after, limit) -> (seqs, more), on a room with seqs 1..10.
HISTORY_CASES: list[tuple[int | None, int | None, int, list[int], bool]] = [
    (None, None, 3, [8, 9, 10], True),
    (None, None, 10, list(range(1, 11)), False),
    (None, None, 50, list(range(1, 11)), False),
    (None, None, 0, [], True),
    (8, None, 3, [5, 6, 7], True),
    (5, None, 3, [2, 3, 4], True),
    (4, None, 3, [1, 2, 3], False),
    (3, None, 3, [1, 2], False),
    (1, None, 3, [], False),
    (100, None, 3, [8, 9, 10], True),
    (None, 0, 3, [1, 2, 3], True),
    (None, 6, 3, [7, 8, 9], True),
    (None, 7, 3, [8, 9, 10], False),
    (None, 9, 3, [10], False),
    (None, 10, 3, [], False),
    (None, 10, 0, [], False),
    (None, 9, 0, [], True),
]


async def test_history_pages_and_more(store: Store, subtests: pytest.Subtests) -> None:
    stored = await fill(store, "swap:1", 10)
    epoch = (await store.recover("swap:1", None, 0)).epoch
    for before, after, limit, expected, more in HISTORY_CASES:
        with subtests.test(before=before, after=after, limit=limit):
            page = await store.history("swap:1", before=before, after=after, limit=limit)
            assert seqs(page.messages) == expected
            assert page.messages == [stored[s - 1] for s in expected]
            assert page.more is more
            assert page.epoch == epoch


async def test_history_of_an_empty_room(store: Store) -> None:
    page = await store.history("swap:empty", before=None, after=None, limit=50)
    assert (page.messages, page.more) == ([], False)
    assert page.epoch == (await store.recover("swap:empty", None, 0)).epoch
    with pytest.raises(ValueError, match="not both"):
        await store.history("swap:1", before=5, after=1, limit=5)


async def test_history_more_stops_at_pruned_messages(store: Store) -> None:
    await fill(store, "swap:1", 10)
    assert await store.prune("swap", older_than_ms=None, keep_last=4) == 6
    page = await store.history("swap:1", before=9, after=None, limit=5)
    assert (seqs(page.messages), page.more) == ([7, 8], False)
    latest = await store.history("swap:1", before=None, after=None, limit=4)
    assert (seqs(latest.messages), latest.more) == ([7, 8, 9, 10], False)


# Read marks -------------------------------------------------------------------------------


async def test_set_read_never_moves_back(store: Store) -> None:
    assert await store.set_read("swap:1", "alice", 5) == 5
    assert await store.set_read("swap:1", "alice", 3) == 5
    assert await store.set_read("swap:1", "alice", 5) == 5
    assert await store.set_read("swap:1", "alice", 8) == 8
    assert await store.set_read("swap:1", "bob", 2) == 2
    assert await store.set_read("swap:2", "alice", 1) == 1
    assert await store.set_read("swap:1", "alice", 0) == 8


# Retention ----------------------------------------------------------------------------------


async def test_prune_keeps_the_last_messages_of_each_room(store: Store) -> None:
    await fill(store, "swap:a", 10)
    await fill(store, "swap:b", 2)
    await fill(store, "swapx:a", 5)  # another namespace with the same prefix
    await fill(store, "swa_:a", 5)  # '_' is a LIKE wildcard: must not match "swap"
    await fill(store, "swa_:b", 1)
    epoch = (await store.recover("swap:a", None, 0)).epoch
    assert await store.prune("swap", older_than_ms=None, keep_last=3) == 7
    assert seqs(await all_messages(store, "swap:a")) == [8, 9, 10]
    assert seqs(await all_messages(store, "swap:b")) == [1, 2]
    assert len(await all_messages(store, "swapx:a")) == 5
    assert len(await all_messages(store, "swa_:a")) == 5
    assert await store.prune("swap", older_than_ms=None, keep_last=3) == 0
    # The counter and the epoch stay: seqs go on from where they were.
    assert (await store.append(message("swap:a"))).message.seq == 11
    recovered = await store.recover("swap:a", 0, 100)
    assert (recovered.seq, recovered.epoch, seqs(recovered.missed)) == (11, epoch, [8, 9, 10, 11])
    assert await store.prune("swa_", older_than_ms=None, keep_last=0) == 6
    assert len(await all_messages(store, "swap:b")) == 2


async def test_prune_deletes_in_chunks(make_store: Callable[..., Store]) -> None:
    store = make_store(prune_chunk=2)
    await store.migrate()
    await store.open()
    await fill(store, "swap:a", 6)
    await fill(store, "swap:b", 4)
    assert await store.prune("swap", older_than_ms=None, keep_last=1) == 8
    assert seqs(await all_messages(store, "swap:a")) == [6]
    assert seqs(await all_messages(store, "swap:b")) == [4]


async def test_prune_by_age(store: Store, clock: FakeClock) -> None:
    await fill(store, "followers:1", 3)  # at T0
    clock.advance(1000)
    await fill(store, "followers:2", 2)  # at T0 + 1000
    clock.advance(1000)
    await fill(store, "followers:1", 2)  # at T0 + 2000
    await fill(store, "swap:1", 1)
    clock.advance(1000)
    assert await store.prune("followers", older_than_ms=T0, keep_last=None) == 0
    assert await store.prune("followers", older_than_ms=T0 + 1000, keep_last=None) == 3
    assert seqs(await all_messages(store, "followers:1")) == [4, 5]
    # Either limit deletes: here the count.
    assert await store.prune("followers", older_than_ms=T0 + 1000, keep_last=1) == 2
    assert seqs(await all_messages(store, "followers:1")) == [5]
    assert seqs(await all_messages(store, "followers:2")) == [2]
    assert await store.prune("followers", older_than_ms=None, keep_last=None) == 0
    assert await store.prune("followers", older_than_ms=T0 + 10_000, keep_last=None) == 2
    assert len(await all_messages(store, "swap:1")) == 1
    assert (await store.recover("followers:1", None, 0)).seq == 5


# Membership and the follow graph ----------------------------------------------------------


async def test_membership(store: Store) -> None:
    assert await store.members("swap:1") == []
    for user in ["b", "B", "_x", "a", "a"]:
        await store.add_member("swap:1", user)
    assert await store.add_member("swap:2", "a") is True
    assert await store.add_member("swap:2", "a") is False
    # Sorted by code point, as Python sorts: not the database's locale order.
    assert await store.members("swap:1") == ["B", "_x", "a", "b"]
    assert await store.is_member("swap:1", "B") is True
    assert await store.is_member("swap:1", "c") is False
    assert await store.remove_member("swap:1", "B") is True
    assert await store.remove_member("swap:1", "B") is False
    assert await store.is_member("swap:1", "B") is False
    assert await store.members("swap:1") == ["_x", "a", "b"]
    assert await store.members("swap:2") == ["a"]


async def test_follow_graph(store: Store) -> None:
    assert await store.follow("alice", "bob") is True
    assert await store.follow("alice", "bob") is False
    assert await store.is_following("alice", "bob") is True
    assert await store.is_following("bob", "alice") is False
    assert await store.follow("bob", "alice") is True
    assert await store.followers("bob", after=None, limit=10) == ["alice"]
    assert await store.unfollow("alice", "bob") is True
    assert await store.unfollow("alice", "bob") is False
    assert await store.is_following("alice", "bob") is False
    assert await store.followers("bob", after=None, limit=10) == []
    assert await store.followers("alice", after=None, limit=10) == ["bob"]


async def test_followers_page_in_id_order(store: Store) -> None:
    users = [f"u{i:02d}" for i in range(23)] + ["Zed", "_under", "äbc"]
    for user in reversed(users):
        await store.follow(user, "star")
    await store.follow("u99", "other")
    pages: list[list[str]] = []
    after: str | None = None
    while page := await store.followers("star", after=after, limit=10):
        pages.append(page)
        after = page[-1]
    assert [len(p) for p in pages] == [10, 10, 6]
    assert [u for p in pages for u in p] == sorted(users)
    assert await store.followers("star", after="u05", limit=3) == ["u06", "u07", "u08"]
    assert await store.followers("star", after=None, limit=0) == []


# Notifications ------------------------------------------------------------------------------


async def test_add_notifications_to_listed_users(store: Store, clock: FakeClock) -> None:
    created = await store.add_notifications(["b", "a", "b", "c"], "like", '{"post":1}', "zoe")
    assert [(n.user, n.type, n.data, n.actor, n.ts, n.read) for n in created] == [
        ("a", "like", '{"post":1}', "zoe", T0, False),
        ("b", "like", '{"post":1}', "zoe", T0, False),
        ("c", "like", '{"post":1}', "zoe", T0, False),
    ]
    assert len({n.id for n in created}) == 3
    assert await store.add_notifications([], "like", "{}", None) == []
    clock.advance(1)
    later = await store.add_notifications(["a"], "follow", "{}", None)
    assert later[0].id > max(n.id for n in created)
    assert (later[0].actor, later[0].ts) == (None, T0 + 1)


async def test_follower_notifications_page_through_every_follower(store: Store) -> None:
    followers = sorted(f"f{i:02d}" for i in range(25))
    for user in followers:
        await store.follow(user, "star")
    await store.follow("outsider", "someone-else")
    created = []
    after: str | None = None
    calls = 0
    while page := await store.add_follower_notifications(
        "star", "post", '{"id":7}', "star", after=after, limit=10
    ):
        calls += 1
        assert [n.user for n in page] == sorted(n.user for n in page)
        created.extend(page)
        after = page[-1].user
    assert calls == 3
    assert [n.user for n in created] == followers
    assert all(
        (n.type, n.data, n.actor, n.read) == ("post", '{"id":7}', "star", False) for n in created
    )
    ids = [n.id for n in created]
    assert len(set(ids)) == 25
    # Each page's ids are above the previous page's.
    assert max(ids[:10]) < min(ids[10:20]) and max(ids[10:20]) < min(ids[20:])
    assert (
        await store.notifications("outsider", after=None, limit=10, unread_only=False)
    ).items == []
    assert (
        await store.add_follower_notifications("nobody", "post", "{}", None, after=None, limit=10)
        == []
    )


async def test_notification_ids_grow_across_recipients(store: Store) -> None:
    await store.follow("a", "star")
    ids: list[int] = []
    for i in range(5):
        ids += [n.id for n in await store.add_notifications([f"u{i}", "a"], "t", "{}", None)]
        ids += [
            n.id
            for n in await store.add_follower_notifications(
                "star", "t", "{}", None, after=None, limit=5
            )
        ]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


async def test_notification_pages(store: Store) -> None:
    ids = [(await store.add_notifications(["a"], "t", f'"{i}"', None))[0].id for i in range(6)]
    await store.add_notifications(["b"], "t", "{}", None)
    page = await store.notifications("a", after=None, limit=4, unread_only=False)
    assert [n.id for n in page.items] == ids[2:]  # the latest, ascending
    assert page.unread_count == 6
    page = await store.notifications("a", after=ids[1], limit=3, unread_only=False)
    assert [n.id for n in page.items] == ids[2:5]
    assert [n.data for n in page.items] == ['"2"', '"3"', '"4"']
    assert (await store.notifications("a", after=ids[5], limit=3, unread_only=False)).items == []
    assert await store.mark_notifications_read("a", ids=[ids[0], ids[3]]) == 4
    unread = await store.notifications("a", after=0, limit=10, unread_only=True)
    assert [n.id for n in unread.items] == [ids[1], ids[2], ids[4], ids[5]]
    assert unread.unread_count == 4
    latest_unread = await store.notifications("a", after=None, limit=2, unread_only=True)
    assert [n.id for n in latest_unread.items] == ids[4:]
    every = await store.notifications("a", after=None, limit=10, unread_only=False)
    assert [n.read for n in every.items] == [True, False, False, True, False, False]


async def test_mark_notifications_read(store: Store) -> None:
    mine = [n.id for n in await store.add_notifications(["a"] * 1, "t", "{}", None)]
    mine += [(await store.add_notifications(["a"], "t", "{}", None))[0].id for _ in range(4)]
    theirs = (await store.add_notifications(["b"], "t", "{}", None))[0].id
    # Another user's ids are not touched.
    assert await store.mark_notifications_read("a", ids=[theirs]) == 5
    assert await store.mark_notifications_read("b") == 1
    assert await store.mark_notifications_read("a", ids=[mine[1]]) == 4
    assert await store.mark_notifications_read("a", ids=[mine[1]]) == 4
    assert await store.mark_notifications_read("a", up_to=mine[2]) == 2
    assert await store.mark_notifications_read("a", ids=[]) == 2
    assert await store.mark_notifications_read("a") == 2
    assert await store.mark_notifications_read("a", up_to=mine[-1]) == 0
    assert await store.mark_notifications_read("b", up_to=theirs - 1) == 1
    with pytest.raises(ValueError, match="not both"):
        await store.mark_notifications_read("a", ids=[1], up_to=1)


# Web Push subscriptions ---------------------------------------------------------------------


async def test_push_subscriptions_register_replace_and_remove(
    store: Store, clock: FakeClock
) -> None:
    assert await store.push_subscriptions("a") == []
    assert await store.add_push_subscription("a", "https://p/1", "k1", "s1", keep=5) is True
    clock.advance(1)
    assert await store.add_push_subscription("a", "https://p/2", "k2", "s2", keep=5) is True
    assert await store.add_push_subscription("b", "https://p/3", "k3", "s3", keep=5) is True
    assert [
        (s.endpoint, s.user, s.p256dh, s.auth, s.created_at)
        for s in await store.push_subscriptions("a")
    ] == [
        ("https://p/2", "a", "k2", "s2", T0 + 1),
        ("https://p/1", "a", "k1", "s1", T0),
    ]
    # The same endpoint again: new keys, newest now, not new to the user.
    clock.advance(1)
    assert await store.add_push_subscription("a", "https://p/1", "k1b", "s1b", keep=5) is False
    assert [
        (s.endpoint, s.p256dh, s.auth, s.created_at) for s in await store.push_subscriptions("a")
    ] == [
        ("https://p/1", "k1b", "s1b", T0 + 2),
        ("https://p/2", "k2", "s2", T0 + 1),
    ]
    # Another user signs in on that browser: the endpoint moves to them.
    assert await store.add_push_subscription("b", "https://p/1", "k1c", "s1c", keep=5) is True
    assert [s.endpoint for s in await store.push_subscriptions("a")] == ["https://p/2"]
    assert [s.endpoint for s in await store.push_subscriptions("b")] == [
        "https://p/1",
        "https://p/3",
    ]
    # Only the owner removes it.
    assert await store.remove_push_subscription("a", "https://p/1") is False
    assert await store.remove_push_subscription("b", "https://p/1") is True
    assert await store.remove_push_subscription("b", "https://p/1") is False
    assert [s.endpoint for s in await store.push_subscriptions("b")] == ["https://p/3"]
    with pytest.raises(ValueError, match="keep"):
        await store.add_push_subscription("a", "https://p/9", "k", "s", keep=0)


async def test_push_subscriptions_keep_the_newest(store: Store, clock: FakeClock) -> None:
    for i in range(5):
        await store.add_push_subscription("a", f"https://p/{i}", "k", "s", keep=3)
        clock.advance(1)
    await store.add_push_subscription("other", "https://q/1", "k", "s", keep=3)
    assert [s.endpoint for s in await store.push_subscriptions("a")] == [
        "https://p/4",
        "https://p/3",
        "https://p/2",
    ]
    # Registered in the same millisecond as the newest other, the new one still stays.
    clock.now = T0 + 4
    await store.add_push_subscription("a", "https://p/0", "k", "s", keep=1)
    assert [s.endpoint for s in await store.push_subscriptions("a")] == ["https://p/0"]
    assert [s.endpoint for s in await store.push_subscriptions("other")] == ["https://q/1"]


# Inbox: preferences, states, dedupe keys, delivery jobs ----------------------------------


async def test_preferences_are_a_document_per_user(store: Store, clock: FakeClock) -> None:
    assert await store.get_preferences("a") is None
    assert await store.preferences_of(["a", "b"]) == {}
    await store.set_preferences("a", '{"mute":true}')
    await store.set_preferences("b", '{"mute":false}')
    assert await store.get_preferences("a") == '{"mute":true}'
    clock.advance(5)
    await store.set_preferences("a", '{"timezone":"Europe/Paris"}')  # replaced
    assert await store.get_preferences("a") == '{"timezone":"Europe/Paris"}'
    assert await store.preferences_of(["a", "c", "b"]) == {
        "a": '{"timezone":"Europe/Paris"}',
        "b": '{"mute":false}',
    }
    assert await store.preferences_of([]) == {}


async def test_a_batch_stores_in_app_ones_and_queues_a_job_per_transport(
    store: Store, clock: FakeClock
) -> None:
    before = (await store.add_notifications(["a"], "t", "{}", None))[0].id
    clock.advance(10)
    batch = await store.add_notification_batch(
        [
            Recipient("c", in_app=False, transports=("webpush",)),
            Recipient("a", transports=("webhook", "email")),
            Recipient("b"),
            Recipient("a", in_app=False),  # a repeat: the first counts
            Recipient("d", in_app=False),  # nothing wanted, still counted as given
        ],
        "post_liked",
        '{"post_id":7}',
        "zoe",
        group_key="7",
    )
    assert [(n.user, n.type, n.data, n.actor, n.ts, n.read) for n in batch.stored] == [
        ("a", "post_liked", '{"post_id":7}', "zoe", T0 + 10, False),
        ("b", "post_liked", '{"post_id":7}', "zoe", T0 + 10, False),
    ]
    assert all(n.id > before for n in batch.stored)
    assert (batch.reached, batch.deliveries) == (["a", "b", "c", "d"], 3)
    a_id = batch.stored[0].id
    jobs = await store.deliveries(limit=10)
    assert [(j.user, j.transport, j.notification_id) for j in jobs] == [
        ("a", "webhook", a_id),
        ("a", "email", a_id),
        ("c", "webpush", None),
    ]
    assert jobs[0].id < jobs[1].id < jobs[2].id
    for job in jobs:
        assert (job.type, job.data, job.actor, job.group_key) == (
            "post_liked",
            '{"post_id":7}',
            "zoe",
            "7",
        )
        assert (job.created_at, job.due_at, job.state, job.attempts) == (
            T0 + 10,
            T0 + 10,
            "pending",
            0,
        )
        assert (job.leased_until, job.last_error, job.finished_at) == (None, None, None)
    assert [j.transport for j in await store.deliveries(user="a", limit=10)] == [
        "webhook",
        "email",
    ]
    assert [j.user for j in await store.deliveries(state="pending", limit=2)] == ["a", "a"]
    assert await store.deliveries(user="b", limit=10) == []
    assert await store.deliveries(state="dead", limit=10) == []
    assert await store.add_notification_batch([], "t", "{}", None) == NotificationBatch([], [], 0)
    page = await store.notifications("c", after=None, limit=10, unread_only=False)
    assert page.items == []  # in_app off: queued, not stored


async def test_a_batch_commits_its_notifications_and_jobs_together(store: Store) -> None:
    recipients = [
        Recipient("a", transports=("webhook",)),
        Recipient("b", transports=("carrier-pigeon",)),  # the schema refuses this job
    ]
    with pytest.raises(StorageError):
        await store.add_notification_batch(recipients, "t", "{}", None, dedupe_key="k1")
    for user in ("a", "b"):
        page = await store.notifications(user, after=None, limit=10, unread_only=False)
        assert (page.items, page.unread_count) == ([], 0)
    assert await store.deliveries(limit=10) == []
    # Nothing was kept, not even the dedupe key: a retry goes through.
    recipients[1] = Recipient("b", transports=("email",))
    batch = await store.add_notification_batch(
        recipients, "t", "{}", None, dedupe_key="k1", dedupe_window_ms=60_000
    )
    assert (batch.reached, batch.deliveries) == (["a", "b"], 2)
    jobs = await store.deliveries(limit=10)
    assert [(j.user, j.notification_id) for j in jobs] == [(n.user, n.id) for n in batch.stored]


async def test_a_dedupe_key_creates_nothing_new_within_its_window(
    store: Store, clock: FakeClock
) -> None:
    window = 60_000

    async def send(users: list[str], key: str = "ev-1") -> NotificationBatch:
        recipients = [Recipient(u, transports=("webhook",)) for u in users]
        return await store.add_notification_batch(
            recipients, "t", "{}", None, dedupe_key=key, dedupe_window_ms=window
        )

    first = await send(["a", "b"])
    assert (first.reached, [n.user for n in first.stored], first.deliveries) == (
        ["a", "b"],
        ["a", "b"],
        2,
    )
    clock.advance(window - 1)
    again = await send(["a", "b", "c"])
    assert (again.reached, [n.user for n in again.stored], again.deliveries) == (["c"], ["c"], 1)
    other_key = await send(["a"], key="ev-2")
    assert other_key.reached == ["a"]
    clock.advance(1)  # a's and b's window ended; c's runs on
    later = await send(["a", "b", "c"])
    assert later.reached == ["a", "b"]
    page = await store.notifications("a", after=None, limit=10, unread_only=False)
    assert len(page.items) == 3  # ev-1, ev-2, ev-1 again
    assert [j.user for j in await store.deliveries(limit=10)] == ["a", "b", "c", "a", "a", "b"]
    # Without a key nothing is deduplicated.
    plain = [Recipient("a")]
    assert (await store.add_notification_batch(plain, "t", "{}", None)).reached == ["a"]
    assert (await store.add_notification_batch(plain, "t", "{}", None)).reached == ["a"]


async def test_concurrent_batches_with_one_dedupe_key_store_it_once(store: Store) -> None:
    recipients = [Recipient("a", transports=("email",)), Recipient("b")]
    batches = await asyncio.gather(
        *(
            store.add_notification_batch(
                recipients, "t", "{}", None, dedupe_key="same", dedupe_window_ms=60_000
            )
            for _ in range(10)
        )
    )
    assert sorted(user for batch in batches for user in batch.reached) == ["a", "b"]
    for user in ("a", "b"):
        page = await store.notifications(user, after=None, limit=10, unread_only=False)
        assert len(page.items) == 1
    assert len(await store.deliveries(limit=10)) == 1


async def test_expired_dedupe_keys_are_forgotten(store: Store, clock: FakeClock) -> None:
    for key, window in (("short", 10), ("long", 1000)):
        await store.add_notification_batch(
            [Recipient("a"), Recipient("b")],
            "t",
            "{}",
            None,
            dedupe_key=key,
            dedupe_window_ms=window,
        )
    assert await store.forget_dedupe_keys(before_ms=T0 + 10) == 0
    assert await store.forget_dedupe_keys(before_ms=T0 + 11) == 2
    assert await store.forget_dedupe_keys(before_ms=T0 + 11) == 0
    # The long ones still hold.
    again = [Recipient("a")]
    batch = await store.add_notification_batch(
        again, "t", "{}", None, dedupe_key="long", dedupe_window_ms=1000
    )
    assert batch.reached == []


async def test_seen_archived_read_one_and_counts_per_type(store: Store) -> None:
    async def add(user: str, type: str) -> int:
        return (
            (await store.add_notification_batch([Recipient(user)], type, "{}", None)).stored[0].id
        )

    ids = [await add("a", t) for t in ("like", "like", "follow", "like", "mention")]
    theirs = await add("b", "like")

    async def page(**options: Any) -> NotificationPage:
        return await store.notifications(
            "a", after=options.pop("after", None), limit=10, unread_only=False, **options
        )

    first = await page()
    assert [n.id for n in first.items] == ids
    assert (first.unread_count, first.unseen_count) == (5, 5)
    assert first.unread_by_type == {"like": 3, "follow": 1, "mention": 1}
    assert not any(n.seen or n.archived for n in first.items)

    assert await store.mark_notifications_seen("a", up_to=ids[2]) == 2
    assert await store.mark_notifications_seen("a", up_to=ids[1]) == 2  # never back
    assert [n.seen for n in (await page()).items] == [True, True, True, False, False]
    assert (await page()).unread_count == 5  # seen is not read

    # Reading one marks it seen too; another user's or an unknown id is not found.
    assert await store.mark_notification_read("a", ids[4]) is True
    assert await store.mark_notification_read("a", ids[4]) is True  # already read: still there
    assert await store.mark_notification_read("a", theirs) is False
    assert await store.mark_notification_read("a", theirs + 1000) is False
    after_read = await page()
    assert (after_read.items[4].read, after_read.items[4].seen) == (True, True)
    assert (after_read.unread_count, after_read.unseen_count) == (4, 1)
    assert after_read.unread_by_type == {"like": 3, "follow": 1}

    # Archived ones leave the list and the counts, and are listed when asked.
    assert await store.archive_notifications("a", [ids[0], ids[3], theirs]) == 2
    inbox = await page()
    assert [n.id for n in inbox.items] == [ids[1], ids[2], ids[4]]
    assert (inbox.unread_count, inbox.unread_by_type, inbox.unseen_count) == (
        2,
        {"like": 1, "follow": 1},
        0,
    )
    archive = await page(archived=True)
    assert [(n.id, n.archived) for n in archive.items] == [(ids[0], True), (ids[3], True)]
    assert archive.unread_count == 2  # the counts are the inbox's
    unread_archive = await store.notifications(
        "a", after=ids[0], limit=10, unread_only=True, archived=True
    )
    assert [n.id for n in unread_archive.items] == [ids[3]]
    assert (await store.notifications("b", after=None, limit=10, unread_only=False)).items[
        0
    ].archived is False
    # Marking read counts only what is in the inbox.
    assert await store.mark_notifications_read("a", ids=[ids[3]]) == 2
    assert await store.mark_notifications_read("a", up_to=ids[1]) == 1
    # Brought back: in the inbox and its counts again.
    assert await store.archive_notifications("a", [ids[0]], archived=False) == 1
    back = await page()
    assert [n.id for n in back.items] == [ids[0], ids[1], ids[2], ids[4]]
    assert back.unread_by_type == {"follow": 1}
    assert await store.mark_notifications_seen("a", up_to=MAX_ID) == 0


# Epochs and migrations ----------------------------------------------------------------------


async def test_epoch_survives_reopening_and_changes_with_a_new_database(
    make_store: Callable[..., Store], new_location: Callable[[], str]
) -> None:
    store = make_store()
    await store.migrate()
    await store.open()
    epoch = (await store.recover("swap:1", None, 0)).epoch
    await store.append(message("swap:1"))
    await store.close()
    reopened = make_store()
    await reopened.open()
    again = await reopened.recover("swap:1", None, 0)
    assert (again.seq, again.epoch) == (1, epoch)

    fresh = make_store(new_location())
    await fresh.migrate()
    await fresh.open()
    lost = await fresh.recover("swap:1", None, 0)
    assert (lost.seq, lost.epoch != epoch) == (0, True)


async def test_migrate_is_idempotent(backend: str, make_store: Callable[..., Store]) -> None:
    store = make_store()
    assert await store.migrate() == versions(backend)
    assert await store.migrate() == []
    await store.open()
    assert await store.migrate() == []
    assert (await store.append(message("swap:1"))).message.seq == 1


def versions(backend: str) -> list[int]:
    """Every migration of the backend, in order: what a fresh database gets."""
    every = [m.version for m in load_migrations(cast(Backend, backend))]
    assert every[:1] == [1]
    return every


async def applied_versions(backend: str, where: str) -> list[int]:
    if backend == "sqlite":
        with contextlib.closing(sqlite3.connect(where)) as conn:
            return [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
    pg = await asyncpg.connect(where)
    try:
        return [row[0] for row in await pg.fetch("SELECT version FROM schema_migrations")]
    finally:
        await pg.close()


async def test_concurrent_migrations_apply_each_version_once(
    backend: str, make_store: Callable[..., Store], location: str
) -> None:
    stores = [make_store() for _ in range(5)]
    every = versions(backend)
    results = await asyncio.gather(*(s.migrate() for s in stores))
    assert sorted(results) == [[], [], [], [], every]
    assert sorted(await applied_versions(backend, location)) == every
    await stores[3].open()
    assert (await stores[3].append(message("swap:1"))).message.seq == 1


# Lifecycle ----------------------------------------------------------------------------------


async def test_close_finishes_queued_appends(make_store: Callable[..., Store]) -> None:
    store = make_store()
    await store.migrate()
    await store.open()
    tasks = [asyncio.create_task(store.append(message("swap:1", f'"{i}"'))) for i in range(200)]
    await asyncio.sleep(0)  # every task has queued its append
    await store.close()
    results = await asyncio.gather(*tasks)
    assert sorted(r.message.seq for r in results) == list(range(1, 201))
    with pytest.raises(StorageUnavailable):
        await store.append(message("swap:1"))
    reopened = make_store()
    await reopened.open()
    assert len(await all_messages(reopened, "swap:1")) == 200


async def test_ping(store: Store) -> None:
    await store.ping()


# Outages: SQLite ------------------------------------------------------------------------------


async def test_sqlite_unavailable_while_locked_and_overloaded_then_heals(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = SqliteStore(path, timeout=0.5, max_queue=8)
    await store.migrate()
    await store.open()
    try:
        await store.append(message("swap:1"))
        # Another process holds the write lock: the writer cannot begin.
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            with pytest.raises(StorageUnavailable):
                await store.append(message("swap:1", '"lost"'))
            assert time.monotonic() - started < 10  # a 0.5 s timeout, on a busy machine
            results = await asyncio.gather(
                *(store.append(message("swap:1", f'"{i}"')) for i in range(40)),
                return_exceptions=True,
            )
            assert all(isinstance(r, StorageUnavailable) for r in results)
            assert any("overloaded" in str(r) for r in results)
            # Readers are not blocked by a writer (WAL).
            assert (await store.recover("swap:1", None, 0)).seq == 1
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # Nothing of the failed calls was stored; the store heals by itself.
        assert (await store.append(message("swap:1", '"after"'))).message.seq == 2
        assert [m.body for m in await all_messages(store, "swap:1")] == ['"hi"', '"after"']
    finally:
        await store.close()


async def test_sqlite_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    store = SqliteStore(tmp_path / "a-file" / "store.db")
    with pytest.raises(StorageUnavailable):
        await store.open()
    with pytest.raises(StorageUnavailable):
        await store.migrate()
    await store.close()


# Outages: PostgreSQL ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this module's own, which its tests stop and kill."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def outage_dsn(own_postgres: PostgresServer) -> Iterator[str]:
    own_postgres.start()  # a previous test may have left it stopped
    name = f"outage_{next(_names)}"
    dsn = own_postgres.create_database(name)
    yield dsn
    own_postgres.start()
    own_postgres.drop_database(name)


async def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def assert_unavailable_quickly(store: Store) -> None:
    calls = [
        store.ping(),
        store.append(message("swap:1", '"during"', client_id="during")),
        store.recover("swap:1", 0, 10),
        store.history("swap:1", before=None, after=None, limit=10),
        store.add_member("swap:1", "bob"),
        store.notifications("alice", after=None, limit=10, unread_only=False),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await call
        assert time.monotonic() - started < 10  # a 1 s timeout, on a busy machine


async def test_postgres_outage_then_heals_without_reopening(
    own_postgres: PostgresServer, outage_dsn: str
) -> None:
    store = PostgresStore(outage_dsn, timeout=1.0)
    await store.migrate()
    await store.open()
    try:
        await fill(store, "swap:1", 3)
        await asyncio.to_thread(own_postgres.stop)
        await assert_unavailable_quickly(store)
        await asyncio.to_thread(own_postgres.start)
        await store.ping()
        # The server was down: the failed append cannot have been stored.
        appended = await store.append(message("swap:1", '"after"', client_id="during"))
        assert (appended.message.seq, appended.duplicate) == (4, False)
        stored = await all_messages(store, "swap:1")
        assert seqs(stored) == list(range(1, len(stored) + 1))
        assert stored[-1] == appended.message
    finally:
        await store.close()


async def test_postgres_crash_loses_no_acknowledged_append(
    own_postgres: PostgresServer, outage_dsn: str
) -> None:
    store = PostgresStore(outage_dsn, timeout=1.0)
    await store.migrate()
    await store.open()
    acked: dict[str, int] = {}
    failed: list[str] = []
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            key = f"w{w}-{i}"
            try:
                result = await store.append(message("swap:1", f'"{key}"', client_id=key))
            except StorageUnavailable:
                failed.append(key)
            else:
                acked[key] = result.message.seq
            await asyncio.sleep(0.005)

    writers = [asyncio.create_task(writer(w)) for w in range(4)]
    try:
        await wait_until(lambda: len(acked) >= 20)
        await asyncio.to_thread(own_postgres.kill)
        before_restart = len(acked)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(own_postgres.start)
        await wait_until(lambda: len(acked) >= before_restart + 20)
        stop.set()
        await asyncio.gather(*writers)
        assert failed, "the crash should have failed some appends"
        # Clients retry what failed with the same client_id: always safe.
        for key in failed:
            acked[key] = (
                await store.append(message("swap:1", f'"{key}"', client_id=key))
            ).message.seq
        stored = await all_messages(store, "swap:1")
        assert seqs(stored) == list(range(1, len(stored) + 1))
        assert {m.client_id: m.seq for m in stored} == acked
    finally:
        stop.set()
        await asyncio.gather(*writers, return_exceptions=True)
        await store.close()


async def test_postgres_open_while_down_then_connects(
    own_postgres: PostgresServer, outage_dsn: str
) -> None:
    await asyncio.to_thread(own_postgres.stop)
    store = PostgresStore(outage_dsn, timeout=1.0)
    try:
        await store.open()
        with pytest.raises(StorageUnavailable):
            await store.ping()
        with pytest.raises(StorageUnavailable):
            await store.migrate()
        await asyncio.to_thread(own_postgres.start)
        assert await store.migrate() == versions("postgres")
        await store.ping()
        assert (await store.append(message("swap:1"))).message.seq == 1
    finally:
        await store.close()


async def test_postgres_timeout_is_unavailable_and_does_nothing(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, timeout=0.5)
    await store.migrate()
    await store.open()
    blocker = await asyncpg.connect(pg_dsn)
    try:
        await store.append(message("swap:1"))
        # Another session holds the room's row: the append cannot get its seq.
        await blocker.execute("BEGIN")
        await blocker.execute("SELECT * FROM rooms WHERE room = 'swap:1' FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await store.append(message("swap:1", '"blocked"'))
        assert time.monotonic() - started < 10  # a 0.5 s timeout, on a busy machine
        await blocker.execute("ROLLBACK")
        assert (await store.append(message("swap:1", '"after"'))).message.seq == 2
        assert [m.body for m in await all_messages(store, "swap:1")] == ['"hi"', '"after"']
    finally:
        await blocker.close()
        await store.close()


async def test_postgres_bad_database_fails_open(postgres_server: PostgresServer) -> None:
    store = PostgresStore(postgres_server.dsn_for("no_such_database"), timeout=2.0)
    with pytest.raises(StorageError) as raised:
        await store.open()
    assert not isinstance(raised.value, StorageUnavailable)
    await store.close()


# The factory ------------------------------------------------------------------------------


async def test_create_store_picks_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    default = create_store("")
    assert isinstance(default, SqliteStore)
    assert default.path == tmp_path / "data" / "realtime.db"
    await default.open()
    await default.close()
    assert (tmp_path / "data" / "realtime.db").is_file()

    relative = create_store("sqlite:///sub/x.db")
    assert isinstance(relative, SqliteStore)
    assert relative.path == tmp_path / "sub" / "x.db"
    absolute = create_store(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == tmp_path / "abs.db"
    assert isinstance(create_store("postgresql://u@localhost/db", pool_size=3), PostgresStore)
    assert isinstance(create_store("postgres://u@localhost/db"), PostgresStore)


@pytest.mark.parametrize(
    "dsn", ["mysql://root:secret@db/x", "sqlite://x.db", "sqlite:///", "redis://h", "data.db"]
)
def test_create_store_rejects_other_dsns(dsn: str) -> None:
    with pytest.raises(ValueError, match=r"sqlite:///relative/path\.db") as raised:
        create_store(dsn)
    assert "secret" not in str(raised.value)


def test_create_store_checks_the_sqlite_synchronous_mode() -> None:
    with pytest.raises(ValueError, match="synchronous"):
        create_store("", sqlite_synchronous="SOMETIMES")
    assert isinstance(create_store("", sqlite_synchronous="normal"), SqliteStore)


# The outbox: claiming and settling delivery jobs ----------------------------------------

LEASE = 60_000


async def queue(
    store: Store,
    users: list[str],
    transports: tuple[str, ...] = ("webhook",),
    *,
    group_key: str | None = None,
    in_app: bool = True,
    type: str = "t",
) -> list[int]:
    """Queue one job per user per transport; their ids, ascending."""
    before = {d.id for d in await store.deliveries(limit=10_000)}
    await store.add_notification_batch(
        [Recipient(u, in_app=in_app, transports=transports) for u in users],
        type,
        "{}",
        None,
        group_key=group_key,
    )
    return sorted(d.id for d in await store.deliveries(limit=10_000) if d.id not in before)


async def job(store: Store, id: int) -> Any:
    (found,) = [d for d in await store.deliveries(limit=10_000) if d.id == id]
    return found


async def test_a_claim_leases_due_jobs_earliest_first_and_charges_an_attempt(
    store: Store, clock: FakeClock
) -> None:
    first = await queue(store, ["a", "b"])
    clock.advance(10)
    later = await queue(store, ["c"])
    now = T0 + 10
    claimed = await store.claim_deliveries(now, 2, LEASE)
    assert [d.id for d in claimed] == first
    for d in claimed:
        assert (d.state, d.attempts, d.leased_until) == ("pending", 1, now + LEASE)
    # Leased jobs are not free: the next claim takes the rest, then nothing.
    assert [d.id for d in await store.claim_deliveries(now, 10, LEASE)] == later
    assert await store.claim_deliveries(now + LEASE - 1, 10, LEASE) == []
    # A lease that ended is a claimer that died: its jobs are taken again.
    again = await store.claim_deliveries(now + LEASE, 10, LEASE)
    assert [(d.id, d.attempts) for d in again] == [(i, 2) for i in first + later]
    assert await store.claim_deliveries(now, 0, LEASE) == []


async def test_a_claim_takes_only_due_jobs_of_the_asked_transports(
    store: Store, clock: FakeClock
) -> None:
    ids = await queue(store, ["a"], ("webpush", "webhook", "email"))
    assert await store.claim_deliveries(T0 - 1, 10, LEASE) == []  # not due yet
    assert await store.claim_deliveries(T0, 10, LEASE, transports=[]) == []
    claimed = await store.claim_deliveries(T0, 10, LEASE, transports=["email", "webpush"])
    assert sorted(d.transport for d in claimed) == ["email", "webpush"]
    assert [d.id for d in await store.claim_deliveries(T0, 10, LEASE)] == [ids[1]]


async def test_settling_claimed_jobs(store: Store, clock: FakeClock) -> None:
    ids = await queue(store, ["a", "b", "c", "d"])
    claimed = await store.claim_deliveries(T0, 10, LEASE)
    lease = claimed[0].leased_until
    assert lease is not None
    clock.advance(5)
    assert await store.finish_deliveries([ids[0]], "done", None, lease=lease) == 1
    done = await job(store, ids[0])
    assert (done.state, done.finished_at, done.leased_until, done.last_error) == (
        "done",
        T0 + 5,
        None,
        None,
    )
    # Only pending jobs change: a finished one stays finished.
    assert await store.finish_deliveries([ids[0]], "dead", "late") == 0
    assert await store.retry_deliveries([ids[0]], T0, "late") == 0
    assert (await job(store, ids[0])).state == "done"

    assert await store.retry_deliveries([ids[1]], T0 + 1000, "503 busy", lease=lease) == 1
    retried = await job(store, ids[1])
    assert (retried.state, retried.due_at, retried.leased_until, retried.attempts) == (
        "pending",
        T0 + 1000,
        None,
        1,
    )
    assert retried.last_error == "503 busy"

    assert await store.reschedule_deliveries([ids[2]], T0 + 500, lease=lease) == 1
    rescheduled = await job(store, ids[2])
    assert (rescheduled.due_at, rescheduled.leased_until, rescheduled.attempts) == (
        T0 + 500,
        None,
        0,  # not tried: the claim's attempt is given back
    )

    # A lease another claim has taken since is not the caller's any more.
    assert await store.finish_deliveries([ids[3]], "done", None, lease=lease + 1) == 0
    assert await store.finish_deliveries([ids[3]], "dead", "410 gone", lease=lease) == 1
    assert (await job(store, ids[3])).last_error == "410 gone"
    # done keeps the last error of the tries before it.
    again = await store.claim_deliveries(T0 + 1000, 10, LEASE)
    assert [d.id for d in again] == [ids[1], ids[2]]
    await store.finish_deliveries([ids[1]], "done", None)
    assert (await job(store, ids[1])).last_error == "503 busy"
    await store.finish_deliveries([ids[2]], "skipped", "read")
    assert [(d.id, d.state) for d in await store.deliveries(limit=10)] == [
        (ids[0], "done"),
        (ids[1], "done"),
        (ids[2], "skipped"),
        (ids[3], "dead"),
    ]
    with pytest.raises(ValueError, match="pending"):
        await store.finish_deliveries([ids[0]], "pending", None)


async def test_an_email_claim_brings_its_digest_mates(store: Store, clock: FakeClock) -> None:
    window = 1000
    first = (await queue(store, ["a"], ("email", "webhook"), group_key="p1"))[0]
    clock.advance(400)
    mate = (await queue(store, ["a"], ("email",), group_key="p1"))[0]
    others = [
        *(await queue(store, ["a"], ("email",), group_key="p2")),  # another group
        *(await queue(store, ["b"], ("email",), group_key="p1")),  # another user
        *(await queue(store, ["a"], ("email",), group_key="p1", type="u")),  # another type
        *(await queue(store, ["a"], ("email",))),  # no group
    ]
    clock.advance(600)  # T0 + 1000: the window of the first has ended
    late = (await queue(store, ["a"], ("email",), group_key="p1"))[0]
    # Only the first is asked for; its mate comes along, due or not.
    claimed = await store.claim_deliveries(T0, 1, LEASE, digest_window_ms=window)
    assert [d.id for d in claimed] == [first, mate]
    assert [d.attempts for d in claimed] == [1, 1]
    assert all(d.leased_until == T0 + LEASE for d in claimed)
    # Without a window, each job is its own.
    rest = await store.claim_deliveries(T0 + 2000, 10, LEASE)
    assert sorted(d.id for d in rest) == sorted([first + 1, *others, late])


async def test_digest_mates_held_by_another_claim_are_left_to_it(
    store: Store, clock: FakeClock
) -> None:
    first = (await queue(store, ["a"], ("email",), group_key="p"))[0]
    clock.advance(1)
    mate = (await queue(store, ["a"], ("email",), group_key="p"))[0]
    # Both claimed without a window; the first is given back, the mate still held.
    await store.claim_deliveries(T0 + 1, 10, LEASE)
    await store.reschedule_deliveries([first], T0 + 5)
    claimed = await store.claim_deliveries(T0 + 5, 10, LEASE, digest_window_ms=1000)
    assert [d.id for d in claimed] == [first]
    assert (await job(store, mate)).attempts == 1


async def test_a_dead_job_is_requeued(store: Store, clock: FakeClock) -> None:
    ids = await queue(store, ["a", "b"])
    await store.claim_deliveries(T0, 10, LEASE)
    await store.finish_deliveries([ids[0]], "dead", "500 down")
    await store.finish_deliveries([ids[1]], "done", None)
    assert [d.id for d in await store.deliveries(state="dead", limit=10)] == [ids[0]]
    clock.advance(50)
    requeued = await store.requeue_delivery(ids[0])
    assert requeued is not None
    assert (requeued.id, requeued.state, requeued.attempts, requeued.due_at) == (
        ids[0],
        "pending",
        0,
        T0 + 50,
    )
    assert (requeued.leased_until, requeued.finished_at, requeued.last_error) == (
        None,
        None,
        "500 down",
    )
    assert await store.requeue_delivery(ids[0]) is None  # pending now
    assert await store.requeue_delivery(ids[1]) is None  # done
    assert await store.requeue_delivery(10**9) is None
    assert [d.id for d in await store.claim_deliveries(T0 + 50, 10, LEASE)] == [ids[0]]


async def test_unread_notifications_among_ids(store: Store) -> None:
    stored = await store.add_notifications(["a", "a", "b"], "t", "{}", None)
    more = await store.add_notifications(["a", "a"], "t", "{}", None)
    a1, a2 = stored[0].id, more[0].id
    b1 = stored[1].id
    assert await store.unread_notifications([a1, a2, b1, 10**9]) == {a1, a2, b1}
    await store.mark_notification_read("a", a1)
    await store.archive_notifications("b", [b1])
    assert await store.unread_notifications([a1, a2, b1]) == {a2}
    assert await store.unread_notifications([]) == set()


async def test_pending_jobs_per_transport_and_paging(store: Store) -> None:
    assert await store.pending_deliveries() == {}
    ids = await queue(store, ["a", "b", "c"], ("webhook", "email"))
    assert await store.pending_deliveries() == {"webhook": 3, "email": 3}
    await store.claim_deliveries(T0, 1, LEASE)
    assert await store.pending_deliveries() == {"webhook": 3, "email": 3}  # leased: pending
    await store.finish_deliveries([ids[0]], "done", None)
    assert await store.pending_deliveries() == {"webhook": 2, "email": 3}
    page = await store.deliveries(limit=2, after=ids[1])
    assert [d.id for d in page] == ids[2:4]
    assert [d.id for d in await store.deliveries(user="c", limit=10, after=ids[4])] == [ids[5]]


async def test_finished_jobs_are_forgotten_dead_ones_stay(store: Store, clock: FakeClock) -> None:
    ids = await queue(store, ["a", "b", "c", "d"])
    await store.claim_deliveries(T0, 10, LEASE)
    await store.finish_deliveries(ids[:1], "done", None)
    await store.finish_deliveries(ids[1:2], "skipped", "read")
    await store.finish_deliveries(ids[2:3], "dead", "400 no")
    clock.advance(10)
    await store.finish_deliveries(ids[3:], "done", None)
    assert await store.forget_deliveries(before_ms=T0) == 0
    assert await store.forget_deliveries(before_ms=T0 + 1) == 2
    assert [d.id for d in await store.deliveries(limit=10)] == ids[2:]


async def test_concurrent_claims_never_take_one_job_twice(
    make_store: Callable[..., Store],
) -> None:
    # Several instances' stores on one database, claiming as fast as they can.
    stores = [make_store() for _ in range(3)]
    await stores[0].migrate()
    for s in stores:
        await s.open()
    users = [f"u{i:03}" for i in range(100)]
    await stores[0].add_notification_batch(
        [Recipient(u, transports=("webhook", "email")) for u in users], "t", "{}", None
    )
    taken: list[int] = []

    async def claimer(store: Store) -> None:
        while claimed := await store.claim_deliveries(T0, 7, LEASE):
            taken.extend(d.id for d in claimed)

    await asyncio.gather(*(claimer(s) for s in stores for _ in range(3)))
    assert len(taken) == len(set(taken)) == 200
