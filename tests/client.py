"""A protocol client for tests, on the ``websockets`` library (a real WebSocket peer).

It matches replies to commands by id, queues pushes, and remembers how the server
closed. Frames that pack several messages are split as the contract says.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import msgpack
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

TIMEOUT = 10.0


class CommandFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Client:
    def __init__(self, ws: ClientConnection, encoding: str) -> None:
        self.ws = ws
        self.encoding = encoding
        self.pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames = 0
        # Replies that matched no command, or a command answered twice.
        self.violations: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        encoding: str = "json",
        subprotocols: list[str] | None = None,
        headers: dict[str, str] | None = None,
        max_size: int | None = 2**24,
        **options: Any,
    ) -> Client:
        protocols = subprotocols if subprotocols is not None else [f"rt1.{encoding}"]
        ws = await connect(
            url,
            subprotocols=protocols or None,  # type: ignore[arg-type]
            additional_headers=headers,
            max_size=max_size,
            open_timeout=TIMEOUT,
            close_timeout=2,
            ping_interval=None,
            **options,
        )
        return cls(ws, "msgpack" if ws.subprotocol == "rt1.msgpack" else "json")

    @classmethod
    async def connected(
        cls, url: str, token: str, *, rooms: list[Any] | None = None, **options: Any
    ) -> Client:
        """Open and send ``connect``; the reply is in ``.session``."""
        client = await cls.open(url, **options)
        args: dict[str, Any] = {"token": token}
        if rooms is not None:
            args["rooms"] = rooms
        try:
            client.session = await client.call("connect", **args)
        except BaseException:
            await client.close()  # the caller never gets it: close it here
            raise
        return client

    session: dict[str, Any]

    # Sending ---------------------------------------------------------------------------

    def encode(self, message: dict[str, Any]) -> bytes | str:
        if self.encoding == "msgpack":
            return msgpack.packb(message)
        return orjson.dumps(message).decode()

    async def send_raw(self, frame: bytes | str) -> None:
        await self.ws.send(frame)

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send a command with a fresh id; return the whole reply."""
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = future
        try:
            await self.ws.send(self.encode({"id": command_id, "op": op, **args}))
            return await asyncio.wait_for(future, TIMEOUT)
        finally:
            self._waiting.pop(command_id, None)
            if future.done() and not future.cancelled():
                future.exception()  # the reader may have failed it while we sent

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send a command; return its ``ok`` or raise ``CommandFailed``."""
        reply = await self.request(op, **args)
        if "error" in reply:
            raise CommandFailed(reply["error"]["code"], reply["error"]["message"])
        ok: dict[str, Any] = reply["ok"]
        return ok

    async def fire(self, op: str, **args: Any) -> None:
        """Send a command without an id (no reply expected)."""
        await self.ws.send(self.encode({"op": op, **args}))

    # Receiving -------------------------------------------------------------------------

    async def push(self, kind: str | None = None, *, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next push (of ``kind``, skipping others)."""
        async with asyncio.timeout(timeout):
            while True:
                push = await self.pushes.get()
                if kind is None or push.get("push") == kind:
                    return push

    async def push_where(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The next push of ``kind`` whose fields have the given values (skipping others)."""
        while True:
            push = await self.push(kind)
            if all(push.get(key) == value for key, value in fields.items()):
                return push

    async def pushes_of(
        self, kind: str, count: int, timeout: float = TIMEOUT
    ) -> list[dict[str, Any]]:
        return [await self.push(kind, timeout=timeout) for _ in range(count)]

    async def no_push(self, kind: str | None = None, wait: float = 0.3) -> None:
        """Assert that no push (of ``kind``) arrives within ``wait`` seconds."""
        try:
            push = await self.push(kind, timeout=wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected push {push}")

    async def closed(self, timeout: float = TIMEOUT) -> tuple[int | None, str]:
        """Wait for the server to close; returns (code, reason)."""
        async with asyncio.timeout(timeout):
            await self.ws.wait_closed()
        close = self.ws.protocol.close_rcvd
        return (close.code, close.reason) if close is not None else (None, "")

    async def close(self) -> None:
        """Close the connection (a no-op when it is closed already); raise what went wrong.

        Errors are the reader's (a frame it could not split) and replies that
        matched no command.
        """
        await self.ws.close()  # idempotent; ConnectionClosed is handled inside
        self._reader.cancel()
        await asyncio.wait([self._reader])
        if not self._reader.cancelled() and (error := self._reader.exception()) is not None:
            raise error
        assert not self.violations, f"replies to no command: {self.violations}"

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                self.frames += 1
                for message in self._split(frame):
                    if "id" in message and ("ok" in message or "error" in message):
                        future = self._waiting.get(message["id"])
                        if future is not None and not future.done():
                            future.set_result(message)
                        else:
                            self.violations.append(message)
                    else:
                        self.pushes.put_nowait(message)
        except ConnectionClosed:
            pass
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))

    def _split(self, frame: bytes | str) -> list[dict[str, Any]]:
        if isinstance(frame, str):
            return [orjson.loads(line) for line in frame.split("\n") if line.strip()]
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(frame)
        return list(unpacker)


async def close_all(*clients: Client) -> None:
    """Close every client, even when one fails, then raise the failures.

    A client the server closed already closes without error (``Client.close``); an
    error here is real: one client's is raised as it is, several as a group.
    """
    results = await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    errors = [result for result in results if isinstance(result, BaseException)]
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise BaseExceptionGroup(f"{len(errors)} of {len(clients)} clients failed to close", errors)
