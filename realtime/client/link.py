"""One WebSocket connection: commands out, replies matched by id, pushes handed on.

A ``Link`` lives as long as its socket. Its reader task decodes frames (a frame may
pack several messages, as the protocol allows), resolves the request a reply
answers, and awaits ``on_push`` for each push, in the order they arrived: while
``on_push`` waits, the socket is not read (TCP backpressure).

A request may pass ``on_reply``: it runs in the reader, before the next message
is looked at, so state that later pushes depend on (a join's seq and epoch) is in
place before they are handled.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from protocol.codec import JSON, MSGPACK
from protocol.errors import FrameError

from .events import ClientError, RequestTimeout, ServerError

log = logging.getLogger(__name__)

Reply = dict[str, Any]
OnReply = Callable[[Reply], None]
OnPush = Callable[[dict[str, Any]], Awaitable[None]]


class LinkClosed(ClientError):
    """The connection a request was sent on closed before the answer came."""


class Link:
    def __init__(self, ws: ClientConnection, on_push: OnPush) -> None:
        self._ws = ws
        self._binary = ws.subprotocol == MSGPACK.subprotocol
        self._codec = MSGPACK if self._binary else JSON
        self._on_push = on_push
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[asyncio.Future[Reply], OnReply | None, str]] = {}
        self._done = False
        self._reader = asyncio.create_task(self._read(), name="realtime-client-reader")

    @property
    def open(self) -> bool:
        return not self._done

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    @property
    def close_reason(self) -> str:
        return self._ws.close_reason or ""

    async def request(
        self,
        op: str,
        args: dict[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109
        on_reply: OnReply | None = None,
    ) -> Reply:
        """Send a command and return its ``ok``; raises ``ServerError`` for an error reply."""
        if self._done:
            raise LinkClosed(f"{op}: the connection is closed")
        command_id = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = (future, on_reply, op)
        command = {"id": command_id, "op": op}
        command.update({k: v for k, v in args.items() if v is not None})
        try:
            async with asyncio.timeout(timeout):
                await self._ws.send(self._encode(command))
                return await future
        except TimeoutError:
            raise RequestTimeout(f"{op}: no answer within {timeout:g}s") from None
        except ConnectionClosed:
            raise LinkClosed(f"{op}: the connection closed") from None
        finally:
            self._waiting.pop(command_id, None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._reader)

    async def close(self) -> None:
        """Close the socket (if still open) and wait for the reader to finish."""
        try:
            await self._ws.close()
        finally:
            if not self._reader.done():
                self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    def _encode(self, command: dict[str, Any]) -> str | bytes:
        if self._binary:
            packed: bytes = msgpack.packb(command, use_bin_type=True)
            return packed
        return orjson.dumps(command).decode()

    async def _read(self) -> None:
        try:
            async for data in self._ws:
                for message in self._codec.decode(data):
                    if not isinstance(message, dict):
                        log.warning("ignoring a message that is not a map: %.80r", message)
                    elif message.get("push") is not None:  # a notification push has an id
                        await self._on_push(message)
                    elif message.get("id") is not None:
                        self._reply(message)
        except ConnectionClosed:
            pass
        except FrameError as error:
            log.warning("closing: the server sent a bad frame: %s", error)
            await self._ws.close(1002, "bad frame")
        except Exception:
            log.exception("closing: the connection's reader failed")
            await self._ws.close(1011, "client error")
        finally:
            self._done = True
            for future, _, op in self._waiting.values():
                if not future.done():
                    future.set_exception(LinkClosed(f"{op}: the connection closed"))

    def _reply(self, message: dict[str, Any]) -> None:
        waiting = self._waiting.get(message["id"])
        if waiting is None:
            return  # the request timed out meanwhile
        future, on_reply, op = waiting
        if future.done():
            return
        ok = message.get("ok")
        if isinstance(ok, dict):
            if on_reply is not None:
                on_reply(ok)
            future.set_result(ok)
            return
        error = message.get("error")
        fields = error if isinstance(error, dict) else {}
        future.set_exception(
            ServerError(
                str(fields.get("code", "internal")),
                str(fields.get("message", "")),
                op,
                {k: v for k, v in fields.items() if k not in ("code", "message")},
            )
        )
