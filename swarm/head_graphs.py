"""CUDA graphs of the greedy head pass: final norm, LM head and argmax replayed as one launch.

On a GPU the head pass of one row read ~1 GB of LM-head weights (~0.25 ms at HBM speed) but took
~0.95 ms (H200, Llama-3-8B shape): the rest was the launches of the norm's, the matmul's, the
fp32 cast's and the argmax's kernels from Python, and the copies in and out. For rows that only
need their argmax (greedy decoding without bias, penalties or logprobs) the whole pass is
captured once per row bucket (powers of two up to `MAX_ROWS`) and replayed: the rows go in
through a pinned staging buffer, the token ids and their logits come out through pinned memory,
and one synchronize ends the pass. Each graph keeps its own memory pool (see
`swarm.cuda_graphs`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from swarm.cuda_graphs import bucket

log = logging.getLogger("swarmgate.head_graphs")

MAX_ROWS = 64

Logits = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    staged: torch.Tensor  # pinned host [rows, 1, h]: the rows are written here first
    ids: torch.Tensor  # pinned host [rows]: each row's argmax
    best: torch.Tensor  # pinned host [rows]: its logit (fp32)


class GreedyHeadGraphs:
    """Greedy head passes of up to `MAX_ROWS` rows as CUDA-graph replays, captured up front
    (`prepare`, at the gateway's start).

    `logits` is the head's own pass (`hidden[b, 1, h]` on the device → fp32 logits); it is
    captured as it is, so a graph computes exactly what the eager pass computes."""

    def __init__(
        self, logits: Logits, hidden_size: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self._logits = logits
        self.hidden_size, self.dtype, self.device = hidden_size, dtype, device
        self._graphs: dict[int, _Captured] = {}

    def fits(self, rows: int) -> bool:
        """Whether a pass of `rows` rows has its graph (captured by `prepare`)."""
        return 0 < rows <= MAX_ROWS and bucket(rows) in self._graphs

    def _capture(self, rows: int) -> _Captured:
        staged = torch.zeros(rows, 1, self.hidden_size, dtype=self.dtype, pin_memory=True)
        hidden = torch.zeros(rows, 1, self.hidden_size, dtype=self.dtype, device=self.device)
        ids = torch.zeros(rows, dtype=torch.int64, pin_memory=True)
        best = torch.zeros(rows, dtype=torch.float32, pin_memory=True)

        def body() -> None:
            hidden.copy_(staged, non_blocking=True)
            top, picks = self._logits(hidden)[:, -1].max(dim=-1)
            ids.copy_(picks, non_blocking=True)
            best.copy_(top, non_blocking=True)

        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up outside the graph (cuBLAS handles, the allocator)
                body()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body()
        log.info("captured a greedy head graph for %d rows", rows)
        return _Captured(graph, staged, ids, best)

    def prepare(self, rows: list[int]) -> None:
        """Capture these row buckets now, not at their first pass."""
        for count in rows:
            key = bucket(count)
            if key not in self._graphs:
                self._graphs[key] = self._capture(key)

    @torch.inference_mode()
    def argmax(self, hidden: torch.Tensor) -> tuple[list[int], list[float]]:
        """`hidden[rows, 1, h]` (output of the last block, on the host or the device) → each
        row's best token and its logit."""
        rows = hidden.shape[0]
        captured = self._graphs.get(bucket(rows))
        if captured is None:  # never captured here: the head's thread must not capture while
            # the event loop's thread runs other GPU work (see `fits`)
            raise ValueError(f"no greedy head graph for {rows} rows")
        captured.staged[:rows].copy_(hidden.reshape(rows, 1, self.hidden_size))
        captured.graph.replay()
        torch.cuda.current_stream(self.device).synchronize()
        ids: list[int] = captured.ids[:rows].tolist()
        best: list[float] = captured.best[:rows].tolist()
        return ids, best
