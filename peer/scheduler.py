"""The step scheduler: decode steps of different sessions that arrive together run as one
batched forward through the span; everything runs on one compute thread, off the event loop
(or, with `--compute inline`, on the loop itself: its executor then computes as it is called).

While one batch computes, new steps queue up; the next batch takes all of them (continuous
batching). Steps of one session keep their order. Prefill steps, and sessions of batch > 1,
run on their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from peer.sessions import Session
from swarm import busy_poll, trace
from swarm.blocks import Span
from swarm.compute_turns import NO_TURNS, ComputeTurns
from swarm.event_loop import TIMER_GRAIN
from swarm.threads import compute_thread


@dataclass
class _Group:
    """Steps submitted together (`StepScheduler.step_group`): one wake-up when all are done."""

    remaining: int
    done: asyncio.Future[None]


@dataclass
class _Step:
    session: Session | None  # None: a stateless forward
    hidden: torch.Tensor
    position: int | None
    future: asyncio.Future[torch.Tensor]
    group: _Group | None = None

    @property
    def batchable(self) -> bool:
        s = self.session
        return (
            s is not None
            and self.hidden.shape[:2] == (1, 1)
            and s.cache.batch == 1
            and s.cache.length > 0
            and self.position in (None, s.cache.length)
        )


@dataclass
class SchedulerStats:
    steps: int = 0
    forwards: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    # called on the compute thread after each forward with (batch size, seconds it took)
    observe: Callable[[int, float], None] | None = None

    def record(self, batch: int, seconds: float) -> None:
        self.batch_sizes[batch] += 1
        self.forwards += 1
        if self.observe is not None:
            self.observe(batch, seconds)


class StepScheduler:
    def __init__(
        self,
        span: Span,
        max_batch: int = 64,
        executor: concurrent.futures.Executor | None = None,
        window: float = 0.0,
        active: Callable[[], int] | None = None,
        turns: ComputeTurns = NO_TURNS,
    ) -> None:
        self.span = span
        self.turns = turns  # other processes on these cores compute in their own turns
        self.max_batch = max_batch
        self.window = window  # seconds to wait for the steps of other decoding sessions
        self.active = active  # how many sessions are decoding now
        self.stats = SchedulerStats()
        self._queue: asyncio.Queue[_Step] = asyncio.Queue()
        self._deferred: list[_Step] = []
        self._computing: list[_Step] = []  # the batch on the compute thread now
        # one compute thread: the given executor (shared, not ours to stop) or our own
        self._owns_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="span", initializer=compute_thread
        )
        self._worker: asyncio.Task[None] | None = None

    @property
    def queue_length(self) -> int:
        return self._queue.qsize() + len(self._deferred)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._owns_executor:
            self._executor.shutdown(wait=True)
        # nobody will compute what is still queued (or was computing when the worker
        # stopped): fail it, so no handler waits forever
        pending = self._computing + self._deferred
        self._computing, self._deferred = [], []
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for item in pending:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the span was unloaded"))
            if item.group is not None and not item.group.done.done():
                item.group.done.set_result(None)

    async def step(
        self, session: Session, hidden: torch.Tensor, position: int | None
    ) -> torch.Tensor:
        """Run one step of `session`; returns the span's output hidden states."""
        return await self._submit(session, hidden, position)

    async def step_group(
        self, steps: list[tuple[Session, torch.Tensor, int]]
    ) -> list[torch.Tensor | BaseException]:
        """Run the steps `(session, hidden, position)` of different sessions; each one's output
        or error, in order. They queue at once and the caller wakes once, when the last is
        done (a round's decode steps: no task or wake-up per step)."""
        loop = asyncio.get_running_loop()
        group = _Group(len(steps), loop.create_future())
        futures: list[asyncio.Future[torch.Tensor]] = []
        for session, hidden, position in steps:
            future: asyncio.Future[torch.Tensor] = loop.create_future()
            futures.append(future)
            self._queue.put_nowait(_Step(session, hidden, position, future, group))
        try:
            await group.done
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()  # not computed if not taken yet
            raise
        return [f.exception() or f.result() for f in futures]

    async def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """A stateless forward (no cache)."""
        return await self._submit(None, hidden, None)

    async def _submit(
        self, session: Session | None, hidden: torch.Tensor, position: int | None
    ) -> torch.Tensor:
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Step(session, hidden, position, future))
        return await future

    def _take_batch(self) -> list[_Step]:
        pending = self._deferred
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        taken: list[_Step] = []
        seen: set[str] = set()
        self._deferred = []
        for item in pending:
            sid = item.session.session_id if item.session else None
            if item.future.done() or (sid is not None and sid in seen):
                if not item.future.done():
                    self._deferred.append(item)  # a later step of the same session: next round
                continue
            if sid is not None:
                seen.add(sid)
            if len(taken) < self.max_batch:
                taken.append(item)
            else:
                self._deferred.append(item)
        return taken

    def _compute(self, items: list[_Step]) -> list[torch.Tensor | BaseException]:
        """Runs on the compute thread (or inline, see the module's docstring)."""
        trace.mark("compute.start", "", len(items))
        results: dict[int, torch.Tensor | BaseException] = {}
        batch = [i for i, item in enumerate(items) if item.batchable]
        if len(batch) > 1:
            hidden = torch.cat([items[i].hidden for i in batch])
            caches = [items[i].session.cache for i in batch]  # type: ignore[union-attr]
            try:
                began = time.perf_counter()
                # results leave the device here, so the measured time is the real compute
                output = self.span.forward_many(hidden, caches, to_host=True).to(hidden.dtype)
                for row, i in enumerate(batch):
                    results[i] = output[row : row + 1]
                self.stats.record(len(batch), time.perf_counter() - began)
            except Exception as error:
                for i in batch:
                    results[i] = error
        for i, item in enumerate(items):
            if i in results:
                continue
            try:
                began = time.perf_counter()
                if item.session is None:
                    cache = self.span.new_cache()
                    try:
                        output = self.span.forward(item.hidden, cache, 0, to_host=True)
                    finally:
                        cache.release()
                else:
                    output = self.span.forward(
                        item.hidden, item.session.cache, item.position, to_host=True
                    )
                results[i] = output.to(item.hidden.dtype)
                self.stats.record(1, time.perf_counter() - began)
            except Exception as error:
                results[i] = error
        self.stats.steps += len(items)
        trace.mark("compute.end", "", len(items))
        return [results[i] for i in range(len(items))]

    async def _gather_window(self) -> None:
        """Wait up to `window` seconds while fewer steps are queued than sessions are decoding.

        Steps of concurrent sessions reach a peer one by one (each comes back from the client
        and the hops before); a short wait lets them join one batched forward instead of
        running as a string of small ones.
        """
        if self.window <= 0 or self.active is None:
            return
        # perf_counter, not loop.time(): uvloop's clock moves in whole milliseconds, and a
        # shorter sleep there returns at once (a 2 ms GPU window spun ~1000 times)
        deadline = time.perf_counter() + self.window
        while self.queue_length < self.active():
            left = deadline - time.perf_counter()
            if left < TIMER_GRAIN:
                return
            await asyncio.sleep(min(max(self.window / 8, TIMER_GRAIN), left))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._deferred:
                first = await self._queue.get()
                self._deferred.append(first)
            await self._gather_window()
            # the machine's turn first (waited for off the loop), then the batch: steps that
            # arrive while another process computes join it
            await self.turns.take()
            try:
                items = self._take_batch()
                if not items:
                    continue
                self._computing = items
                with busy_poll.paused():  # a compute thread needs the GIL
                    results = await loop.run_in_executor(self._executor, self._compute, items)
            finally:
                self.turns.release()
            self._computing = []
            for item, result in zip(items, results, strict=True):
                if not item.future.done():
                    if isinstance(result, BaseException):
                        item.future.set_exception(result)
                    else:
                        item.future.set_result(result)
                group = item.group
                if group is not None:
                    group.remaining -= 1
                    if group.remaining == 0 and not group.done.done():
                        group.done.set_result(None)
