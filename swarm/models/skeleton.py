"""Cut-down transformers modules: a span of decoder layers, or the head without any layers.

We never reimplement a family's layers. A span is transformers' own base model (`MODEL_MAPPING`)
built from a config cut down to the span's layers, with its final norm removed and a dummy
embedding; it runs on `inputs_embeds` at absolute `position_ids`, so rotary embeddings and
(sliding-window) masks are the family's own. Modules are built on the meta device and receive
their real tensors by assignment, so only the span's weights are ever allocated.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

from swarm.models.families import FamilyLayout


def base_model_class(config: PretrainedConfig) -> type[nn.Module]:
    """The family's base model class (decoder layers, no LM head)."""
    cls: type[nn.Module] = MODEL_MAPPING[type(config)]  # type: ignore[assignment]
    return cls


def causal_lm_class(config: PretrainedConfig) -> type[nn.Module]:
    """The family's `*ForCausalLM` class."""
    cls: type[nn.Module] = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # type: ignore[assignment]
    return cls


def cut_config(
    config: PretrainedConfig, layout: FamilyLayout, start: int, end: int
) -> PretrainedConfig:
    """A copy of `config` describing only decoder layers [start, end), renumbered from 0."""
    data = config.to_dict()
    data.pop("quantization_config", None)
    data["num_hidden_layers"] = end - start
    for field_name in layout.per_layer_config_fields:
        if data.get(field_name) is not None:
            data[field_name] = list(data[field_name])[start:end]
    cut: PretrainedConfig = type(config).from_dict(data)
    return cut


def _meta_tensors(module: nn.Module) -> list[str]:
    named = [*module.named_parameters(), *module.named_buffers()]
    return [name for name, tensor in named if tensor.is_meta]


def _rebuild_rotary(model: nn.Module, config: PretrainedConfig, device: torch.device) -> None:
    """Recreate rotary-embedding modules (buffers only, fp32) on the target device."""
    for name, child in list(model.named_children()):
        if "rotary" in name:
            setattr(model, name, type(child)(config).to(device))


def build_span_module(
    config: PretrainedConfig,
    layout: FamilyLayout,
    start: int,
    end: int,
    layer_tensors: dict[int, dict[str, torch.Tensor]],
    dtype: torch.dtype,
    device: torch.device,
) -> nn.Module:
    """The family's base model holding exactly layers [start, end) with the given tensors."""
    span_config = cut_config(config, layout, start, end)
    span_config.vocab_size = 1
    span_config.pad_token_id = None
    with torch.device("meta"):
        model: nn.Module = base_model_class(span_config)(span_config)
    layers_attr = layout.layers.split(".")[-1]
    state: dict[str, torch.Tensor] = {}
    for index in range(start, end):
        for name, tensor in layer_tensors[index].items():
            state[f"{layers_attr}.{index - start}.{name}"] = tensor.to(device=device, dtype=dtype)
    _missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise ValueError(f"unexpected tensors for span [{start}, {end}): {unexpected[:5]}")
    model.norm = nn.Identity()
    hidden = int(span_config.hidden_size)
    model.embed_tokens = nn.Embedding(1, hidden, device=device, dtype=dtype)
    _rebuild_rotary(model, span_config, device)
    left = _meta_tensors(model)
    if left:
        raise ValueError(f"span [{start}, {end}) has tensors with no weights: {left[:5]}")
    model.eval()
    return model


def build_head_module(
    config: PretrainedConfig,
    layout: FamilyLayout,
    head_tensors: dict[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device,
) -> nn.Module:
    """The family's `*ForCausalLM` with no decoder layers: embeddings, final norm, LM head."""
    head_config = cut_config(config, layout, 0, 0)
    with torch.device("meta"):
        model: nn.Module = causal_lm_class(head_config)(head_config)
    state = {name: tensor.to(device=device, dtype=dtype) for name, tensor in head_tensors.items()}
    if getattr(config, "tie_word_embeddings", False) or f"{layout.lm_head}.weight" not in state:
        state[f"{layout.lm_head}.weight"] = state[f"{layout.embed}.weight"]
    model.load_state_dict(state, strict=False, assign=True)
    base = model.get_submodule(layout.embed.rsplit(".", 1)[0])
    for name, _child in list(base.named_children()):
        if "rotary" in name:  # positions are the spans' business
            setattr(base, name, nn.Identity())
    embed = model.get_submodule(layout.embed)
    scale = getattr(embed, "embed_scale", None)
    if isinstance(scale, torch.Tensor) and scale.is_meta:  # Gemma's scaled embedding
        real_scale = float(embed.scalar_embed_scale)  # type: ignore[arg-type]
        embed.embed_scale = torch.tensor(real_scale, device=device)
    left = _meta_tensors(model)
    if left:
        raise ValueError(f"head has tensors with no weights: {left[:5]}")
    model.eval()
    return model


def _param_shapes(module: nn.Module) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in module.state_dict().items()}


def block_param_shapes(config: PretrainedConfig) -> dict[str, torch.Size]:
    """Names (relative to a layer) and shapes of one decoder layer's tensors."""
    from swarm.models.families import layout_for

    layout = layout_for(config.model_type)
    one = cut_config(config, layout, 0, 1)
    one.vocab_size = 1
    one.pad_token_id = None
    with torch.device("meta"):
        model = base_model_class(one)(one)
    layers_attr = layout.layers.split(".")[-1]
    prefix = f"{layers_attr}.0."
    return {k[len(prefix) :]: v for k, v in _param_shapes(model).items() if k.startswith(prefix)}


def head_param_shapes(config: PretrainedConfig, layout: FamilyLayout) -> dict[str, torch.Size]:
    """Names and shapes of the head's tensors (the LM head only when untied)."""
    head_config = cut_config(config, layout, 0, 0)
    with torch.device("meta"):
        model = causal_lm_class(head_config)(head_config)
    shapes = _param_shapes(model)
    if getattr(config, "tie_word_embeddings", False):
        shapes.pop(f"{layout.lm_head}.weight", None)
    return shapes
