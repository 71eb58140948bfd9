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
    positions: torch.Tensor  # [rows, 1]
    table: torch.Tensor  # [rows, pages]
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
        positions = torch.zeros(rows, 1, device=device, dtype=torch.int64)
        table = torch.zeros(rows, pages, device=device, dtype=torch.int64)
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
        return _Captured(graph, hidden, positions, table, output)

    def run(
        self, hidden: torch.Tensor, positions: torch.Tensor, table: torch.Tensor
    ) -> torch.Tensor:
        """The decode step of `hidden[rows, 1, h]` (all tensors already on the device)."""
        if self.pool.generation != self._generation:
            self._graphs.clear()
            self._generation = self.pool.generation
        rows, pages = hidden.shape[0], table.shape[1]
        key = (bucket(rows), bucket(pages, 4))
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(*key)
        captured.hidden[:rows].copy_(hidden)
        captured.positions.zero_()
        captured.positions[:rows].copy_(positions)
        captured.table.zero_()
        captured.table[:rows, :pages].copy_(table)
        captured.graph.replay()
        return captured.output[:rows].clone()
