"""Linear layers on the CPU through oneDNN's prepacked fp32 kernels.

`F.linear` takes MKL's fp32 GEMM on the CPU, which is slow for the few rows of a decode step:
- SmolLM2's LM head (49152 x 576), 8 rows: MKL 11-14 ms, packed for oneDNN 5-5.5 ms (Intel
  Sapphire Rapids, 2 cores; 1-3 rows took the same time both ways there). On AMD EPYC (Zen 4,
  where MKL takes slower paths) one row took 10.5 ms through MKL, 4.7 ms packed.
- A span's layers (15 SmolLM2 blocks, 212 MB of fp32 weights read from memory), Zen 4: one
  row 29 -> 19 ms, 8 rows 44 -> 22 ms, a 37-token prefill 54 -> 36 ms.
The packed kernel is thus never slower and is taken at every row count. Its results are
F.linear's up to rounding (max relative difference ~1e-6, same argmax on the LM head).

`RowsLinear` packs a copy of a weight that must stay in place too (a head tied to its
embeddings); `PackedLinear` (and `pack_linears`, which swaps a module's `nn.Linear`s for
them) keeps only the packed weight. oneDNN's ops are torch internals (Inductor's CPU path
uses them): where they are missing, everything stays on `F.linear`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def packed_linear_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and ops is not None
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class RowsLinear:
    """`F.linear(x, weight, bias)` for fp32 CPU tensors, through oneDNN's prepacked kernel. The
    weight is packed at the first call or `pack()` (a copy beside the original, which stays in
    use elsewhere: a head tied to its embeddings); where packing fails, every call stays on
    `F.linear`. The weight must not change afterwards."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, batch_hint: int = 32
    ) -> None:
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            raise ValueError("RowsLinear packs fp32 CPU weights only")
        self.weight, self.bias, self.batch_hint = weight, bias, batch_hint
        self._packed: torch.Tensor | None = None
        self._unpackable = not packed_linear_available()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed_weight() if x.dtype == torch.float32 else None
        if packed is None:
            return F.linear(x, self.weight, self.bias)
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
        return out

    def pack(self) -> bool:
        """Pack the weight now (not at the first call); False where it cannot be."""
        return self._packed_weight() is not None

    def _packed_weight(self) -> torch.Tensor | None:
        if self._packed is None and not self._unpackable:
            try:
                weight = self.weight.detach()
                self._packed = torch.ops.mkldnn._reorder_linear_weight(weight, self.batch_hint)
            except RuntimeError:  # a torch build whose oneDNN cannot: MKL it is
                self._unpackable = True
        return self._packed


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


def pack_linears(module: nn.Module) -> int:
    """Replace every fp32 CPU `nn.Linear` under `module` with a `PackedLinear`, in place;
    returns how many were replaced (0 where oneDNN's packed kernels are missing)."""
    if not packed_linear_available():
        return 0
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            if child.weight.device.type == "cpu" and child.weight.dtype == torch.float32:
                try:
                    packed = PackedLinear(child)
                except RuntimeError:  # a oneDNN that cannot pack this: it stays as it is
                    continue
                setattr(module, name, packed)
                replaced += 1
        else:
            replaced += pack_linears(child)
    return replaced


def pack_head(lm_head: nn.Module, embeddings: nn.Module) -> tuple[nn.Module, RowsLinear | None]:
    """An fp32 CPU LM head whose passes go through oneDNN's packed kernel: `(packed, None)`,
    packed in place, where its weight is its own; `(lm_head, rows)` where the embeddings share
    its weight (`rows` computes the passes from a packed copy, made now); `(lm_head, None)`
    where packing does not apply."""
    weight = getattr(lm_head, "weight", None)
    if not (
        isinstance(lm_head, nn.Linear)
        and isinstance(weight, torch.Tensor)
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and packed_linear_available()
    ):
        return lm_head, None
    shared = getattr(embeddings, "weight", None)
    if isinstance(shared, torch.Tensor) and shared.data_ptr() == weight.data_ptr():
        rows = RowsLinear(weight, lm_head.bias)
        return (lm_head, rows) if rows.pack() else (lm_head, None)
    try:
        return PackedLinear(lm_head), None
    except RuntimeError:  # a oneDNN that cannot pack it
        return lm_head, None
