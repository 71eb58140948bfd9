"""CUDA-graph capture of a paged span's decode step.

A decode step of `rows` sessions depends only on (rows, pages per row), so it is captured once
per bucket — rows rounded up to a power of two, pages too — and replayed with its inputs copied
into the graph's static tensors. Padding rows point at the pool's scratch page. Launching one
graph replaces hundreds of kernel launches from Python, which is what bounds eager decoding of
a large model at small batch. Graphs are captured lazily, each with its own memory (sharing one
pool between captures trips an allocator assertion in torch 2.11), and are dropped when the
page pool reallocates its tensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from swarm.kv_pages import PagePool
from swarm.llama_span import LlamaSpanModule

log = logging.getLogger("swarmgate.graphs")

MAX_GRAPH_ROWS = 64


def bucket(value: int, smallest: int = 1) -> int:
    """The power of two at or above `value` (and at least `smallest`)."""
    size = smallest
    while size < value:
        size *= 2
    return size


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    hidden: torch.Tensor  # [rows, 1, h]
    indices: torch.Tensor  # [rows, 1 + pages]: each row's position, then its page table
    output: torch.Tensor


class DecodeGraphs:
    def __init__(self, module: LlamaSpanModule, pool: PagePool, hidden_size: int) -> None:
        self.module, self.pool, self.hidden_size = module, pool, hidden_size
        self._graphs: dict[tuple[int, int], _Captured] = {}
        self._generation = pool.generation
        self.failed = False

    def fits(self, rows: int, pages: int) -> bool:
        return not self.failed and rows <= MAX_GRAPH_ROWS

    def _capture(self, rows: int, pages: int) -> _Captured:
        device, dtype = self.pool.device, self.pool.dtype
        hidden = torch.zeros(rows, 1, self.hidden_size, device=device, dtype=dtype)
        indices = torch.zeros(rows, 1 + pages, device=device, dtype=torch.int64)
        positions, table = indices[:, :1], indices[:, 1:]  # one copy in per step, not two
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up outside the graph (allocator, lazy inits)
                self.module(hidden, positions, table, self.pool)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self.module(hidden, positions, table, self.pool)
        log.info("captured a decode graph for %d rows x %d pages", rows, pages)
        return _Captured(graph, hidden, indices, output)

    def prepare(self, rows: int, pages: int) -> None:
        """Capture the bucket of (`rows`, `pages`) now, not at its first step."""
        key = (bucket(rows), bucket(pages, 4))
        if key not in self._graphs:
            self._graphs[key] = self._capture(*key)

    def run(
        self, hidden: torch.Tensor, positions: torch.Tensor, table: torch.Tensor, to_host: bool
    ) -> torch.Tensor:
        """The decode step of `hidden[rows, 1, h]` at `positions[rows, 1]` over `table[rows,
        pages]`, all three on the host: they go in with two copies from pinned memory; with
        `to_host` the output comes back the same way (else a device tensor)."""
        if self.pool.generation != self._generation:
            self._graphs.clear()
            self._generation = self.pool.generation
        rows, pages = hidden.shape[0], table.shape[1]
        key = (bucket(rows), bucket(pages, 4))
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(*key)
        # padding rows and pages point at the scratch page, position 0
        indices = torch.zeros(captured.indices.shape, dtype=torch.int64, pin_memory=True)
        indices[:rows, :1] = positions
        indices[:rows, 1 : 1 + pages] = table
        captured.indices.copy_(indices, non_blocking=True)
        rows_in = hidden.to(self.pool.dtype)
        if rows_in.device.type == "cpu":
            rows_in = rows_in.pin_memory()
        captured.hidden[:rows].copy_(rows_in, non_blocking=True)
        captured.graph.replay()
        if not to_host:
            return captured.output[:rows].clone()
        out = torch.empty(captured.output[:rows].shape, dtype=self.pool.dtype, pin_memory=True)
        out.copy_(captured.output[:rows], non_blocking=True)
        torch.cuda.current_stream(self.pool.device).synchronize()
        return out
