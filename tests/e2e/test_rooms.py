"""Rooms over real sockets: join rules, send, history, recovery, presence, typing, reads."""

from __future__ import annotations

import asyncio

import pytest

from tests.client import Client, CommandFailed, close_all
from tests.e2e.conftest import ServerFactory
from tests.server import ServerProcess, unique


async def swap_pair(server: ServerProcess, **options: object) -> tuple[str, Client, Client]:
    """A swap room with two members, both connected and joined."""
    room = unique("swap:")
    alice, bob = unique("alice"), unique("bob")
    for user in (alice, bob):
        status, _ = await server.rest("PUT", f"/api/v1/rooms/{room}/members/{user}")
        assert status == 204
    a = await Client.connected(server.ws_url, server.token(alice), **options)  # type: ignore[arg-type]
    b = await Client.connected(server.ws_url, server.token(bob), **options)  # type: ignore[arg-type]
    await a.call("join", room=room)
    await b.call("join", room=room)
    return room, a, b


async def test_connect_replies_with_user_session_and_the_user_room(server: ServerProcess) -> None:
    user = unique("u")
    client = await Client.connected(server.ws_url, server.token(user))
    session = client.session
    assert session["user"] == user
    assert isinstance(session["session"], str) and session["session"]
    assert session["ping_interval"] > 0
    assert [r["room"] for r in session["rooms"]] == [f"user:{user}"]
    await client.close()


async def test_members_chat_and_everyone_gets_each_message_once_in_order(
    server: ServerProcess,
) -> None:
    room, a, b = await swap_pair(server)
    sent = [
        await a.call("send", room=room, body={"text": f"m{i}"}, client_id=f"c{i}") for i in range(5)
    ]
    assert [s["seq"] for s in sent] == [1, 2, 3, 4, 5]
    assert all(s["room"] == room and isinstance(s["ts"], int) for s in sent)
    for client in (a, b):
        pushes = await client.pushes_of("message", 5)
        assert [p["seq"] for p in pushes] == [1, 2, 3, 4, 5]
        assert [p["body"]["text"] for p in pushes] == [f"m{i}" for i in range(5)]
        assert {p["user"] for p in pushes} == {a.session["user"]}
        assert [p["client_id"] for p in pushes] == [f"c{i}" for i in range(5)]
        await client.no_push("message")
    await close_all(a, b)


async def test_send_is_idempotent_by_client_id(server: ServerProcess) -> None:
    room, a, b = await swap_pair(server)
    first = await a.call("send", room=room, body="once", client_id="retry-1")
    again = await a.call("send", room=room, body="twice?", client_id="retry-1")
    assert again["seq"] == first["seq"]
    await b.push("message")
    await b.no_push("message")
    other = await b.call("send", room=room, body="mine", client_id="retry-1")
    assert other["seq"] == first["seq"] + 1  # another user's key is another message
    history = await a.call("history", room=room)
    assert [m["body"] for m in history["messages"]] == ["once", "mine"]
    await close_all(a, b)


async def test_join_rules_per_namespace(server: ServerProcess) -> None:
    outsider = unique("eve")
    owner = unique("owner")
    client = await Client.connected(server.ws_url, server.token(outsider))
    with pytest.raises(CommandFailed) as refused:
        await client.call("join", room=unique("swap:"))
    assert refused.value.code == "forbidden"
    with pytest.raises(CommandFailed) as refused:
        await client.call("join", room=f"user:{owner}")
    assert refused.value.code == "forbidden"
    with pytest.raises(CommandFailed) as refused:
        await client.call("join", room=f"followers:{owner}")
    assert refused.value.code == "forbidden"
    with pytest.raises(CommandFailed) as refused:
        await client.call("join", room="nowhere:1")
    assert refused.value.code == "not_found"
    with pytest.raises(CommandFailed) as refused:
        await client.call("join", room="Not A Room")
    assert refused.value.code == "bad_request"
    # a room token lets its user in without membership
    room = unique("swap:")
    joined = await client.call("join", room=room, token=server.token(outsider, room=room))
    assert joined["room"] == room and joined["seq"] == 0 and joined["presence"] == [outsider]
    with pytest.raises(CommandFailed) as refused:
        other_room = unique("swap:")
        await client.call("join", room=other_room, token=server.token(outsider, room=room))
    assert refused.value.code == "unauthorized"
    with pytest.raises(CommandFailed) as refused:
        await client.call("join", room=room, token=server.token("someone", room=room))
    assert refused.value.code == "unauthorized"
    await client.close()


