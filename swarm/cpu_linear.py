"""Linear layers of several rows on the CPU through oneDNN's prepacked fp32 kernels.

MKL's fp32 GEMM, which `F.linear` takes on the CPU, is slow for a few rows against a wide
weight: SmolLM2's LM head (49152 x 576) took 11-14 ms for 8 rows against 3-4 ms for one (two
cores, AVX-512), a round of 8 streams' head pass thus as long as a third of a peer's step. The
same weight packed once for oneDNN (`torch.ops.mkldnn._reorder_linear_weight`) computes 8 rows
in 5-5.5 ms, 16 in 7-7.6, with the same fp32 results up to rounding (max relative difference
8e-7 on the LM head); for 1-3 rows both take the same time, and MKL is kept there. oneDNN's
ops are torch internals (Inductor's CPU path uses them): where they are missing, everything
stays on `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PACKED_FROM_ROWS = 4  # rows from which the packed kernel is used (measured faster from 4)


def packed_linear_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and ops is not None
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class RowsLinear:
    """`F.linear(x, weight, bias)` for fp32 CPU tensors, through oneDNN's prepacked kernel for
    `PACKED_FROM_ROWS` rows or more. The weight is packed at the first such call (a copy beside
    the original: a head that only ever computes one row costs no memory more); where packing
    fails, every call stays on `F.linear`. The weight must not change afterwards."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, batch_hint: int = 32
    ) -> None:
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            raise ValueError("RowsLinear packs fp32 CPU weights only")
        self.weight, self.bias, self.batch_hint = weight, bias, batch_hint
        self._packed: torch.Tensor | None = None
        self._unpackable = not packed_linear_available()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        packed = None
        if rows >= PACKED_FROM_ROWS and x.dtype == torch.float32:
            packed = self._packed_weight()
        if packed is None:
            return F.linear(x, self.weight, self.bias)
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
        return out

    def _packed_weight(self) -> torch.Tensor | None:
        if self._packed is None and not self._unpackable:
            try:
                weight = self.weight.detach()
                self._packed = torch.ops.mkldnn._reorder_linear_weight(weight, self.batch_hint)
            except RuntimeError:  # a torch build whose oneDNN cannot: MKL it is
                self._unpackable = True
        return self._packed
