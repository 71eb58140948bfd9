"""Logits of concurrent generations computed together: one LM-head pass for every row waiting.

The LM head is the gateway's largest matmul (vocabulary x hidden). Generations that need logits
while a head pass is running queue up; the next pass takes all of them at once, so the weights
are read once per round instead of once per stream (continuous batching, gateway side).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable

import torch

Logits = Callable[[torch.Tensor], torch.Tensor]


class HeadBatcher:
    def __init__(self, logits: Logits, executor: concurrent.futures.Executor) -> None:
        self._logits = logits
        self._executor = executor
        self._pending: list[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]] = []
        self._draining = False
        self.passes = 0  # head passes run
        self.rows = 0  # rows they computed

    async def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`hidden[b, 1, h]` → fp32 `logits[b, 1, vocab]`, batched with whoever else waits."""
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        self._pending.append((hidden, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                batch = [(h, f) for h, f in batch if not f.done()]  # cancelled waiters
                if not batch:
                    continue
                sizes = [h.shape[0] for h, _ in batch]
                try:
                    stacked = torch.cat([h for h, _ in batch]) if len(batch) > 1 else batch[0][0]
                    out = await loop.run_in_executor(self._executor, self._logits, stacked)
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                self.passes += 1
                self.rows += sum(sizes)
                for (_, future), part in zip(batch, torch.split(out, sizes), strict=True):
                    if not future.done():
                        future.set_result(part)
        finally:
            self._draining = False