async def test_followers_room_only_the_owner_sends(server: ServerProcess) -> None:
    owner, fan = unique("star"), unique("fan")
    status, _ = await server.rest("PUT", f"/api/v1/users/{fan}/following/{owner}")
    assert status == 204
    room = f"followers:{owner}"
    star = await Client.connected(server.ws_url, server.token(owner))
    follower = await Client.connected(server.ws_url, server.token(fan))
    await follower.call("join", room=room)
    await star.call("join", room=room)
    with pytest.raises(CommandFailed) as refused:
        await follower.call("send", room=room, body="me too")
    assert refused.value.code == "forbidden"
    await star.call("send", room=room, body={"status": "live"})
    push = await follower.push("message")
    assert push["room"] == room and push["user"] == owner and push["body"] == {"status": "live"}
    assert "presence" not in (await follower.call("join", room=room))
    await close_all(star, follower)


async def test_nobody_sends_to_a_user_room_over_websocket(server: ServerProcess) -> None:
    user = unique("u")
    client = await Client.connected(server.ws_url, server.token(user))
    with pytest.raises(CommandFailed) as refused:
        await client.call("send", room=f"user:{user}", body="x")
    assert refused.value.code == "forbidden"
    status, reply = await server.rest(
        "POST", f"/api/v1/rooms/user:{user}/messages", {"body": {"system": True}}
    )
    assert status == 201
    push = await client.push("message")
    assert push["user"] is None and push["body"] == {"system": True} and push["seq"] == reply["seq"]
    await client.close()


async def test_history_pages_both_ways(server: ServerProcess) -> None:
    room, a, b = await swap_pair(server)
    for i in range(1, 8):
        await a.call("send", room=room, body=i)
    latest = await b.call("history", room=room, limit=3)
    assert [m["seq"] for m in latest["messages"]] == [5, 6, 7] and latest["more"] is True
    assert latest["epoch"] == (await b.call("join", room=room))["epoch"]
    older = await b.call("history", room=room, before=5, limit=3)
    assert [m["seq"] for m in older["messages"]] == [2, 3, 4] and older["more"] is True
    oldest = await b.call("history", room=room, before=2, limit=3)
    assert [m["seq"] for m in oldest["messages"]] == [1] and oldest["more"] is False
    newer = await b.call("history", room=room, after=4, limit=2)
    assert [m["seq"] for m in newer["messages"]] == [5, 6] and newer["more"] is True
    newest = await b.call("history", room=room, after=5, limit=10)
    assert [m["seq"] for m in newest["messages"]] == [6, 7] and newest["more"] is False
    message = newest["messages"][0]
    assert message["room"] == room and message["user"] == a.session["user"]
    assert message["body"] == 6 and isinstance(message["ts"], int)
    outsider = await Client.connected(server.ws_url, server.token(unique("eve")))
    with pytest.raises(CommandFailed) as refused:
        await outsider.call("history", room=room)
    assert refused.value.code == "forbidden"
    await close_all(a, b, outsider)


async def test_join_with_since_recovers_what_was_missed(server: ServerProcess) -> None:
    room, a, b = await swap_pair(server)
    await a.call("send", room=room, body="seen")
    seen = await b.push("message")
    epoch = (await b.call("history", room=room))["epoch"]
    await b.close()
    for i in range(3):
        await a.call("send", room=room, body=f"missed {i}")
    b2 = await Client.connected(server.ws_url, server.token(b.session["user"]))
    rejoined = await b2.call("join", room=room, since=seen["seq"], epoch=epoch)
    assert rejoined["recovered"] is True
    assert rejoined["seq"] == 4 and rejoined["epoch"] == epoch
    assert [m["body"] for m in rejoined["missed"]] == ["missed 0", "missed 1", "missed 2"]
    await a.call("send", room=room, body="live")
    assert (await b2.push("message"))["seq"] == 5
    wrong_epoch = await b2.call("join", room=room, since=1, epoch="not-" + epoch)
    assert wrong_epoch["recovered"] is False and wrong_epoch["missed"] == []
    beyond = await b2.call("join", room=room, since=99, epoch=epoch)
    assert beyond["recovered"] is False and beyond["missed"] == []
    await close_all(a, b2)


