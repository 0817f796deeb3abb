"""The subscriber's hot path: one loop that reads every subscriber socket, frames,
parses and counts.

A fan-out subscriber receives the same kind of frame over and over: a text frame
whose payload starts with a known prefix ending in the seq (realtime:
``{"push":"message","room":"R","seq":``; Socket.IO: ``42["message",{"room":"R","seq":``),
with the publisher's ``"t":`` (19 digits of ``time.time_ns()``) further on.

Once a subscriber has joined, its socket leaves the event loop's reading
(``pause_reading``; the transport still writes) and joins the process's
``Receiver``: one epoll set, itself watched by the event loop. When sockets are
readable the receiver reads each into one buffer (``os.readv``, no bytes object
per read) and, for each frame of that shape, reads the seq and the send time
straight from the bytes, adds the latency to the process's histogram with
integer arithmetic (``stats.bucket`` inlined) and checks the seq: all in locals,
no call and no copy per frame. Every other frame (pings, close, fragments,
several messages packed in one frame, a seq in the wrong place, other pushes) is
handed to the connection's generic path, and the protocol client hands message
pushes it finds back to ``CountingConnection.record``: slower, counted the same.

The read cost of the kernel dominates (a loopback read of one small frame costs
several µs of system time); under load, frames queue per socket and each read
carries several of them, which is where the generator gets its headroom.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import time

from .fastws import FastConnection
from .stats import Histogram, SeqCheck
from .wsframes import FrameError

NEVER = b"\xff"
"""A prefix no text payload starts with (not UTF-8)."""
SLOTS = 0xFFFF
MAX_BEFORE_START = 100_000
READ_SIZE = 1 << 18
_UNUSED = Histogram()


class SendTimes:
    """Send times by seq, for the room a process's subscribers share.

    Every subscriber gets the same frame for a seq, so the first one to see it
    reads the send time from the payload and the others find it here, keyed by
    (seq, payload length): a frame of another length (several messages packed,
    another encoding) is read in full. A ring of 65,536 slots by seq; ``heads``
    holds each slot's frame up to and including the seq's digits and comma, so the
    next expected frame is recognised with a single comparison. Times are µs after
    ``base`` (small integers are cheaper).
    """

    __slots__ = ("base", "heads", "keys", "times")

    def __init__(self) -> None:
        self.keys = [-1] * (SLOTS + 1)
        self.times = [0] * (SLOTS + 1)
        self.heads = [NEVER] * (SLOTS + 1)
        self.base = time.time_ns() // 1000


class CountingConnection(FastConnection):
    """A subscriber's connection: the generic path until it is adopted by a
    ``Receiver``, and the counting that path does for messages."""

    def __init__(self, url: str, headers: dict[str, str], subprotocols: tuple[str, ...]) -> None:
        super().__init__(url, headers, subprotocols)
        self.check = SeqCheck()
        self.latency = _UNUSED  # until start()
        self._before_start: list[tuple[int, int]] | None = []

    def start(self, latency: Histogram, last_seq: int) -> None:
        """Count from here on: seqs after ``last_seq``, latencies into ``latency``.

        Messages that arrived before (between the join reply and this call) are
        counted now, those at or below ``last_seq`` dropped.
        """
        self.latency = latency
        self.check.last = last_seq
        early, self._before_start = self._before_start, None
        for seq, micros in early or ():
            if seq > last_seq:
                latency.add(micros)
                self.check.add(seq)

    def record(self, seq: int, sent_ns: int) -> None:
        """One message found by the generic path."""
        micros = (time.time_ns() - sent_ns) // 1000
        if self._before_start is not None:
            if len(self._before_start) < MAX_BEFORE_START:
                self._before_start.append((seq, micros))
            return
        self.latency.add(micros)
        self.check.add(seq)

    def frame(self, first: int, payload: bytes) -> bool:
        """One whole frame the receiver did not count; False once the connection failed."""
        try:
            frame = self._reader.frame(first, payload)
        except FrameError as error:
            self.fail(str(error))
            return False
        if frame is not None:
            self._on_frame(*frame)
        return True

    def hand_over(self) -> tuple[int, bytes]:
        """Stop reading through the event loop: (socket's fd, bytes read but not parsed)."""
        transport = self._transport
        assert transport is not None
        transport.pause_reading()
        return transport.get_extra_info("socket").fileno(), self._reader.take_buffer()


class _Slot:
    __slots__ = ("check", "connection", "rest")

    def __init__(self, connection: CountingConnection, rest: bytes) -> None:
        self.connection = connection
        self.check = connection.check
        self.rest = rest


class Receiver:
    """Reads and counts the adopted subscriber sockets of one process, one room."""

    def __init__(
        self,
        latency: Histogram,
        sent: SendTimes,
        prefix: bytes | tuple[bytes, ...],
        skip: tuple[bytes, ...] = (),
    ) -> None:
        self.latency = latency
        self.sent = sent
        self.prefix = prefix
        """How a message frame begins, up to and including ``"seq":`` (or several ways)."""
        self.skip = skip or (NEVER,)
        """Text frames dropped unread (presence pushes, say)."""
        self._epoll = select.epoll()
        self._slots: dict[int, _Slot] = {}
        self._buffer = bytearray(READ_SIZE)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._interval = 0.0
        self.reads = 0
        """Reads so far: deliveries / reads says how many frames a read carries."""

    def attach(self, loop: asyncio.AbstractEventLoop, interval: float = 0.0) -> None:
        """Read whenever the loop sees a subscriber socket readable, at most once every
        ``interval`` seconds: waiting lets frames queue up per socket, so that one read
        takes several (fewer reads for the same frames, at up to ``interval`` of
        added latency)."""
        self._loop = loop
        self._interval = interval
        loop.add_reader(self._epoll.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        started = time.monotonic()
        self.ready()
        if self._interval > 0 and self._loop is not None:
            self._loop.remove_reader(self._epoll.fileno())
            pause = self._interval - (time.monotonic() - started)
            self._loop.call_later(max(pause, 0.0), self._resume)

    def _resume(self) -> None:
        if self._loop is not None and not self._epoll.closed:
            self._loop.add_reader(self._epoll.fileno(), self._on_readable)

    def adopt(self, connection: CountingConnection) -> None:
        """Read this (started) subscriber's socket from now on."""
        fd, rest = connection.hand_over()
        slot = _Slot(connection, rest)
        self._slots[fd] = slot
        self._epoll.register(fd, select.EPOLLIN)
        connection.closed.add_done_callback(lambda _: self._forget(fd, slot))

    def _forget(self, fd: int, slot: _Slot) -> None:
        if self._slots.get(fd) is slot:
            del self._slots[fd]
            if not self._epoll.closed:
                with contextlib.suppress(OSError):  # closed already: epoll forgot it
                    self._epoll.unregister(fd)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()

    def ready(self) -> None:
        try:
            events = self._epoll.poll(0)
        except InterruptedError:
            return
        now = time.time_ns()
        slots = self._slots
        buffer = self._buffer
        readv = os.readv
        prefix = self.prefix
        ignored = self.skip
        latency = self.latency
        counts = latency.counts
        peak = latency.maximum
        sent_times = self.sent
        keys = sent_times.keys
        times = sent_times.times
        heads = sent_times.heads
        now_us = now // 1000 - sent_times.base
        base_ns = sent_times.base * 1000
        counted = 0
        self.reads += len(events)
        buffers = (buffer,)
        for fd, _ in events:
            slot = slots.get(fd)
            if slot is None:
                continue
            try:
                end = readv(fd, buffers)
            except BlockingIOError:
                continue
            except OSError:
                end = 0
            if not end:  # the server closed the connection, or reset it
                slot.connection.abort()
                self._forget(fd, slot)
                continue
            data: bytes | bytearray = buffer
            if slot.rest:
                data = slot.rest + buffer[:end]
                end = len(data)
                slot.rest = b""
            check = slot.check
            last = check.last
            pos = 0
            while end - pos >= 2:
                length = data[pos + 1]
                if length < 126:
                    start = pos + 2
                elif length == 126:
                    if end - pos < 4:
                        break
                    length = (data[pos + 2] << 8) | data[pos + 3]
                    start = pos + 4
                elif length == 127:
                    if end - pos < 10:
                        break
                    length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                    start = pos + 10
                else:
                    slot.connection.fail("the server sent a masked frame")
                    pos = end
                    break
                stop = start + length
                if stop > end:
                    break
                first = data[pos]
                pos = stop
                expected = (last + 1) & SLOTS
                if (
                    first == 0x81
                    and keys[expected] == ((last + 1) << 32) | length
                    and data.startswith(heads[expected], start)
                ):
                    # The next seq, a frame some subscriber has read already.
                    last += 1
                    micros = now_us - times[expected]
                    if micros < 128:
                        counts[micros if micros > 0 else 0] += 1
                    else:
                        shift = micros.bit_length() - 7
                        counts[(shift << 6) + (micros >> shift)] += 1
                    if micros > peak:  # noqa: PLR1730 - no call in the hot loop
                        peak = micros
                    counted += 1
                    continue
                if first == 0x81 and data.startswith(prefix, start):
                    try:
                        # Once per seq and process (path above for the rest): a search is fine.
                        i = data.index(b'"seq":', start, stop) + 6
                        comma = data.index(b",", i, stop)
                        seq = int(data[i:comma])
                        slot_index = seq & SLOTS
                        if keys[slot_index] == (seq << 32) | length:
                            sent = times[slot_index]
                        else:
                            sent = (_send_time(data, i, stop) - base_ns) // 1000
                            keys[slot_index] = (seq << 32) | length
                            times[slot_index] = sent
                            heads[slot_index] = bytes(data[start : comma + 1])
                        micros = now_us - sent
                        if micros < 128:
                            counts[micros if micros > 0 else 0] += 1
                        else:
                            shift = micros.bit_length() - 7
                            counts[(shift << 6) + (micros >> shift)] += 1
                    except (ValueError, IndexError):
                        pass  # not the usual shape: the generic path below
                    else:
                        if micros > peak:  # noqa: PLR1730 - no call in the hot loop
                            peak = micros
                        if seq == last + 1:
                            last = seq
                        else:
                            check.last = last
                            check.add(seq)
                            last = check.last
                        counted += 1
                        continue
                elif first == 0x81 and data.startswith(ignored, start):
                    continue
                # The generic path may count too: hand it the state, then take it back.
                check.last = last
                latency.total += counted
                counted = 0
                latency.maximum = peak
                if not slot.connection.frame(first, bytes(data[start:stop])):
                    pos = end
                    break
                last = check.last
                peak = latency.maximum
            check.last = last
            if pos < end:
                slot.rest = bytes(data[pos:end])
        latency.total += counted
        latency.maximum = peak


def _send_time(data: bytes | bytearray, start: int, stop: int) -> int:
    """The publisher's ``"t":`` in a single-message payload (ValueError otherwise)."""
    k = data.index(b'"t":', start, stop) + 4
    # 19 digits then a comma, and no second message packed behind.
    if data[k + 19] != 44 or data.find(b"\n", start, stop) >= 0:
        raise ValueError
    return int(data[k : k + 19])
