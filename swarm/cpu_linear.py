"""Linear layers on the CPU through oneDNN's prepacked fp32 kernels.

`F.linear` takes MKL's fp32 GEMM on the CPU, which is slow for the few rows of a decode step:
- SmolLM2's LM head (49152 x 576), 8 rows: MKL 11-14 ms, packed for oneDNN 5-5.5 ms (Intel
  Sapphire Rapids, 2 cores; 1-3 rows took the same time both ways there). On AMD EPYC (Zen 4,
  where MKL takes slower paths) one row took 10.5 ms through MKL, 4.7 ms packed.
- A span's layers (15 SmolLM2 blocks, 212 MB of fp32 weights read from memory), Zen 4: one
  row 29 -> 19 ms, 8 rows 44 -> 22 ms, a 37-token prefill 54 -> 36 ms.
The packed kernel is thus never slower and is taken at every row count. Its results are
F.linear's up to rounding (max relative difference ~1e-6, same argmax on the LM head).

`PackedLinear` keeps only the packed weight; `packed` swaps one `nn.Linear` for it (an LM
head: where its embeddings are tied to it, they keep the plain weight alive beside the packed
one) and `pack_linears` every one under a module. oneDNN's ops are torch internals
(Inductor's CPU path uses them): where they are missing, the layers stay as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def packed_linear_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and ops is not None
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class PackedLinear(nn.Module):
    """An fp32 CPU `nn.Linear` that keeps its weight in oneDNN's packed layout only (no copy in
    PyTorch's own layout) and computes every row count through oneDNN's kernel."""

    def __init__(self, linear: nn.Linear, batch_hint: int = 32) -> None:
        super().__init__()
        weight = linear.weight.detach()
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            raise ValueError("PackedLinear packs fp32 CPU weights only")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x, self.packed, self.bias, "none", [], ""
        )
        return out

    def _apply(self, fn: Any, recurse: bool = True) -> PackedLinear:
        """`.to()`, `.cuda()`, `.half()`... would skip the opaque packed weight silently."""
        raise RuntimeError("a packed CPU linear cannot be moved or cast: pack after placing it")

    def weight_bytes(self) -> int:
        bias = 0 if self.bias is None else self.bias.numel()
        return (self.in_features * self.out_features + bias) * 4

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def packed(linear: nn.Module) -> nn.Module:
    """`linear` as a `PackedLinear` where it is an fp32 CPU `nn.Linear` and oneDNN can pack it;
    `linear` itself otherwise."""
    weight = getattr(linear, "weight", None)
    if not (
        isinstance(linear, nn.Linear)
        and isinstance(weight, torch.Tensor)
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and packed_linear_available()
    ):
        return linear
    try:
        return PackedLinear(linear)
    except RuntimeError:  # a oneDNN that cannot pack this: it stays as it is
        return linear


def pack_linears(module: nn.Module) -> int:
    """Replace every fp32 CPU `nn.Linear` under `module` with a `PackedLinear`, in place;
    returns how many were replaced (0 where oneDNN's packed kernels are missing)."""
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            swapped = packed(child)
            if swapped is not child:
                setattr(module, name, swapped)
                replaced += 1
        else:
            replaced += pack_linears(child)
    return replaced
