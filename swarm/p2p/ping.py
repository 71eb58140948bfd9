"""Our own ping (trio side): 8-byte echoes over one kept-open stream per peer.

libp2p's ping reports whole milliseconds, too coarse for routing on loopback or a LAN, and a
new stream per ping measures stream negotiation rather than the path. The time is taken in the
trio thread, so it excludes the hop to asyncio.
"""

from __future__ import annotations

import contextlib
import os
import time

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from swarm.p2p.errors import P2PError

PING_PROTOCOL = "/swarmgate/ping/1"
PING_SIZE = 8


async def _read_exactly(stream: INetStream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise P2PError("ping stream ended")
        buf += chunk
    return buf


class PingService:
    """Answers pings and measures round trips; all methods run in the trio thread."""

    def __init__(self, host: IHost) -> None:
        self.host = host
        self._streams: dict[ID, INetStream] = {}
        self._locks: dict[ID, trio.Lock] = {}

    async def handle(self, stream: INetStream) -> None:
        """Inbound handler: echo until the stream ends. Never raises (a raising handler
        breaks libp2p's connection)."""
        try:
            while True:
                data = await _read_exactly(stream, PING_SIZE)
                await stream.write(data)
        except Exception:
            with contextlib.suppress(Exception):
                await stream.reset()

    async def _once(self, peer: ID) -> float:
        stream = self._streams.get(peer)
        if stream is None:
            stream = await self.host.new_stream(peer, [TProtocol(PING_PROTOCOL)])
            self._streams[peer] = stream
        payload = os.urandom(PING_SIZE)
        t0 = time.perf_counter()
        await stream.write(payload)
        echo = await _read_exactly(stream, PING_SIZE)
        rtt = time.perf_counter() - t0
        if echo != payload:
            raise P2PError("ping echo mismatch")
        return rtt

    async def ping(self, peer: ID) -> float:
        """Seconds for one round trip; reopens the stream once if the kept one broke."""
        lock = self._locks.setdefault(peer, trio.Lock())
        async with lock:
            try:
                return await self._once(peer)
            except trio.Cancelled:
                await self._drop(peer)
                raise
            except Exception:
                await self._drop(peer)
            try:
                return await self._once(peer)
            except BaseException:
                await self._drop(peer)
                raise

    async def _drop(self, peer: ID) -> None:
        stream = self._streams.pop(peer, None)
        if stream is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await stream.reset()

    async def close(self) -> None:
        for peer in list(self._streams):
            await self._drop(peer)
