"""`ModelSpec`: what every process must agree on about a model, and its swarm identity."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from swarm.models.weights import Weights


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    num_blocks: int
    hidden_size: int
    vocab_size: int
    max_context: int
    chat_template: str | None
    dtype: str
    block_hashes: tuple[str, ...]
    model_hash: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["block_hashes"] = list(self.block_hashes)
        return data


def spec_of(weights: Weights, with_tokenizer: bool = True) -> ModelSpec:
    """The spec of loaded weights (reads the tokenizer for its chat template when asked)."""
    config = weights.config
    chat_template = None
    if with_tokenizer:
        try:
            chat_template = weights.tokenizer().chat_template
        except (RuntimeError, OSError):
            chat_template = None
    dtype = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    return ModelSpec(
        name=weights.name,
        family=str(config.model_type),
        num_blocks=weights.num_blocks,
        hidden_size=int(config.hidden_size),
        vocab_size=int(config.vocab_size),
        max_context=int(getattr(config, "max_position_embeddings", 2048)),
        chat_template=chat_template,
        dtype=dtype,
        block_hashes=tuple(weights.block_hash(i) for i in range(weights.num_blocks)),
        model_hash=weights.model_hash,
    )
