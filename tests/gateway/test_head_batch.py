"""The head batcher: concurrent logits requests share one pass; each gets its own rows."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any, cast

import pytest
import torch

from gateway.engine import Engine
from gateway.head_batch import HeadBatcher
from swarm.main_thread import InlineExecutor

WEIGHT = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))


def slow_logits(hidden: torch.Tensor) -> torch.Tensor:
    time.sleep(0.05)  # long enough for the other callers to queue up
    return hidden @ WEIGHT.T


def test_waiting_requests_share_one_pass_and_get_their_own_rows() -> None:
    passes: list[float] = []

    async def main() -> tuple[HeadBatcher, list[torch.Tensor], list[torch.Tensor]]:
        batcher = HeadBatcher(slow_logits, concurrent.futures.ThreadPoolExecutor(1), passes.append)
        inputs = [torch.randn(b, 1, 4) for b in (1, 2, 1, 3)]
        first = asyncio.create_task(batcher.logits(inputs[0]))
        await asyncio.sleep(0.01)  # the first pass is running: the rest wait together
        rest = await asyncio.gather(*(batcher.logits(x) for x in inputs[1:]))
        return batcher, inputs, [await first, *rest]

    batcher, inputs, outputs = asyncio.run(main())
    assert batcher.passes == 2 and batcher.rows == 7
    assert len(passes) == 2 and all(seconds >= 0.05 for seconds in passes)  # each pass timed
    for x, out in zip(inputs, outputs, strict=True):
        assert out.shape == (x.shape[0], 1, 7)
        assert torch.allclose(out, x @ WEIGHT.T)


def test_a_failed_pass_fails_its_waiters_and_the_batcher_recovers() -> None:
    calls = 0

    def flaky(hidden: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("device lost")
        return hidden @ WEIGHT.T

    async def main() -> torch.Tensor:
        batcher = HeadBatcher(flaky, concurrent.futures.ThreadPoolExecutor(1))
        with pytest.raises(RuntimeError, match="device lost"):
            await batcher.logits(torch.randn(1, 1, 4))
        return await batcher.logits(torch.ones(1, 1, 4))

    assert torch.allclose(asyncio.run(main()), torch.ones(1, 1, 4) @ WEIGHT.T)


def test_greedy_rows_are_picked_in_the_pass_they_share_with_logits_rows() -> None:
    async def main() -> tuple[HeadBatcher, list[torch.Tensor], list[object]]:
        batcher = HeadBatcher(slow_logits, concurrent.futures.ThreadPoolExecutor(1))
        inputs = [torch.randn(b, 1, 4) for b in (1, 2, 3, 1)]
        first = asyncio.create_task(batcher.greedy(inputs[0]))
        await asyncio.sleep(0.01)
        rest = await asyncio.gather(
            batcher.greedy(inputs[1]), batcher.logits(inputs[2]), batcher.greedy(inputs[3])
        )
        return batcher, inputs, [await first, *rest]

    batcher, inputs, outputs = asyncio.run(main())
    assert batcher.passes == 2 and batcher.rows == 7
    for i in (0, 1, 3):  # each greedy waiter gets the argmax of its own rows
        assert outputs[i] == (inputs[i] @ WEIGHT.T)[:, -1].argmax(-1).tolist()
    assert torch.allclose(outputs[2], inputs[2] @ WEIGHT.T)  # type: ignore[arg-type]


def test_a_row_with_nan_logits_fails_only_its_own_waiter() -> None:
    batcher = HeadBatcher(slow_logits, concurrent.futures.ThreadPoolExecutor(1))

    async def main() -> list[object]:
        bad = torch.full((1, 1, 4), float("nan"))
        good = torch.randn(2, 1, 4)
        return await asyncio.gather(
            batcher.greedy(bad), batcher.greedy(good), return_exceptions=True
        )

    bad, good = asyncio.run(main())
    assert batcher.passes == 1  # one pass for both
    assert isinstance(bad, ValueError) and "no token can be sampled" in str(bad)
    assert isinstance(good, list) and len(good) == 2


def test_an_all_greedy_pass_takes_the_argmax_path_and_a_mixed_one_the_logits() -> None:
    """With a picker (the GPU head's graphs), a pass whose rows are all greedy and fit gets
    its picks from it alone; a pass with a logits waiter, or too many rows, computes logits."""
    argmax_rows: list[int] = []

    class Picker:
        def fits(self, rows: int) -> bool:
            return rows <= 4

        def argmax(self, hidden: torch.Tensor) -> tuple[list[int], list[float]]:
            argmax_rows.append(hidden.shape[0])
            top, ids = (hidden @ WEIGHT.T)[:, -1].max(-1)
            return ids.tolist(), top.tolist()

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return hidden @ WEIGHT.T

    async def main() -> tuple[HeadBatcher, list[torch.Tensor], list[object]]:
        batcher = HeadBatcher(logits, concurrent.futures.ThreadPoolExecutor(1), picker=Picker())
        nan = torch.full((1, 1, 4), float("nan"))
        inputs = [torch.randn(b, 1, 4) for b in (1, 2, 1)] + [nan, torch.randn(5, 1, 4)]
        first = await batcher.greedy(inputs[0])  # alone: the argmax path
        mixed = await asyncio.gather(batcher.greedy(inputs[1]), batcher.logits(inputs[2]))
        bad, good = await asyncio.gather(
            batcher.greedy(inputs[3]), batcher.greedy(inputs[1]), return_exceptions=True
        )
        wide = await batcher.greedy(inputs[4])  # more rows than fit: logits, then argmax
        return batcher, inputs, [first, *mixed, bad, good, wide]

    batcher, inputs, outputs = asyncio.run(main())
    assert batcher.passes == 4
    assert argmax_rows == [1, 3]  # the first pass, and the NaN one (1 + 2 rows)
    expected = [(x @ WEIGHT.T)[:, -1].argmax(-1).tolist() for x in inputs]
    assert outputs[0] == expected[0] and outputs[1] == expected[1]
    assert torch.allclose(outputs[2], inputs[2] @ WEIGHT.T)  # type: ignore[arg-type]
    assert isinstance(outputs[3], ValueError) and "no token can be sampled" in str(outputs[3])
    assert outputs[4] == expected[1] and outputs[5] == expected[4]


def test_an_inline_head_computes_on_the_loops_thread_and_still_batches() -> None:
    """`--head-inline` hands the batcher an `InlineExecutor`: each pass runs on the loop's own
    thread (no hand-off), and the rows that queued during a pass share the next one."""
    threads: list[int] = []

    def logits_here(hidden: torch.Tensor) -> torch.Tensor:
        threads.append(threading.get_ident())
        return hidden @ WEIGHT.T

    async def main() -> tuple[HeadBatcher, list[torch.Tensor], list[torch.Tensor]]:
        batcher = HeadBatcher(logits_here, InlineExecutor())
        inputs = [torch.randn(b, 1, 4) for b in (1, 2, 3)]
        outputs = await asyncio.gather(*(batcher.logits(x) for x in inputs))
        return batcher, inputs, list(outputs)

    batcher, inputs, outputs = asyncio.run(main())
    assert threads and set(threads) == {threading.get_ident()}  # asyncio.run's thread
    assert batcher.passes == 1 and batcher.rows == 6  # submitted in one turn: one pass
    for x, out in zip(inputs, outputs, strict=True):
        assert torch.allclose(out, x @ WEIGHT.T)


def test_the_engine_runs_its_head_inline_only_when_asked() -> None:
    def head_pool(**options: Any) -> object:
        return Engine(cast(Any, None), cast(Any, None), [], **options)._head_pool

    assert isinstance(head_pool(head_inline=True), InlineExecutor)
    assert isinstance(head_pool(), concurrent.futures.ThreadPoolExecutor)
