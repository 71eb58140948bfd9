"""Llama-family decoder layers written for serving: fused projections over a paged KV cache.

The math is the family's own (RMSNorm in fp32, rotary embeddings from transformers' rotary
class, grouped-query attention, SiLU MLP), checked against transformers in the tests. What differs
is the plumbing: Q/K/V and gate/up are one matmul each, keys and values live in a `PagePool`,
and one call runs any number of rows at their own positions: a prefill of one session, or one
decode position for each of many sessions. Every shape depends only on (rows, new positions,
pages per row), so a decode step can be captured once as a CUDA graph and replayed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from swarm.kv_pages import PagePool

FAST_FAMILIES = frozenset({"llama"})


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
        read_pages: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """`x[rows, n, hidden]`; `keys`/`values` are this layer's pool `[pages, page, kv, d]`;
        `read_pages` is every row's page table, flattened (`[rows * pages]`)."""
        rows = x.shape[0]
        q, k, v = self.attention_inputs(self, x, cos, sin)
        keys[write_pages, write_offsets] = k
        values[write_pages, write_offsets] = v
        past_k = keys[read_pages].view(rows, -1, self.kv_heads, self.head_dim).transpose(1, 2)
        past_v = values[read_pages].view(rows, -1, self.kv_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q, past_k, past_v, attn_mask=mask, scale=self.scaling, enable_gqa=True
        )
        return self.output_and_mlp(self, x, out)


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
        cos = self.cos_table[positions].unsqueeze(2)  # [rows, n, 1, d]
        sin = self.sin_table[positions].unsqueeze(2)
        write_pages = table.gather(1, positions // page_size)
        write_offsets = positions % page_size
        length = table.shape[1] * page_size
        key_positions = torch.arange(length, device=x.device)
        mask = (key_positions[None, None, :] <= positions[:, :, None]).unsqueeze(1)
        # one flat, contiguous list of pages: indexing with it gathers whole pages at copy speed,
        # where a strided table (a graph's static inputs are one buffer) took a generic index
        # kernel ~5x slower (32 rows on an H200: 2.45 of a 6 ms step); `index_select` was
        # slower than this at one row
        read_pages = table.reshape(-1)
        for index, layer in enumerate(self.layers):
            x = layer(
                x,
                cos,
                sin,
                pool.keys[index],
                pool.values[index],
                write_pages,
                write_offsets,
                read_pages,
                mask,
            )
        return x
