"""The whole model as plain transformers builds it: the reference for exactness and speed."""

from __future__ import annotations

import torch
from torch import nn

from swarm.models.skeleton import causal_lm_class
from swarm.models.weights import Weights


def build_full_model(
    weights: Weights, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> nn.Module:
    """The family's own `*ForCausalLM` with every block, as `from_pretrained` would give it."""
    config = weights.config
    layout = weights.layout
    state = dict(weights.head_tensors())
    for index in range(weights.num_blocks):
        for name, tensor in weights.block_tensors(index).items():
            state[f"{layout.layers}.{index}.{name}"] = tensor
    model = causal_lm_class(config)(config)
    model.load_state_dict(state, strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()  # type: ignore[operator]
    model.to(device=device, dtype=dtype)
    model.eval()
    return model
