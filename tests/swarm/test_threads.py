"""Only the compute thread runs torch's ops in parallel (swarm.threads)."""

from __future__ import annotations

import asyncio
import concurrent.futures

import torch

from swarm.main_thread import MainThreadExecutor, run_async_with_compute
from swarm.threads import COMPUTE_THREADS, compute_thread


def test_the_asyncio_thread_runs_torch_alone_and_the_compute_thread_with_all() -> None:
    seen: dict[str, int] = {}

    async def program(executor: MainThreadExecutor) -> int:
        loop = asyncio.get_running_loop()
        seen["loop"] = torch.get_num_threads()
        seen["compute"] = await loop.run_in_executor(executor, torch.get_num_threads)
        # an executor made from the loop's thread would inherit its one thread: the
        # initializer gives a computing pool all of them again
        with concurrent.futures.ThreadPoolExecutor(1, initializer=compute_thread) as pool:
            seen["pool"] = await loop.run_in_executor(pool, torch.get_num_threads)
        return 0

    assert run_async_with_compute(program) == 0
    assert seen == {"loop": 1, "compute": COMPUTE_THREADS, "pool": COMPUTE_THREADS}
