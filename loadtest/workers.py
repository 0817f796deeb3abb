"""Generator processes: one object per process, its methods called from the parent.

The parent starts ``async with Pool(WorkerClass, args_per_process)``; each child builds
``WorkerClass(args)`` under uvloop and serves calls over a pipe: ``await
pool.call("connect", limit=60)`` runs ``rpc_connect()`` in every child at once
and returns their answers in process order. Calls run concurrently in a child (a
``snapshot`` answers while a ``connect`` is still under way), every call has a
timeout, and a child that dies or fails fails the call with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import resource
import traceback
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

import uvloop

Args = TypeVar("Args")


class WorkerError(RuntimeError):
    """A generator process failed a call, died, or did not answer in time."""


class Worker(Generic[Args]):
    """Base of the per-process objects: ``rpc_<name>`` methods are callable."""

    def __init__(self, args: Args) -> None:
        self.args = args


def raise_file_limit() -> int:
    """Open files allowed to this process: the soft limit raised to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _child(factory: Callable[[Any], Worker[Any]], args: object, pipe: Connection) -> None:
    raise_file_limit()
    uvloop.run(_serve(factory, args, pipe))


async def _serve(factory: Callable[[Any], Worker[Any]], args: object, pipe: Connection) -> None:
    worker = factory(args)
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()
    tasks: set[asyncio.Task[None]] = set()

    async def run(call_id: int, name: str, call_args: tuple[Any, ...]) -> None:
        try:
            method: Callable[..., Awaitable[Any]] = getattr(worker, f"rpc_{name}")
            reply: tuple[int, bool, Any] = (call_id, True, await method(*call_args))
        except Exception:  # noqa: BLE001 - the top of the call: reported to the parent
            reply = (call_id, False, traceback.format_exc())
        with contextlib.suppress(OSError):
            pipe.send(reply)

    def readable() -> None:
        try:
            while pipe.poll():
                call_id, name, call_args = pipe.recv()
                if name == "exit":
                    if not stopped.done():
                        stopped.set_result(None)
                    return
                task = asyncio.create_task(run(call_id, name, call_args))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (EOFError, OSError):  # the parent is gone
            if not stopped.done():
                stopped.set_result(None)

    loop.add_reader(pipe.fileno(), readable)
    await stopped
    loop.remove_reader(pipe.fileno())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    close = getattr(worker, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(close(), 10)


class Pool:
    """The child processes and the pipes to them, used from the parent's event loop."""

    def __init__(self, factory: Callable[[Any], Worker[Any]], args: Sequence[object]) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for one in args:
            parent, child = context.Pipe()
            process = context.Process(target=_child, args=(factory, one, child), daemon=True)
            process.start()
            child.close()
            self._pipes.append(parent)
            self.processes.append(process)
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._dead: set[int] = set()
        loop = asyncio.get_running_loop()
        for index, pipe in enumerate(self._pipes):
            loop.add_reader(pipe.fileno(), self._readable, index)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def __len__(self) -> int:
        return len(self._pipes)

    def _readable(self, index: int) -> None:
        pipe = self._pipes[index]
        try:
            while pipe.poll():
                call_id, ok, value = pipe.recv()
                _, future = self._waiting.pop(call_id, (index, None))
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(WorkerError(f"generator process {index}:\n{value}"))
        except (EOFError, OSError):
            self._died(index)

    def _died(self, index: int) -> None:
        self._dead.add(index)
        asyncio.get_running_loop().remove_reader(self._pipes[index].fileno())
        for call_id, (owner, future) in list(self._waiting.items()):
            if owner == index:
                del self._waiting[call_id]
                if not future.done():
                    future.set_exception(WorkerError(f"generator process {index} died"))

    def _send(self, index: int, name: str, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if index in self._dead:
            future.set_exception(WorkerError(f"generator process {index} died"))
            return future
        call_id = next(self._ids)
        self._waiting[call_id] = (index, future)
        try:
            self._pipes[index].send((call_id, name, args))
        except OSError:
            self._died(index)
        return future

    async def call(self, name: str, *args: Any, limit: float) -> list[Any]:
        """``rpc_<name>(*args)`` in every process, within ``limit`` seconds; their
        answers, in process order."""
        return await self.call_each(name, [args] * len(self._pipes), limit=limit)

    async def call_each(
        self, name: str, args: Sequence[tuple[Any, ...]], *, limit: float
    ) -> list[Any]:
        """``rpc_<name>(*args[i])`` in process i."""
        futures = [self._send(i, name, one) for i, one in enumerate(args)]
        try:
            async with asyncio.timeout(limit):
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            raise WorkerError(f"generator processes did not answer {name} in {limit}s") from None
        finally:
            for future in futures:
                future.cancel()

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, limit: float = 15.0) -> None:
        """Ask every process to close its connections and exit; kill the late ones."""
        loop = asyncio.get_running_loop()
        for index, pipe in enumerate(self._pipes):
            if index not in self._dead:
                with contextlib.suppress(OSError):
                    pipe.send((0, "exit", ()))
                loop.remove_reader(pipe.fileno())
        deadline = loop.time() + limit
        for process in self.processes:
            await asyncio.to_thread(process.join, max(deadline - loop.time(), 0))
            if process.is_alive():
                process.kill()
            process.join(1)
        for pipe in self._pipes:
            pipe.close()


FILES_RESERVED = 256
"""Descriptors a generator process keeps for itself (pipes, the loop, REST)."""


def processes_for(connections: int, wanted: int) -> int:
    """At least ``wanted`` processes, and enough that each stays under its file limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_process = max(hard - FILES_RESERVED, 1)
    return max(wanted, -(-connections // per_process))
