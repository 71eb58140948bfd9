"""Llama-family decoder layers written for serving: fused projections over a paged KV cache.

The math is the family's own (RMSNorm in fp32, rotary embeddings from transformers' rotary
class, grouped-query attention, SiLU MLP), checked against transformers in the tests. What differs
is the plumbing: Q/K/V and gate/up are one matmul each, keys and values live in a `PagePool`,
and one call runs any number of rows at their own positions: a prefill of one session, or one
decode position for each of many sessions. Every shape depends only on (rows, new positions,
pages per row), so a decode step can be captured once as a CUDA graph and replayed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from swarm.kv_pages import PagePool

FAST_FAMILIES = frozenset({"llama"})
# a layer's attention of its queries over the pool's pages: (layer, q, keys, values) -> out
Attention = Callable[["LlamaBlock", torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def supports(config: PretrainedConfig) -> str | None:
    """None when `config` can run here, else the reason it cannot."""
    if config.model_type not in FAST_FAMILIES:
        return f"family {config.model_type!r}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if "dynamic" in str(rope.get("rope_type", rope.get("type", "default"))):
        return "dynamic rotary scaling"
    return None


def _rotary_tables(
    config: PretrainedConfig, positions: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin `[positions, head_dim]`, computed by the family's own rotary module."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rotary = LlamaRotaryEmbedding(config).to(device)  # type: ignore[arg-type]
    ids = torch.arange(positions, device=device)[None]
    probe = torch.empty((), dtype=dtype, device=device)
    cos, sin = rotary(probe, ids)
    return cos[0].contiguous(), sin[0].contiguous()


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The family's RMSNorm (in fp32, scaled after the cast back), as one fused norm."""
    normed = F.rms_norm(x.to(torch.float32), (x.shape[-1],), eps=eps)
    return weight * normed.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of `x[..., d]`: x·cos + rotate_half(x)·sin, with rotate_half's sign
    folded into `signed_sin` (its first half negated), so the halves only swap places."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return x * cos + swapped * signed_sin


