"""Quantization of a span's linear layers with bitsandbytes (int8 or nf4), CPU or CUDA.

Only the decoder layers' `nn.Linear` modules are replaced; norms, rotary buffers and the KV
cache stay in the span's dtype. int8 (LLM.int8) stays closest to the unquantized model; nf4
saves the most memory at a visible cost in quality.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import nn

QuantMode = Literal["none", "int8", "nf4"]
QUANT_MODES: tuple[str, ...] = ("none", "int8", "nf4")


def _quantized_linear(linear: nn.Linear, mode: QuantMode, compute_dtype: torch.dtype) -> nn.Module:
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes as bnb

    device = linear.weight.device
    weight = linear.weight.data.to("cpu", torch.float32 if mode == "int8" else compute_dtype)
    has_bias = linear.bias is not None
    layer: nn.Module
    if mode == "int8":
        layer = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False
        )
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            compute_dtype=compute_dtype,
            quant_type="nf4",
        )
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    if has_bias:
        assert linear.bias is not None
        layer.bias = nn.Parameter(linear.bias.data.to("cpu"), requires_grad=False)
    return layer.to(device)


def quantize_linears(module: nn.Module, mode: QuantMode, compute_dtype: torch.dtype) -> int:
    """Replace every `nn.Linear` under `module` in place; returns how many were replaced."""
    if mode == "none":
        return 0
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization {mode!r} (choose from {', '.join(QUANT_MODES)})")
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, _quantized_linear(child, mode, compute_dtype))
            replaced += 1
        else:
            replaced += quantize_linears(child, mode, compute_dtype)
    return replaced
