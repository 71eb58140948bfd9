"""Pushed inputs: a session's step whose rows come from the previous peer, not from its client.

With peer-to-peer push the client sends a step to every hop of its chain at once: the first
hop gets the rows and the address of the next hop, each later hop gets a step that says its
rows will be pushed (`pushed: true`). The previous peer computes and sends its output straight
here as a `push` op; this box pairs it with the waiting step, whichever of the two arrives
first. A client whose previous hop failed cancels the wait (or pushes the rows itself).

Bounds: at most `MAX_PUSHES` unpaired entries holding at most `MAX_PUSH_BYTES` of rows, each
kept at most `PUSH_TTL` seconds; a step waits at most `PUSH_WAIT` seconds for its rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import torch

from swarm.p2p import P2PError
from swarm.protocol import PushTarget, op_header
from swarm.rounds import Channels
from swarm.wire import BAD_REQUEST, BUSY, WireError

log = logging.getLogger("swarmgate.push")

MAX_PUSHES = 4096
MAX_PUSH_BYTES = 512 << 20  # rows delivered and not yet taken
PUSH_TTL = 60.0  # seconds an unpaired push or wait is kept
PUSH_WAIT = 60.0  # seconds a pushed step waits for its rows (the previous hop computes meanwhile)
CANCELLED = "cancelled"


@dataclass
class _Entry:
    position: int | None  # None: made by a cancel (matches any step)
    shape: tuple[int, int]
    rows: asyncio.Future[tuple[torch.Tensor, bool]]  # (rows [batch, n, h], known finite)
    since: float = field(default_factory=time.monotonic)
    nbytes: int = 0  # of the delivered rows, until taken


@dataclass
class PushBox:
    """Pushed rows keyed by (session, seq): delivered by the previous hop, taken by the step."""

    entries: dict[tuple[str, int], _Entry] = field(default_factory=dict)
    held_bytes: int = 0  # of rows delivered and not taken yet

    def _drop(self, key: tuple[str, int]) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None and entry.nbytes:
            self.held_bytes -= entry.nbytes
            entry.nbytes = 0

    def _prune(self) -> None:
        now = time.monotonic()
        for key, entry in list(self.entries.items()):
            if now - entry.since > PUSH_TTL:
                self._drop(key)
                if not entry.rows.done():
                    entry.rows.set_exception(WireError(CANCELLED, "the pushed rows never came"))

    def _entry(self, sid: str, seq: int, position: int, shape: tuple[int, int]) -> _Entry:
        key = (sid, seq)
        entry = self.entries.get(key)
        if entry is None:
            self._prune()
            if len(self.entries) >= MAX_PUSHES:
                raise WireError(BUSY, f"more than {MAX_PUSHES} pushes are waiting")
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # may go unread
            entry = self.entries[key] = _Entry(position, shape, future)
        elif entry.position is not None and (entry.position, entry.shape) != (position, shape):
            raise WireError(BAD_REQUEST, "the pushed rows do not match the step's position/shape")
        return entry

    def deliver(self, sid: str, seq: int, position: int, rows: torch.Tensor, finite: bool) -> None:
        """The previous hop's output for step `seq` of `sid` (rows[batch, n, h])."""
        nbytes = rows.numel() * rows.element_size()
        if self.held_bytes + nbytes > MAX_PUSH_BYTES:
            self._prune()
            if self.held_bytes + nbytes > MAX_PUSH_BYTES:
                raise WireError(BUSY, "too many pushed rows are waiting for their steps")
        entry = self._entry(sid, seq, position, (rows.shape[0], rows.shape[1]))
        if entry.rows.done():
            raise WireError(BAD_REQUEST, "this step's rows were already pushed or cancelled")
        entry.rows.set_result((rows, finite))
        entry.nbytes = nbytes
        self.held_bytes += nbytes

    def cancel(self, sid: str, seq: int) -> None:
        """The client gave up on step `seq` of `sid`: a waiting step fails, a late push too."""
        entry = self.entries.get((sid, seq))
        if entry is not None and entry.rows.done():
            self._drop((sid, seq))  # delivered rows nobody may take now: free them
            entry = None
        if entry is None:
            self._prune()
            if len(self.entries) >= MAX_PUSHES:
                return
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            entry = self.entries[(sid, seq)] = _Entry(None, (0, 0), future)
        if not entry.rows.done():
            entry.rows.set_exception(WireError(CANCELLED, "the client cancelled the pushed step"))

    async def take(
        self, sid: str, seq: int, position: int, shape: tuple[int, int]
    ) -> tuple[torch.Tensor, bool]:
        """Wait for the rows of step `seq` of `sid` (at most `PUSH_WAIT` seconds)."""
        entry = self._entry(sid, seq, position, shape)
        try:
            async with asyncio.timeout(PUSH_WAIT):
                rows = await asyncio.shield(entry.rows)
        except TimeoutError:
            raise WireError(CANCELLED, f"no pushed rows in {PUSH_WAIT:.0f} s") from None
        finally:
            self._drop((sid, seq))
        return rows


class Pusher:
    """Sends this peer's step outputs on to the next hop (over this peer's own channels)."""

    def __init__(self, channels: Channels) -> None:
        self.channels = channels

    async def push(
        self, target: PushTarget, session: str, position: int, rows: torch.Tensor
    ) -> bool:
        """Send `rows[batch, n, h]` as step `target.seq` of `session`; did it get there?"""
        header = op_header("push", session, target.seq, position, rows.shape)
        try:
            await self.channels.get(target.peer, target.addrs).call(header, rows)
        except (WireError, P2PError, OSError) as error:
            log.info("push to %s failed: %s", target.peer[-8:], error)
            return False
        return True

    async def close(self) -> None:
        await self.channels.close()
