"""Logits of concurrent generations computed together: one LM-head pass for every row waiting.

The LM head is the gateway's largest matmul (vocabulary x hidden). Generations that need logits
while a head pass is running queue up; the next pass takes all of them at once, so the weights
are read once per round instead of once per stream (continuous batching, gateway side).
Plain greedy rows (no bias, penalty or logprobs) get their token picked in the same pass: one
argmax over all of them and one device-to-host copy per round, not one per stream; on a GPU with
`--head-graphs` a pass of greedy rows only is one CUDA-graph replay (`swarm.head_graphs`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from gateway.sampling import argmax_rows
from swarm import busy_poll, trace
from swarm.compute_turns import NO_TURNS, ComputeTurns

Logits = Callable[[torch.Tensor], torch.Tensor]


class GreedyPicker(Protocol):
    """Picks greedy rows' tokens straight from their hidden states (`swarm.head_graphs`)."""

    def fits(self, rows: int) -> bool: ...

    def argmax(self, hidden: torch.Tensor) -> tuple[list[int], list[float]]: ...


@dataclass
class _Waiting:
    hidden: torch.Tensor  # [b, 1, h]
    greedy: bool  # answer with token ids, not logits
    future: asyncio.Future[torch.Tensor | list[int]]


class HeadBatcher:
    def __init__(
        self,
        logits: Logits,
        executor: concurrent.futures.Executor,
        observe: Callable[[float], None] | None = None,
        picker: GreedyPicker | None = None,
        turns: ComputeTurns = NO_TURNS,
    ) -> None:
        self._logits = logits
        self._turns = turns  # passes take turns with other processes on these cores
        # all-greedy passes that fit it: their picks straight from the hidden states (the
        # head's CUDA graphs), no logits computed for them
        self._picker = picker
        self._executor = executor
        self._observe = observe  # called on the event loop with each pass's seconds
        self._pending: list[_Waiting] = []
        self._draining = False
        self._drainer: asyncio.Task[None] | None = None
        self.passes = 0  # head passes run
        self.rows = 0  # rows they computed

    async def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`hidden[b, 1, h]` → fp32 `logits[b, 1, vocab]`, batched with whoever else waits."""
        out = await self._submit(hidden, greedy=False)
        assert isinstance(out, torch.Tensor)
        return out

    async def greedy(self, hidden: torch.Tensor) -> list[int]:
        """`hidden[b, 1, h]` → the argmax token of each row, batched with whoever else waits."""
        out = await self._submit(hidden, greedy=True)
        assert isinstance(out, list)
        return out

    async def _submit(self, hidden: torch.Tensor, greedy: bool) -> torch.Tensor | list[int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[torch.Tensor | list[int]] = loop.create_future()
        self._pending.append(_Waiting(hidden, greedy, future))
        if not self._draining:
            self._draining = True
            self._drainer = loop.create_task(self._drain())  # kept: tasks are weakly held
        return await future

    def _pass(
        self, batch: list[_Waiting]
    ) -> tuple[list[torch.Tensor | list[int] | ValueError], float]:
        """Runs on the head's thread: one head pass, then one argmax for the greedy rows (or
        one graph replay for both, when every row is greedy); the results and the seconds the
        pass took, until its logits or picks were ready."""
        began = time.perf_counter()
        sizes = [w.hidden.shape[0] for w in batch]
        trace.mark("head.start", "", sum(sizes))
        stacked = torch.cat([w.hidden for w in batch]) if len(batch) > 1 else batch[0].hidden
        out: list[torch.Tensor | list[int] | ValueError]
        greedy = [i for i, w in enumerate(batch) if w.greedy]
        picker = self._picker
        if picker is not None and len(greedy) == len(batch) and picker.fits(sum(sizes)):
            out = [[] for _ in batch]  # each replaced by its picks
            self._pick(out, greedy, sizes, *picker.argmax(stacked))
        else:
            logits = self._logits(stacked)
            parts = list(torch.split(logits, sizes))
            out = list(parts)
            if greedy:
                rows = torch.cat([parts[i][:, -1] for i in greedy])
                self._pick(out, greedy, sizes, *argmax_rows(rows))
            if logits.is_cuda and not greedy:  # here rather than in the sampler, on the loop
                torch.cuda.current_stream(logits.device).synchronize()
        trace.mark("head.end", "", sum(sizes))
        return out, time.perf_counter() - began

    @staticmethod
    def _pick(
        out: list[torch.Tensor | list[int] | ValueError],
        greedy: list[int],
        sizes: list[int],
        ids: list[int],
        values: list[float],
    ) -> None:
        """Hand each greedy waiter its rows' picks (`ids`, `values`: the greedy rows, in
        order), or the error of a row whose best logit is not finite."""
        offset = 0
        for i in greedy:
            mine = slice(offset, offset + sizes[i])
            offset += sizes[i]
            bad = [v for v in values[mine] if not math.isfinite(v)]
            # NaN or inf logits (a broken peer): nothing sensible can be sampled
            out[i] = (
                ValueError(f"no token can be sampled: the largest logit is {bad[0]}")
                if bad
                else ids[mine]
            )

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                # the machine's turn first (waited for off the loop), then the rows: those
                # that arrive while another process computes join this pass
                await self._turns.take()
                try:
                    batch, self._pending = self._pending, []
                    batch = [w for w in batch if not w.future.done()]  # cancelled waiters
                    if not batch:
                        continue
                    try:
                        with busy_poll.paused():  # the head's thread needs the GIL
                            outs, seconds = await loop.run_in_executor(
                                self._executor, self._pass, batch
                            )
                    except Exception as error:
                        for waiting in batch:
                            if not waiting.future.done():
                                waiting.future.set_exception(error)
                        continue
                finally:
                    self._turns.release()
                if self._observe is not None:
                    self._observe(seconds)
                self.passes += 1
                self.rows += sum(w.hidden.shape[0] for w in batch)
                for waiting, out in zip(batch, outs, strict=True):
                    if waiting.future.done():
                        continue
                    if isinstance(out, ValueError):
                        waiting.future.set_exception(out)
                    else:
                        waiting.future.set_result(out)
        finally:
            self._draining = False