class LlamaBlock(nn.Module):
    def __init__(
        self,
        config: PretrainedConfig,
        tensors: dict[str, torch.Tensor],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.eps = float(config.rms_norm_eps)
        self.scaling = self.head_dim**-0.5

        def get(name: str) -> torch.Tensor:
            return tensors[name].to(device=device, dtype=dtype)

        def linear(names: list[str]) -> nn.Linear:
            weight = torch.cat([get(f"{n}.weight") for n in names])
            biases = [f"{n}.bias" for n in names if f"{n}.bias" in tensors]
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bool(biases), device="meta")
            layer.weight = nn.Parameter(weight, requires_grad=False)
            if biases:
                layer.bias = nn.Parameter(torch.cat([get(b) for b in biases]), requires_grad=False)
            return layer

        attn, mlp = "self_attn", "mlp"
        self.qkv = linear([f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"])
        self.o = linear([f"{attn}.o_proj"])
        self.gate_up = linear([f"{mlp}.gate_proj", f"{mlp}.up_proj"])
        self.down = linear([f"{mlp}.down_proj"])
        self.norm_in = nn.Parameter(get("input_layernorm.weight"), requires_grad=False)
        self.norm_post = nn.Parameter(get("post_attention_layernorm.weight"), requires_grad=False)
        # the parts around the cache and attention: plain functions, or compiled (see
        # `compile_layers`)
        self.attention_inputs: Callable[..., tuple[torch.Tensor, ...]] = _attention_inputs
        self.output_and_mlp: Callable[..., torch.Tensor] = _output_and_mlp

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        write_pages: torch.Tensor,
        write_offsets: torch.Tensor,
        attend: Attention,
    ) -> torch.Tensor:
        """`x[rows, n, hidden]`; `keys`/`values` are this layer's pool `[pages, page, kv, d]`;
        the new keys and values go to `write_pages`/`write_offsets`, then `attend` runs the
        queries over the pages (`_attend`, or per group: `_mixed_attention`)."""
        q, k, v = self.attention_inputs(self, x, cos, sin)
        keys[write_pages, write_offsets] = k
        values[write_pages, write_offsets] = v
        return self.output_and_mlp(self, x, attend(self, q, keys, values))


@dataclass(frozen=True)
class Segment:
    """Tokens [first, first + rows * n) of a mixed step (`LlamaSpanModule.forward_mixed`):
    `rows` sessions of `n` new positions each (decode rows: n = 1; a prefill: one row), whose
    page tables, flattened, are `read_pages` (`[rows * pages]`), with the causal `mask`
    (`[rows, 1, n, pages * page_size]`) over them."""

    first: int
    rows: int
    n: int
    read_pages: torch.Tensor
    mask: torch.Tensor


def _placement(
    table: torch.Tensor, positions: torch.Tensor, page_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For `positions[rows, n]` of rows whose pages are `table[rows, pages]`: the page each
    position is written to, and the causal mask `[rows, 1, n, pages * page_size]` of what it
    attends to (every position up to its own)."""
    keys_at = torch.arange(table.shape[1] * page_size, device=positions.device)
    mask = (keys_at[None, None, :] <= positions[:, :, None]).unsqueeze(1)
    return table.gather(1, positions // page_size), mask


def _attend(
    block: LlamaBlock,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    read_pages: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Attention of `q[rows, heads, n, d]` over the rows' pages (`read_pages`, flattened)."""
    rows = q.shape[0]
    past_k = keys[read_pages].view(rows, -1, block.kv_heads, block.head_dim).transpose(1, 2)
    past_v = values[read_pages].view(rows, -1, block.kv_heads, block.head_dim).transpose(1, 2)
    return F.scaled_dot_product_attention(
        q, past_k, past_v, attn_mask=mask, scale=block.scaling, enable_gqa=True
    )


def _mixed_attention(
    block: LlamaBlock,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    segments: list[Segment],
) -> torch.Tensor:
    """Attention of the queries `q[1, heads, tokens, d]` of every segment over its own pages."""
    heads, head_dim = block.heads, block.head_dim
    outs = []
    for seg in segments:
        part = q[0, :, seg.first : seg.first + seg.rows * seg.n]  # [heads, rows * n, d]
        part = part.reshape(heads, seg.rows, seg.n, head_dim).transpose(0, 1)  # [rows, heads, n, d]
        out = _attend(block, part, keys, values, seg.read_pages, seg.mask)
        outs.append(out.transpose(0, 1).reshape(heads, seg.rows * seg.n, head_dim))
    return torch.cat(outs, dim=1).unsqueeze(0)  # [1, heads, tokens, d]


def _attention_inputs(
    block: LlamaBlock, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Norm, Q/K/V and rotary: queries `[rows, heads, n, d]`, keys and values `[rows, n, kv, d]`."""
    rows, n, _ = x.shape
    heads, kv_heads, head_dim = block.heads, block.kv_heads, block.head_dim
    qkv = block.qkv(_rms_norm(x, block.norm_in, block.eps))
    qk, v = qkv.split([(heads + kv_heads) * head_dim, kv_heads * head_dim], dim=-1)
    # queries and keys rotate together: [rows, n, heads + kv_heads, d]
    qk = _rotate(qk.view(rows, n, heads + kv_heads, head_dim), cos, sin)
    return qk[:, :, :heads].transpose(1, 2), qk[:, :, heads:], v.view(rows, n, kv_heads, head_dim)


def _output_and_mlp(block: LlamaBlock, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Attention's output projection and residual, then the MLP and its residual."""
    rows, n, _ = x.shape
    x = x + block.o(out.transpose(1, 2).reshape(rows, n, block.heads * block.head_dim))
    gate, up = block.gate_up(_rms_norm(x, block.norm_post, block.eps)).chunk(2, dim=-1)
    result: torch.Tensor = x + block.down(F.silu(gate) * up)
    return result


def compile_layers(module: LlamaSpanModule) -> None:
    """Compile the parts of every layer around its cache and attention (`torch.compile`, one
    program shared by all layers): Inductor fuses the norms, rotary, SiLU and residuals that
    otherwise run as ~30 small kernels per layer (H200, 16 blocks at batch 1: "other" kernels
    0.49 -> 0.19 ms, a graph-captured step 2.85 -> 2.64 ms). Needs Triton on CUDA."""
    attention_inputs = torch.compile(_attention_inputs, fullgraph=True, dynamic=True)
    output_and_mlp = torch.compile(_output_and_mlp, fullgraph=True, dynamic=True)
    for layer in module.layers:
        assert isinstance(layer, LlamaBlock)
        layer.attention_inputs = attention_inputs
        layer.output_and_mlp = output_and_mlp


class LlamaSpanModule(nn.Module):
    """Layers [start, end) of a Llama-family model over a paged KV cache."""

    cos_table: torch.Tensor
    sin_table: torch.Tensor  # sin with its first half negated (see `_rotate`)

    def __init__(
        self,
        config: PretrainedConfig,
        layer_tensors: dict[int, dict[str, torch.Tensor]],
        start: int,
        end: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            LlamaBlock(config, layer_tensors[i], dtype, device) for i in range(start, end)
        )
        first = self.layers[0]
        assert isinstance(first, LlamaBlock)
        self.kv_heads, self.head_dim = first.kv_heads, first.head_dim
        self.max_positions = int(getattr(config, "max_position_embeddings", 8192))
        cos, sin = _rotary_tables(config, self.max_positions, dtype, device)
        half = sin.shape[-1] // 2
        signed_sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        self.register_buffer("cos_table", cos, persistent=False)
        self.register_buffer("sin_table", signed_sin, persistent=False)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, table: torch.Tensor, pool: PagePool
    ) -> torch.Tensor:
        """Run `x[rows, n, h]` at `positions[rows, n]`; `table[rows, pages]` are the rows' pages.

        Position p of row r is written to its page before attention, and row r attends to
        every position ≤ its own. All tensors are on the span's device.
        """
        page_size = pool.page_size
        write_pages, mask = _placement(table, positions, page_size)
        write_offsets = positions % page_size
        # one flat, contiguous list of pages: indexing with it gathers whole pages at copy speed,
        # where a strided table (a graph's static inputs are one buffer) took a generic index
        # kernel ~5x slower (32 rows on an H200: 2.45 of a 6 ms step); `index_select` was
        # slower than this at one row
        read_pages = table.reshape(-1)
        attend = functools.partial(_attend, read_pages=read_pages, mask=mask)
        return self._layers(x, positions, pool, write_pages, write_offsets, attend)

    def _layers(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        pool: PagePool,
        write_pages: torch.Tensor,
        write_offsets: torch.Tensor,
        attend: Attention,
    ) -> torch.Tensor:
        """Every layer on `x` at `positions` (`[rows, n]`), each writing its keys and values
        to its own pool pages, then attending as `attend` says."""
        cos = self.cos_table[positions].unsqueeze(2)  # [rows, n, 1, d]
        sin = self.sin_table[positions].unsqueeze(2)
        for index, layer in enumerate(self.layers):
            x = layer(
                x,
                cos,
                sin,
                pool.keys[index],
                pool.values[index],
                write_pages,
                write_offsets,
                attend,
            )
        return x

    def forward_mixed(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        tables: list[torch.Tensor],
        shapes: list[tuple[int, int]],
        pool: PagePool,
    ) -> torch.Tensor:
        """Several groups of rows in one pass: `x[1, tokens, h]` at `positions[1, tokens]`,
        where group g holds `shapes[g] = (rows, n)` (rows of n new positions each, in order)
        and `tables[g][rows, pages]` are its rows' pages. Typically one group of decode rows
        (n = 1) and a prefill or two (one row each): the linears then run over all of their
        tokens at once instead of once per group. All tensors on the span's device."""
        page_size = pool.page_size
        segments, write_pages = [], []
        first = 0
        for table, (rows, n) in zip(tables, shapes, strict=True):
            pages, mask = _placement(
                table, positions[0, first : first + rows * n].view(rows, n), page_size
            )
            write_pages.append(pages.reshape(-1))
            segments.append(Segment(first, rows, n, table.reshape(-1), mask))
            first += rows * n
        attend = functools.partial(_mixed_attention, segments=segments)
        pages = torch.cat(write_pages).unsqueeze(0)  # [1, tokens]
        return self._layers(x, positions, pool, pages, positions % page_size, attend)
