"""Join, send and read rules per namespace (realtime/policy.py), against a fake store."""

from __future__ import annotations

import time
from typing import Any, cast

import jwt
import pytest

from protocol import CommandError, ErrorCode
from realtime.auth import Authenticator
from realtime.config import AuthSettings, JoinPolicy, NamespaceSettings, SendPolicy
from realtime.policy import Policy
from storage import Store

SECRET = "s" * 32


class FakeStore:
    """Only what the policy asks: memberships and follows, and how often it asked."""

    def __init__(self) -> None:
        self.members: set[tuple[str, str]] = set()  # (room, user)
        self.follows: set[tuple[str, str]] = set()  # (follower, followed)
        self.lookups = 0

    async def is_member(self, room: str, user: str) -> bool:
        self.lookups += 1
        return (room, user) in self.members

    async def is_following(self, follower: str, followed: str) -> bool:
        self.lookups += 1
        return (follower, followed) in self.follows


NAMESPACES = {
    "members": NamespaceSettings(join="members", send="members"),
    "followers": NamespaceSettings(join="followers", send="owner"),
    "owner": NamespaceSettings(join="owner", send="nobody"),
    "open": NamespaceSettings(join="anyone", send="anyone"),
}


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def policy(store: FakeStore) -> Policy:
    return Policy(NAMESPACES, cast(Store, store), Authenticator(AuthSettings(secret=SECRET)))