async def test_connect_joins_rooms_with_recovery(server: ServerProcess) -> None:
    room, a, b = await swap_pair(server)
    await a.call("send", room=room, body=1)
    epoch = (await a.call("history", room=room))["epoch"]
    user = b.session["user"]
    await b.close()
    await a.call("send", room=room, body=2)
    forbidden_room = unique("swap:")
    b2 = await Client.connected(
        server.ws_url,
        server.token(user),
        rooms=[{"room": room, "since": 1, "epoch": epoch}, forbidden_room],
    )
    rooms = {r["room"]: r for r in b2.session["rooms"]}
    assert rooms[room]["recovered"] is True and [m["body"] for m in rooms[room]["missed"]] == [2]
    assert rooms[forbidden_room]["error"]["code"] == "forbidden"
    assert f"user:{user}" in rooms
    await close_all(a, b2)


async def test_presence_join_and_leave(server: ServerProcess) -> None:
    room, a, b = await swap_pair(server)
    alice, bob = a.session["user"], b.session["user"]
    assert sorted((await a.call("presence", room=room))["users"]) == sorted([alice, bob])
    status, body = await server.rest("GET", f"/api/v1/rooms/{room}/presence")
    assert status == 200 and sorted(body["users"]) == sorted([alice, bob])
    joined = await a.push_where("presence", user=bob)
    assert joined == {"push": "presence", "room": room, "user": bob, "event": "join"}
    # a second connection of bob does not announce bob again
    b2 = await Client.connected(server.ws_url, server.token(bob))
    await b2.call("join", room=room)
    await b2.close()
    await b.call("leave", room=room)
    left = await a.push_where("presence", user=bob)
    assert left == {"push": "presence", "room": room, "user": bob, "event": "leave"}
    assert (await a.call("presence", room=room))["users"] == [alice]
    await close_all(a, b)


async def test_presence_leave_when_the_socket_drops(server: ServerProcess) -> None:
    _, a, b = await swap_pair(server)
    await a.push_where("presence", user=b.session["user"])
    await b.ws.close()
    left = await a.push_where("presence", user=b.session["user"], event="leave")
    assert left["event"] == "leave" and left["user"] == b.session["user"]
    await a.close()


async def test_typing_reaches_others_not_the_typist(server: ServerProcess) -> None:
    room, a, b = await swap_pair(server)
    await a.call("typing", room=room, active=True)
    push = await b.push("typing")
    assert push == {"push": "typing", "room": room, "user": a.session["user"], "active": True}
    await a.no_push("typing")
    await a.call("typing", room=room, active=False)
    assert (await b.push("typing"))["active"] is False
    await close_all(a, b)


async def test_read_marks_never_move_back(server: ServerProcess) -> None:
    room, a, b = await swap_pair(server)
    for i in range(3):
        await a.call("send", room=room, body=i)
    assert await b.call("read", room=room, seq=2) == {"room": room, "seq": 2}
    push = await a.push("read")
    assert push == {"push": "read", "room": room, "user": b.session["user"], "seq": 2}
    assert (await b.call("read", room=room, seq=1))["seq"] == 2
    assert (await b.call("read", room=room, seq=3))["seq"] == 3
    await close_all(a, b)


async def test_leave_stops_pushes(server: ServerProcess) -> None:
    room, a, b = await swap_pair(server)
    assert await b.call("leave", room=room) == {}
    await a.call("send", room=room, body="gone")
    await b.no_push("message")
    await close_all(a, b)


