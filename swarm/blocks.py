"""The block runtime: a `Span` runs decoder layers [start, end) of a model on hidden states.

A span holds only its own layers' weights. Each inference session gets a cache from
`Span.new_cache`; `Span.forward` runs `hidden[batch, n, h]` at absolute positions, appending to
the cache, and `cache.rollback(position)` forgets everything from `position` on (replay,
stop-sequence trimming, speculative steps). `Span.forward_many` runs one decode position of many
sessions as one batch.

Llama-family spans run on our own serving layers over a paged KV cache (`swarm.llama_span`;
CUDA graphs for decode on GPUs); every other family runs transformers' own modules with a
`DynamicCache` per session (`SpanCache`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from transformers import DynamicCache

from swarm import cpu_linear, llama_span
from swarm.cuda_graphs import DecodeGraphs
from swarm.kv_pages import PagedCache, PagePool, page_tables
from swarm.models.skeleton import build_span_module
from swarm.models.weights import Weights

log = logging.getLogger("swarmgate.blocks")


@dataclass
class SpanCache:
    """One session's KV cache for a span, with its batch size fixed at the first step."""

    kv: DynamicCache = field(default_factory=DynamicCache)
    batch: int | None = None

    @property
    def length(self) -> int:
        """Number of positions cached."""
        return int(self.kv.get_seq_length())

    def shrink(self) -> None:
        """Nothing to give back: a `DynamicCache` holds only what it has."""

    def release(self) -> None:
        self.kv = DynamicCache()

    def rollback(self, position: int) -> None:
        """Keep positions [0, position); a position at or past the end changes nothing."""
        if position < 0:
            raise ValueError(f"cannot roll back to a negative position ({position})")
        if position >= self.length:
            return
        for layer in self.kv.layers:
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if keys is not None and values is not None and keys.numel():
                layer.keys = keys[..., :position, :]  # type: ignore[union-attr]
                layer.values = values[..., :position, :]  # type: ignore[union-attr]


Cache = SpanCache | PagedCache


def _use_paged(weights: Weights, paged: bool | None) -> bool:
    if paged is not None:
        return paged
    if os.environ.get("SWARMGATE_PAGED", "1") == "0":
        return False
    return llama_span.supports(weights.config) is None


