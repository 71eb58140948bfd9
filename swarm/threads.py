"""Which threads of a process may run torch's ops in parallel: only the one that computes.

Measured (torch 2.13, GNU OpenMP, 2 cores): once any other live thread of a process has run
one parallel op (an `isfinite` over a prefill's rows on the asyncio thread is enough), that
thread keeps its own OpenMP team; with more OpenMP threads than cores, libgomp stops letting
idle workers spin, and every op of the compute thread then pays a wake-up. A 15-block decode
step went from 15 to 25 ms and stayed there. So threads that only move data (the asyncio loop,
the libp2p thread) run torch on one thread, and the compute thread keeps the default.
"""

from __future__ import annotations

import torch

COMPUTE_THREADS = torch.get_num_threads()  # the process's default, read when first imported


def glue_thread() -> None:
    """Call first on a thread that moves data: its torch ops run on this thread alone."""
    torch.set_num_threads(1)


def compute_thread() -> None:
    """Call first on a thread that computes (an executor's initializer): all of the threads."""
    torch.set_num_threads(COMPUTE_THREADS)