def room_token(user: str, room: str, secret: str = SECRET, **claims: Any) -> str:
    payload = {"sub": user, "room": room, "exp": int(time.time()) + 60, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


async def may_join(policy: Policy, user: str, room: str, token: str | None = None) -> bool:
    name, namespace = policy.resolve(room)
    try:
        await policy.check_join(user, name, namespace, token)
    except CommandError as error:
        assert error.code == ErrorCode.FORBIDDEN, error
        return False
    return True


async def may_send(policy: Policy, user: str, room: str, *, granted: bool = False) -> bool:
    name, namespace = policy.resolve(room)
    try:
        await policy.check_send(user, name, namespace, granted)
    except CommandError as error:
        assert error.code == ErrorCode.FORBIDDEN, error
        return False
    return True


async def may_read(policy: Policy, user: str, room: str) -> bool:
    name, namespace = policy.resolve(room)
    try:
        await policy.check_read(user, name, namespace)
    except CommandError as error:
        assert error.code == ErrorCode.FORBIDDEN, error
        return False
    return True


# resolve ----------------------------------------------------------------------------------


def test_resolve_finds_the_namespace(policy: Policy) -> None:
    name, namespace = policy.resolve("followers:ann")
    assert (name.namespace, name.key, str(name)) == ("followers", "ann", "followers:ann")
    assert namespace is NAMESPACES["followers"]


def test_an_unknown_namespace_is_not_found_and_lists_the_known(policy: Policy) -> None:
    with pytest.raises(CommandError) as refused:
        policy.resolve("nope:1")
    assert refused.value.code == ErrorCode.NOT_FOUND
    assert "'nope'" in refused.value.message
    assert "followers, members, open, owner" in refused.value.message


@pytest.mark.parametrize("room", ["", "swap", ":1", "swap:", "a b:1", 7, None])
def test_a_bad_room_name_is_a_bad_request(policy: Policy, room: Any) -> None:
    with pytest.raises(CommandError) as refused:
        policy.resolve(room)
    assert refused.value.code == ErrorCode.BAD_REQUEST


def test_namespaces_joined_by_a_rule(policy: Policy) -> None:
    assert policy.namespaces_joined_by("followers") == ["followers"]
    assert policy.namespaces_joined_by("members") == ["members"]
    assert policy.namespaces_joined_by("nobody") == []


# join -------------------------------------------------------------------------------------


async def test_members_join_members_rooms(policy: Policy, store: FakeStore) -> None:
    store.members.add(("members:1", "ann"))
    assert await may_join(policy, "ann", "members:1")
    assert not await may_join(policy, "bob", "members:1")
    assert not await may_join(policy, "ann", "members:2")


async def test_followers_and_the_followed_join_followers_rooms(
    policy: Policy, store: FakeStore
) -> None:
    store.follows.add(("fan", "star"))
    assert await may_join(policy, "fan", "followers:star")
    assert await may_join(policy, "star", "followers:star")  # the user followed
    assert not await may_join(policy, "star", "followers:fan")  # follows go one way
    assert not await may_join(policy, "other", "followers:star")


async def test_only_the_owner_joins_owner_rooms_without_a_lookup(
    policy: Policy, store: FakeStore
) -> None:
    assert await may_join(policy, "ann", "owner:ann")
    assert not await may_join(policy, "bob", "owner:ann")
    assert store.lookups == 0


async def test_anyone_joins_open_rooms(policy: Policy, store: FakeStore) -> None:
    assert await may_join(policy, "whoever", "open:1")
    assert store.lookups == 0


async def test_refusals_say_what_the_rule_is(policy: Policy) -> None:
    messages = {}
    for room in ("members:1", "followers:star", "owner:ann"):
        name, namespace = policy.resolve(room)
        with pytest.raises(CommandError) as refused:
            await policy.check_join("bob", name, namespace, None)
        messages[room] = refused.value.message
    assert "members" in messages["members:1"] and "room token" in messages["members:1"]
    assert "followers of user star" in messages["followers:star"]
    assert "only for user ann" in messages["owner:ann"]


async def test_a_room_token_lets_its_user_join_whatever_the_rule(
    policy: Policy, store: FakeStore
) -> None:
    for room in ("members:1", "followers:star", "owner:ann"):
        name, namespace = policy.resolve(room)
        assert await policy.check_join("bob", name, namespace, room_token("bob", room)) is True
    assert store.lookups == 0
    # allowed by the rule itself: False (no token was needed)
    name, namespace = policy.resolve("open:1")
    assert await policy.check_join("bob", name, namespace, None) is False


@pytest.mark.parametrize(
    "token",
    [
        room_token("eve", "members:1"),  # another user's
        room_token("bob", "members:2"),  # another room's
        room_token("bob", "members:1", secret="t" * 32),  # not ours
        room_token("bob", "members:1", exp=int(time.time()) - 3600),  # expired
        "not a token",
    ],
    ids=["other-user", "other-room", "bad-signature", "expired", "garbage"],
)
async def test_a_bad_room_token_is_unauthorized_even_for_a_member(
    policy: Policy, store: FakeStore, token: str
) -> None:
    store.members.add(("members:1", "bob"))
    name, namespace = policy.resolve("members:1")
    with pytest.raises(CommandError) as refused:
        await policy.check_join("bob", name, namespace, token)
    assert refused.value.code == ErrorCode.UNAUTHORIZED


# send -------------------------------------------------------------------------------------


async def test_send_members_is_for_whoever_may_join(policy: Policy, store: FakeStore) -> None:
    store.members.add(("members:1", "ann"))
    assert await may_send(policy, "ann", "members:1")
    assert not await may_send(policy, "bob", "members:1")
    # a room token granted the join: no lookup
    before = store.lookups
    assert await may_send(policy, "bob", "members:1", granted=True)
    assert store.lookups == before


async def test_send_owner_is_for_the_owner_only_even_when_granted(policy: Policy) -> None:
    assert await may_send(policy, "star", "followers:star")
    assert not await may_send(policy, "fan", "followers:star", granted=True)


async def test_send_nobody_refuses_everyone(policy: Policy) -> None:
    assert not await may_send(policy, "ann", "owner:ann")
    assert not await may_send(policy, "ann", "owner:ann", granted=True)


async def test_send_anyone(policy: Policy) -> None:
    assert await may_send(policy, "whoever", "open:1")


async def test_other_combinations_of_join_and_send(store: FakeStore) -> None:
    combos: dict[str, NamespaceSettings] = {}
    joins: list[JoinPolicy] = ["members", "followers", "owner", "anyone"]
    sends: list[SendPolicy] = ["members", "owner", "nobody", "anyone"]
    for join in joins:
        for send in sends:
            combos[f"{join}_{send}"] = NamespaceSettings(join=join, send=send)
    policy = Policy(combos, cast(Store, store), Authenticator(AuthSettings(secret=SECRET)))
    store.follows.add(("fan", "star"))
    store.members.add(("members_members:star", "fan"))
    expected = {
        # (join rule, send rule): (the key's own user may send, fan may send, stranger may send)
        ("members", "members"): (False, True, False),
        ("followers", "members"): (True, True, False),
        ("owner", "members"): (True, False, False),
        ("anyone", "members"): (True, True, True),
    }
    for join in joins:
        for send in sends:
            room = f"{join}_{send}:star"
            got = tuple([await may_send(policy, u, room) for u in ("star", "fan", "stranger")])
            if send == "members":
                assert got == expected[(join, send)], room
            elif send == "owner":
                assert got == (True, False, False), room
            elif send == "nobody":
                assert got == (False, False, False), room
            else:
                assert got == (True, True, True), room


# read -------------------------------------------------------------------------------------


async def test_read_is_for_those_who_may_join(policy: Policy, store: FakeStore) -> None:
    store.members.add(("members:1", "ann"))
    store.follows.add(("fan", "star"))
    assert await may_read(policy, "ann", "members:1")
    assert not await may_read(policy, "bob", "members:1")
    assert await may_read(policy, "fan", "followers:star")
    assert await may_read(policy, "star", "followers:star")
    assert not await may_read(policy, "bob", "followers:star")
    assert await may_read(policy, "ann", "owner:ann")
    assert not await may_read(policy, "bob", "owner:ann")
    assert await may_read(policy, "bob", "open:1")