class Span:
    """Decoder layers [start, end) of a model, ready to run on one device in one dtype."""

    def __init__(
        self,
        weights: Weights,
        start: int,
        end: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        progress: bool = False,
        paged: bool | None = None,
    ) -> None:
        if not 0 <= start < end <= weights.num_blocks:
            raise ValueError(f"span [{start}, {end}) outside the model's [0, {weights.num_blocks})")
        self.start, self.end = start, end
        self.dtype = dtype
        self.device = torch.device(device)
        self.quant = "none"
        self.compiled = False  # layers compiled (`compile_layers`)
        self.packed = False  # CPU linears in oneDNN's packed layout (`pack_linears`)
        self.hidden_size = int(weights.config.hidden_size)
        self.block_hashes = tuple(weights.block_hash(i) for i in range(start, end))
        indices = range(start, end)
        if progress:
            indices = tqdm(indices, desc=f"loading blocks [{start}, {end})", unit="block")
        tensors = {i: weights.block_tensors(i) for i in indices}
        self.pool: PagePool | None = None
        self._graphs: DecodeGraphs | None = None
        self.use_graphs = self.device.type == "cuda"
        if _use_paged(weights, paged):
            fast = llama_span.LlamaSpanModule(
                weights.config, tensors, start, end, dtype, self.device
            )
            self.module: nn.Module = fast
            self.max_positions = fast.max_positions
            self.pool = PagePool(end - start, fast.kv_heads, fast.head_dim, dtype, self.device)
        else:
            self.module = build_span_module(
                weights.config, weights.layout, start, end, tensors, dtype, self.device
            )
            self.max_positions = int(getattr(weights.config, "max_position_embeddings", 1 << 20))

    def compile_layers(self) -> bool:
        """Compile the paged layers' parts around attention (CUDA with Triton, unquantized);
        False where that does not apply. Each shape compiles at its first step (see
        `warm_up` to do that at start)."""
        if self.device.type != "cuda" or self.quant != "none" or self.pool is None:
            return False
        if importlib.util.find_spec("triton") is None:
            return False
        llama_span.compile_layers(self.module)  # type: ignore[arg-type]
        self.compiled = True
        return True

    def pack_linears(self) -> bool:
        """Keep the paged (Llama-family) layers' fp32 CPU weights in oneDNN's packed layout
        (see `swarm.cpu_linear`: ~1.7x faster linears at 1-16 rows); False where that does not
        apply (another device or dtype, quantized, unpaged, or no packed kernels). The span
        cannot be moved or cast afterwards."""
        if self.device.type != "cpu" or self.dtype != torch.float32:
            return False
        if self.quant != "none" or self.pool is None:
            return False
        self.packed = cpu_linear.pack_linears(self.module) > 0
        return self.packed

    @torch.inference_mode()
    def warm_up(self, rows: list[int], pages: list[int]) -> int:
        """Capture the decode graphs of these buckets and compile a prefill's shapes now (a
        peer's start), so that no first request of a new size stalls for a capture or a
        compile. Returns the graphs captured."""
        if not self.use_graphs or self.pool is None or self.quant != "none":
            return 0
        if self._graphs is None:
            self._graphs = DecodeGraphs(self.module, self.pool, self.hidden_size)  # type: ignore[arg-type]
        count = 0
        for row_count in rows:
            for page_count in pages:
                if not self._graphs.fits(row_count, page_count):
                    continue
                try:
                    self._graphs.prepare(row_count, page_count)
                except RuntimeError as error:  # out of memory, say: the rest stays lazy
                    log.warning("decode graph capture stopped at %d rows: %s", row_count, error)
                    return count
                count += 1
        if self.compiled:  # a prefill's shapes compile now too, not at the first request
            cache = self.new_cache()
            self.forward(torch.zeros(1, 2, self.hidden_size, dtype=self.dtype), cache)
            cache.release()
        return count

    @property
    def num_blocks(self) -> int:
        return self.end - self.start

    @property
    def paged(self) -> bool:
        return self.pool is not None

    @property
    def page_size(self) -> int:
        return self.pool.page_size if self.pool is not None else 1

    def new_cache(self) -> Cache:
        return PagedCache(self.pool) if self.pool is not None else SpanCache()

    def reserve_cache(self, tokens: int) -> None:
        """Allocate the KV pool for `tokens` cached tokens up front (paged spans only)."""
        if self.pool is not None:
            self.pool.reserve(tokens)

    def parameter_bytes(self) -> int:
        packed = sum(
            m.weight_bytes()
            for m in self.module.modules()
            if isinstance(m, cpu_linear.PackedLinear)
        )
        return packed + sum(p.numel() * p.element_size() for p in self.module.parameters())

    def _check(self, hidden: torch.Tensor, cache: Cache, position: int | None) -> int:
        if hidden.dim() != 3 or hidden.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden must be [batch, n, {self.hidden_size}], got {list(hidden.shape)}"
            )
        if cache.batch is not None and hidden.shape[0] != cache.batch:
            raise ValueError(f"batch {hidden.shape[0]} differs from the session's {cache.batch}")
        if position is None:
            position = cache.length
        if position > cache.length:
            raise ValueError(f"position {position} is past the cache length {cache.length}")
        if position + hidden.shape[1] > self.max_positions:
            raise ValueError(f"positions past the model's limit of {self.max_positions}")
        return position

    @torch.inference_mode()
    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache,
        position: int | None = None,
        to_host: bool = False,
    ) -> torch.Tensor:
        """Run `hidden[batch, n, h]` placed at positions [position, position + n).

        `position` defaults to the cache length; a position below it rolls the cache back first.
        `to_host`: the output comes back on the host (a peer sends it on), in the span's dtype.
        """
        position = self._check(hidden, cache, position)
        cache.rollback(position)
        batch, n = hidden.shape[0], hidden.shape[1]
        if isinstance(cache, PagedCache):
            assert self.pool is not None
            self.pool.begin_step()
            end = position + n
            cache.prepare(batch, end)
            positions = torch.arange(position, end).expand(batch, n)
            table = cache.page_table(self.pool.pages_for(end))
            out = self._run_paged(hidden, positions, table, to_host)
            cache.advance(end)
            return out
        positions = torch.arange(position, position + n, device=self.device).expand(batch, n)
        x = hidden.to(device=self.device, dtype=self.dtype)
        output = self.module(
            inputs_embeds=x, position_ids=positions, cache=cache.kv, use_cache=True
        )
        cache.batch = batch
        result: torch.Tensor = output.last_hidden_state
        return result.to("cpu") if to_host else result

    def _run_paged(
        self, hidden: torch.Tensor, positions: torch.Tensor, table: torch.Tensor, to_host: bool
    ) -> torch.Tensor:
        """`hidden`, `positions` and `table` as they come (on the host, from the wire)."""
        assert self.pool is not None
        if self.use_graphs and hidden.shape[1] == 1 and self.quant == "none":
            if self._graphs is None:
                self._graphs = DecodeGraphs(self.module, self.pool, self.hidden_size)  # type: ignore[arg-type]
            if self._graphs.fits(hidden.shape[0], table.shape[1]):
                return self._graphs.run(hidden, positions, table, to_host)
        x = hidden.to(device=self.device, dtype=self.dtype)
        positions = positions.to(self.device, non_blocking=True)
        table = table.to(self.device, non_blocking=True)
        out: torch.Tensor = self.module(x, positions, table, self.pool)
        return out.to("cpu") if to_host else out

    @torch.inference_mode()
    def forward_many(
        self, hidden: torch.Tensor, caches: list[Cache], to_host: bool = False
    ) -> torch.Tensor:
        """One decode step of several sessions as one batched forward (`to_host`: see
        `forward`).

        `hidden[k, 1, h]` holds one new position for each of `k` sessions, each of batch 1 and
        with a non-empty cache. Paged caches are read in place through a page table; other
        caches are left-padded into a temporary batch and masked, and each session's cache then
        receives only its own new keys and values.
        """
        if hidden.dim() != 3 or hidden.shape[1] != 1 or hidden.shape[0] != len(caches):
            raise ValueError("forward_many takes hidden[k, 1, h] for k sessions")
        lengths = [cache.length for cache in caches]
        if any(cache.batch != 1 for cache in caches) or min(lengths) == 0:
            raise ValueError("forward_many needs prefilled sessions of batch 1")
        if self.pool is not None:
            self.pool.begin_step()
            paged = cast(list[PagedCache], caches)  # a paged span hands out only these
            for cache, length in zip(paged, lengths, strict=True):
                cache.prepare(1, length + 1)
            table = page_tables(paged, self.pool.pages_for(max(lengths) + 1))
            positions = torch.tensor(lengths, dtype=torch.int64).unsqueeze(1)
            out = self._run_paged(hidden, positions, table, to_host)
            for cache, length in zip(paged, lengths, strict=True):
                cache.advance(length + 1)
            return out
        result = self._forward_many_padded(hidden, caches)  # type: ignore[arg-type]
        return result.to("cpu") if to_host else result

    def _forward_many_padded(self, hidden: torch.Tensor, caches: list[SpanCache]) -> torch.Tensor:
        lengths = [cache.length for cache in caches]
        longest = max(lengths)
        batched = DynamicCache()
        for layer_index in range(self.num_blocks):
            keys, values = [], []
            for cache, length in zip(caches, lengths, strict=True):
                layer = cache.kv.layers[layer_index]
                pad = (0, 0, longest - length, 0)
                keys.append(F.pad(layer.keys, pad))  # type: ignore[union-attr,arg-type]
                values.append(F.pad(layer.values, pad))  # type: ignore[union-attr,arg-type]
            batched.update(torch.cat(keys), torch.cat(values), layer_index)
        mask = torch.zeros(len(caches), longest + 1, dtype=torch.long, device=self.device)
        for row, length in enumerate(lengths):
            mask[row, longest - length :] = 1
        positions = torch.tensor(lengths, device=self.device).unsqueeze(1)
        output = self.module(
            inputs_embeds=hidden.to(device=self.device, dtype=self.dtype),
            attention_mask=mask,
            position_ids=positions,
            cache=batched,
            use_cache=True,
        )
        for layer_index in range(self.num_blocks):
            layer = batched.layers[layer_index]
            new_keys = layer.keys[:, :, -1:, :]  # type: ignore[union-attr,index]
            new_values = layer.values[:, :, -1:, :]  # type: ignore[union-attr,index]
            for row, cache in enumerate(caches):
                cache.kv.update(new_keys[row : row + 1], new_values[row : row + 1], layer_index)
        result: torch.Tensor = output.last_hidden_state
        return result
