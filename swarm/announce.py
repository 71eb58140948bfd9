"""Keeping a peer's records in the DHT: the announcer loop.

Every `interval` (~30 s) it republishes the peer's `PeerRecord` stamped `ts = now`,
`expires = now + ttl` (~90 s), so a peer that dies drops out of every swarm view within `ttl`.
It provides the per-block keys of its span at start, whenever the span changes, and every
`reprovide_interval` (provider records cannot be withdrawn: they are hints, the records decide),
and it publishes the model's `ModelRecord` if given one. `stop()` publishes `state=offline`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Protocol

from swarm.records import (
    DEFAULT_TTL,
    OFFLINE,
    ONLINE,
    REPUBLISH_INTERVAL,
    Clock,
    ModelRecord,
    PeerRecord,
    block_key,
)
from swarm.wire import WireError

log = logging.getLogger(__name__)

REPROVIDE_INTERVAL = 600.0
PROVIDE_CONCURRENCY = 4


class _DHT(Protocol):
    peer_id: str
    listen_maddrs: list[str]

    async def put(self, key: str, value: bytes) -> None: ...

    async def provide(self, key: str) -> bool: ...


StatusFn = Callable[[], PeerRecord]
"""Returns the peer's current record; the announcer fills peer_id, addrs (when empty), state,
ts and expires."""


class Announcer:
    def __init__(
        self,
        node: _DHT,
        status: StatusFn,
        model: ModelRecord | None = None,
        *,
        interval: float = REPUBLISH_INTERVAL,
        ttl: float = DEFAULT_TTL,
        reprovide_interval: float = REPROVIDE_INTERVAL,
        clock: Clock = time.time,
    ) -> None:
        self.node = node
        self.status = status
        self.model = model
        self.interval = interval
        self.ttl = ttl
        self.reprovide_interval = reprovide_interval
        self.clock = clock
        self.last: PeerRecord | None = None
        self._provided: tuple[str, int, int] | None = None
        self._provided_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def current(self, state: str = ONLINE) -> PeerRecord:
        rec = self.status()
        addrs = rec.addrs or tuple(self.node.listen_maddrs)
        now = self.clock()
        rec = dataclasses.replace(rec, peer_id=self.node.peer_id, addrs=tuple(addrs))
        # strictly increasing ts, so the newest record always wins even within one tick
        if self.last is not None and now <= self.last.ts:
            now = self.last.ts + 1e-3
        return rec.stamped(now, self.ttl, state)

    async def announce(self, state: str = ONLINE) -> PeerRecord:
        """Publish the record now (and the model record, and provider keys when due)."""
        rec = self.current(state)
        await self.node.put(rec.key, rec.to_bytes())
        self.last = rec
        if state == ONLINE:
            if self.model is not None:
                await self.node.put(self.model.key, self.model.to_bytes())
            await self._provide(rec)
        return rec

    async def _provide(self, rec: PeerRecord) -> None:
        span = (rec.model_hash, rec.start, rec.end)
        due = self.clock() - self._provided_at >= self.reprovide_interval
        if span == self._provided and not due:
            return
        sem = asyncio.Semaphore(PROVIDE_CONCURRENCY)

        async def one(block: int) -> None:
            async with sem:
                await self.node.provide(block_key(rec.model_hash, block))

        await asyncio.gather(*(one(b) for b in rec.blocks))
        self._provided, self._provided_at = span, self.clock()

    async def start(self) -> PeerRecord:
        """Announce once (errors propagate), then keep announcing in the background."""
        rec = await self.announce()
        self._task = asyncio.create_task(self._loop(), name="swarm-announcer")
        return rec

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.announce()
            except WireError as e:
                log.warning("announce failed: %s", e)

    async def stop(self, offline: bool = True) -> None:
        """Stop republishing; publish `state=offline` unless told not to."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if offline and self.last is not None:
            try:
                await self.announce(OFFLINE)
            except WireError as e:
                log.info("could not publish offline state: %s", e)
