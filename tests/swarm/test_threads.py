"""Only the compute thread runs torch's ops in parallel (swarm.threads); inline compute runs on
the loop's own (main) thread (swarm.main_thread)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import operator
import threading

import torch

from swarm.main_thread import (
    MainThreadExecutor,
    compute_mode,
    run_async_inline,
    run_async_with_compute,
)
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


def test_an_inline_program_computes_on_its_loop_thread_with_every_torch_thread() -> None:
    seen: dict[str, object] = {}

    async def program(executor: MainThreadExecutor) -> int:
        loop = asyncio.get_running_loop()
        seen["loop"] = threading.get_ident()
        seen["threads"] = torch.get_num_threads()
        seen["compute"] = await loop.run_in_executor(executor, threading.get_ident)
        try:
            await loop.run_in_executor(executor, operator.truediv, 1, 0)
        except ZeroDivisionError:
            seen["raised"] = True
        return 7

    assert run_async_inline(program) == 7
    assert seen == {
        "loop": threading.main_thread().ident,
        "threads": COMPUTE_THREADS,
        "compute": threading.main_thread().ident,
        "raised": True,
    }


def test_compute_auto_is_inline_on_a_gpu_and_a_thread_on_a_cpu() -> None:
    assert compute_mode("auto", "cuda") == "inline"
    assert compute_mode("auto", "cuda:1") == "inline"
    assert compute_mode("auto", "cpu") == "thread"
    assert compute_mode("thread", "cuda") == "thread"  # an explicit choice stands
    assert compute_mode("inline", "cpu") == "inline"
