"""A framed libp2p stream, split across the two threads.

`StreamPump` is the trio half: it owns the libp2p stream, reads frames into the asyncio side
(with a small credit window, so a slow consumer pushes back through Yamux flow control) and
writes the buffers of outgoing frames. `FrameStream` is the asyncio half that applications use;
its receiving side (`ReceivedFrames`) is shared with lanes (`swarm.lanes.LaneStream`).

A remote reset reaches the reader as an end-of-stream with the Yamux stream marked reset; the
pump reports it as `StreamResetError` and calls `on_reset`, which for inbound streams cancels the
asyncio handler task. A malformed or oversized frame gets an error frame back and a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import torch
import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamReset

from swarm.p2p.bridge import TrioThread, describe
from swarm.p2p.errors import NodeStoppedError, StreamClosedError, StreamResetError
from swarm.wire import (
    DEFAULT_LIMITS,
    Frame,
    WireError,
    WireLimits,
    encode_frame,
    encode_frame_bytes,
    read_frame,
)

log = logging.getLogger(__name__)

Item = Frame | WireError
CREDITS = 2  # frames read ahead of the consumer
_ERROR_FRAME_TIMEOUT = 2.0
_CONTROL_TIMEOUT = 5.0
WRITE_PIECE = 64 * 1024 - 12  # the payload of one Yamux frame
READ_AHEAD = 64 * 1024


class _RemoteReset(Exception):
    pass


def _was_reset(net_stream: INetStream) -> bool:
    muxed = getattr(net_stream, "muxed_stream", None)
    return bool(getattr(muxed, "reset_received", False))


class StreamPump:
    """The trio half of a stream: every method runs in the trio thread."""

    def __init__(self, net_stream: INetStream, limits: WireLimits = DEFAULT_LIMITS) -> None:
        self.net_stream = net_stream
        self.limits = limits
        self.remote_peer_id = str(net_stream.muxed_conn.peer_id)
        self.deliver: Callable[[Item], None] = lambda item: None
        self.on_reset: Callable[[], None] = lambda: None
        self._send_lock = trio.Lock()
        self._credit = trio.Semaphore(CREDITS)
        self._reader_scope = trio.CancelScope()
        self._finished = False
        self._buffer = bytearray()
        self.reader_done = trio.Event()

    def release_credit(self) -> None:
        if not self._finished:
            self._credit.release()

    async def _read_raw(self, n: int) -> bytes:
        try:
            data: bytes = await self.net_stream.read(n)
        except StreamEOF:
            if _was_reset(self.net_stream):
                raise _RemoteReset("stream reset by the remote side") from None
            return b""
        except StreamReset:
            raise _RemoteReset("stream reset by the remote side") from None
        return data

    async def _read_some(self, n: int) -> bytes:
        """Up to n bytes. Reads ahead: each libp2p read costs a lot of Python, so a small
        frame (prefix, header and payload) should take one read, not three."""
        if not self._buffer:
            data = await self._read_raw(max(n, READ_AHEAD))
            if len(data) <= n:
                return data
            self._buffer += data
        chunk = bytes(self._buffer[:n])
        del self._buffer[:n]
        return chunk

    async def read_loop(self) -> None:
        """Read frames until the stream ends; deliver each, then one final error."""
        end: WireError = StreamClosedError("stream closed locally")
        failed = False
        try:
            with self._reader_scope:
                while True:
                    await self._credit.acquire()
                    frame = await read_frame(self._read_some, self.limits)
                    if frame is None:
                        end = StreamClosedError()
                        break
                    self.deliver(frame)
        except _RemoteReset as e:
            end, failed = StreamResetError(str(e)), True
        except WireError as e:  # the remote broke framing or limits
            end, failed = e, True
            await self._refuse(e)
        except Exception as e:
            end, failed = StreamResetError(describe(e)), True
        finally:
            self._finished = True
            self.deliver(end)
            self.reader_done.set()
        if failed:
            self.on_reset()

    async def _refuse(self, error: WireError) -> None:
        """Tell the remote why, then reset. The reset comes only after the remote has had
        the chance to read the error frame (a reset arriving first would discard it), while
        what it still sends is read and dropped (at most one frame's worth of bytes)."""
        with trio.move_on_after(_ERROR_FRAME_TIMEOUT):
            await self._write_parts([encode_frame_bytes(error.to_header())])
            with contextlib.suppress(Exception):
                await self.net_stream.close()
            budget = self.limits.max_frame_bytes
            with contextlib.suppress(Exception):
                while budget > 0:
                    chunk = await self.net_stream.read(min(budget, 1 << 16))
                    if not chunk:
                        break
                    budget -= len(chunk)
        await self.reset()

    async def _write_parts(self, parts: Sequence[bytes | memoryview]) -> None:
        """Write in pieces of one Yamux frame, each shielded from cancellation.

        py-libp2p is not cancel-safe inside a write: a Yamux frame bigger than one Noise
        message goes out as several socket writes, and a cancellation between them leaves a
        partial frame that breaks the whole connection. So cancellation is only honoured
        between pieces, and then the stream is reset.
        """
        async with self._send_lock:
            try:
                for part in parts:
                    view = memoryview(part).cast("B")
                    for offset in range(0, max(len(view), 1), WRITE_PIECE):
                        await trio.lowlevel.checkpoint_if_cancelled()
                        with trio.CancelScope(shield=True):
                            await self.net_stream.write(view[offset : offset + WRITE_PIECE])  # type: ignore[arg-type]
            except StreamClosed:
                raise StreamClosedError("stream is closed for writing") from None
            except trio.Cancelled:
                await self.reset()  # a frame may be half written: the stream is unusable
                raise
            except Exception as e:
                if _was_reset(self.net_stream):
                    raise StreamResetError("stream reset") from None
                raise StreamResetError(describe(e)) from None

    async def write(self, parts: Sequence[bytes | memoryview]) -> None:
        await self._write_parts(parts)

    async def close(self) -> None:
        """Stop reading and half-close (our end sends FIN)."""
        self._reader_scope.cancel()
        with trio.move_on_after(_CONTROL_TIMEOUT) as scope:
            scope.shield = True
            async with self._send_lock:
                with contextlib.suppress(Exception):
                    await self.net_stream.close()

    async def reset(self) -> None:
        self._reader_scope.cancel()
        with trio.move_on_after(_CONTROL_TIMEOUT) as scope:
            scope.shield = True
            with contextlib.suppress(Exception):
                await self.net_stream.reset()


class ReceivedFrames:
    """The receiving half both kinds of framed stream share (`FrameStream` here and
    `swarm.lanes.LaneStream`): frames queue up, then one final error; `recv` hands out the
    frames and then raises that error, every time it is called again."""

    def __init__(self, queued: int = 0) -> None:
        self._queue: asyncio.Queue[Item] = asyncio.Queue(queued)
        self._end: WireError | None = None
        self._closed = False

    def _frame_taken(self) -> None:
        """Called after `recv` handed out a frame (flow control hooks in here)."""

    async def recv(self) -> Frame:
        if self._end is not None and self._queue.empty():
            raise self._end.with_traceback(None)
        item = await self._queue.get()
        if isinstance(item, Frame):
            self._frame_taken()
            return item
        self._end = item
        raise item.with_traceback(None)

    def __aiter__(self) -> ReceivedFrames:
        return self

    async def __anext__(self) -> Frame:
        try:
            return await self.recv()
        except StreamClosedError:
            raise StopAsyncIteration from None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def has_unread(self) -> bool:
        """Has a frame or the stream's end arrived that `recv` has not returned yet?"""
        return self._end is not None or not self._queue.empty()

    async def close(self) -> None:
        raise NotImplementedError

    async def reset(self) -> None:
        raise NotImplementedError

    def reset_nowait(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close on success, reset on failure (at once when cancelled)."""
        if exc_type is None:
            await self.close()
        elif issubclass(exc_type, asyncio.CancelledError):
            self.reset_nowait()
        else:
            await self.reset()


class FrameStream(ReceivedFrames):
    """The asyncio half of a framed stream: what handlers and callers use.

    `send` and `recv` may run concurrently (one sender at a time is enforced on the trio
    side). `recv` raises `StreamClosedError` after the remote closed, `StreamResetError`
    after a reset, or the `WireError` of a malformed frame. Use as an async context manager
    to close on success and reset on failure.
    """

    def __init__(
        self,
        bridge: TrioThread,
        loop: asyncio.AbstractEventLoop,
        remote_peer_id: str,
        protocol: str,
        limits: WireLimits = DEFAULT_LIMITS,
    ) -> None:
        self._bridge = bridge
        self._loop = loop
        self.remote_peer_id = remote_peer_id
        self.protocol = protocol
        self.limits = limits
        super().__init__()
        self._pump: StreamPump | None = None
        self._handler_task: asyncio.Task[None] | None = None

    # -- wiring (called while setting the stream up) -------------------------------------

    def attach(self, pump: StreamPump) -> None:
        """Connect the trio half; called in the trio thread before its reader starts."""
        self._pump = pump
        self.remote_peer_id = pump.remote_peer_id
        pump.deliver = self._deliver_threadsafe

    def _deliver_threadsafe(self, item: Item) -> None:
        with contextlib.suppress(RuntimeError):  # event loop closed: nobody listens
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _cancel_handler(self) -> None:
        if self._handler_task is not None and not self._handler_task.done():
            self._handler_task.cancel()

    @property
    def pump(self) -> StreamPump:
        if self._pump is None:
            raise NodeStoppedError("stream is not attached")
        return self._pump

    # -- API ------------------------------------------------------------------------------

    async def send(self, header: Mapping[str, Any], tensors: Sequence[torch.Tensor] = ()) -> None:
        if self._closed:
            raise StreamClosedError("stream closed locally")
        parts = encode_frame(header, tensors, self.limits)
        await self._bridge.call(self.pump.write, parts)

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are, unframed (fuzzing and protocol tests only)."""
        if self._closed:
            raise StreamClosedError("stream closed locally")
        await self._bridge.call(self.pump.write, [data])

    def _frame_taken(self) -> None:
        self._bridge.run_sync_soon(self.pump.release_credit)

    async def close(self) -> None:
        """Half-close and stop receiving; the stream is finished for us. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._pump is not None:
            with contextlib.suppress(WireError):
                await self._bridge.call(self._pump.close)

    async def reset(self) -> None:
        """Abort the stream in both directions (the remote's handler gets cancelled)."""
        self._closed = True
        if self._pump is not None:
            with contextlib.suppress(WireError):
                await self._bridge.call(self._pump.reset)

    def reset_nowait(self) -> None:
        """Reset without waiting (for cancellation paths)."""
        self._closed = True
        if self._pump is not None:
            self._bridge.spawn(self._pump.reset)

    def __repr__(self) -> str:
        return f"FrameStream({self.protocol} with {self.remote_peer_id[-8:]})"
