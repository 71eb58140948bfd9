"""Where each model family keeps its parts: the small per-family table split inference needs.

A supported model is a decoder-only `*ForCausalLM` whose decoder layers live in a `layers`
ModuleList. Everything else (rotary embeddings, masks) comes from transformers' own base model,
which we run cut down to a span of layers; this table only names the tensors outside the layers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyLayout:
    """Tensor-name prefixes of a family's `*ForCausalLM` state dict."""

    family: str
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    norm: str = "model.norm"
    lm_head: str = "lm_head"
    # config fields holding per-layer attention kinds; sliced together with the layers
    per_layer_config_fields: tuple[str, ...] = ("layer_types",)


_LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "phi3", "granite", "olmo2", "smollm3")

FAMILIES: dict[str, FamilyLayout] = {name: FamilyLayout(family=name) for name in _LLAMA_LIKE}
FAMILIES["gemma3_text"] = FamilyLayout(family="gemma3_text")
FAMILIES["gemma2"] = FamilyLayout(family="gemma2")


class UnsupportedModelError(ValueError):
    """The model's family is not in the table of supported decoder-only families."""


def layout_for(model_type: str) -> FamilyLayout:
    """The layout of a family, by the config's `model_type`."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        supported = ", ".join(sorted(FAMILIES))
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported (supported: {supported})"
        ) from None