async def test_json_and_msgpack_clients_share_a_room(server: ServerProcess) -> None:
    room, a, b = await swap_pair(server)
    packed = await Client.connected(
        server.ws_url, server.token(b.session["user"]), encoding="msgpack"
    )
    assert packed.encoding == "msgpack"
    await packed.call("join", room=room)
    body = {"text": "héllo", "n": [1, 2.5, None, True]}
    await packed.call("send", room=room, body=body)
    for client in (a, b, packed):
        assert (await client.push("message"))["body"] == body
    await close_all(a, b, packed)


async def test_membership_changes_join_and_leave_live_connections(
    server: ServerProcess,
) -> None:
    room = unique("swap:")
    user = unique("carol")
    client = await Client.connected(server.ws_url, server.token(user))
    await server.rest("PUT", f"/api/v1/rooms/{room}/members/{user}")
    joined = await client.push("joined")
    assert joined["room"] == room and joined["reason"] == "member_added"
    assert joined["seq"] == 0 and "epoch" in joined
    status, body = await server.rest("GET", f"/api/v1/rooms/{room}/members")
    assert status == 200 and body == {"users": [user]}
    await server.rest("POST", f"/api/v1/rooms/{room}/messages", {"body": "hi", "user": "sys"})
    assert (await client.push("message"))["body"] == "hi"
    status, _ = await server.rest("DELETE", f"/api/v1/rooms/{room}/members/{user}")
    assert status == 204
    left = await client.push("left")
    assert left == {"push": "left", "room": room, "reason": "member_removed"}
    await server.rest("POST", f"/api/v1/rooms/{room}/messages", {"body": "after"})
    await client.no_push("message")
    with pytest.raises(CommandFailed):
        await client.call("join", room=room)
    await client.close()


async def test_follow_and_unfollow_join_and_leave_the_followers_room(
    server: ServerProcess,
) -> None:
    star, fan = unique("star"), unique("fan")
    client = await Client.connected(server.ws_url, server.token(fan))
    await server.rest("PUT", f"/api/v1/users/{fan}/following/{star}")
    joined = await client.push("joined")
    assert joined["room"] == f"followers:{star}" and joined["reason"] == "followed"
    await server.rest("DELETE", f"/api/v1/users/{fan}/following/{star}")
    left = await client.push("left")
    assert left == {"push": "left", "room": f"followers:{star}", "reason": "unfollowed"}
    await client.close()


async def test_concurrent_senders_in_one_room_give_gapless_ordered_seqs(
    server: ServerProcess,
) -> None:
    room, a, b = await swap_pair(server)
    count = 60

    async def burst(client: Client, tag: str) -> list[int]:
        replies = await asyncio.gather(
            *(client.call("send", room=room, body=f"{tag}{i}") for i in range(count))
        )
        return [r["seq"] for r in replies]

    seqs_a, seqs_b = await asyncio.gather(burst(a, "a"), burst(b, "b"))
    assert sorted(seqs_a + seqs_b) == list(range(1, 2 * count + 1))
    for client in (a, b):
        pushes = await client.pushes_of("message", 2 * count)
        assert [p["seq"] for p in pushes] == list(range(1, 2 * count + 1))
    await close_all(a, b)


async def test_typing_turns_itself_off_and_stops_when_the_typist_leaves(
    make_server: ServerFactory,
) -> None:
    server = make_server(env={"REALTIME_DELIVERY_TYPING_TIMEOUT": "0.5"})
    room, a, b = await swap_pair(server)
    await a.call("typing", room=room, active=True)
    assert (await b.push("typing"))["active"] is True
    expired = await b.push("typing", timeout=3)
    assert expired == {"push": "typing", "room": room, "user": a.session["user"], "active": False}
    await a.call("typing", room=room, active=True)
    assert (await b.push("typing"))["active"] is True
    await a.call("leave", room=room)
    assert (await b.push("typing", timeout=0.4))["active"] is False  # before the timeout
    await close_all(a, b)


async def test_ping_answers_empty(server: ServerProcess) -> None:
    client = await Client.connected(server.ws_url, server.token(unique("u")))
    assert await client.call("ping") == {}
    await client.fire("ping")
    await client.no_push()
    await client.close()
