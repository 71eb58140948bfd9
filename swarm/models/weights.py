"""Model weights as the swarm sees them: a config, a head, and blocks loadable one at a time.

`StoredWeights` reads the canonical on-disk layout that every real source is converted into
(`store.py`): one safetensors file per block, so a peer reads only the blocks of its span.
`RandomWeights` makes seeded random weights of a named shape, block by block, for speed work.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from swarm.models.families import FamilyLayout, layout_for
from swarm.models.hashing import hash_model, hash_tensors

MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.json"
HEAD_FILE = "head.safetensors"
TOKENIZER_DIR = "tokenizer"
BLOCKS_DIR = "blocks"
STORE_FORMAT = 1


def block_file_name(index: int) -> str:
    return f"{index:04d}.safetensors"


def config_essentials(config: PretrainedConfig) -> dict[str, Any]:
    """The config fields that change what the weights compute; part of the model hash."""
    keep = (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "rms_norm_eps",
        "rope_parameters",
        "layer_types",
        "sliding_window",
        "hidden_act",
        "hidden_activation",
        "query_pre_attn_scalar",
        "final_logit_softcapping",
        "attn_logit_softcapping",
        "tie_word_embeddings",
    )
    data = config.to_dict()
    return {key: data[key] for key in keep if key in data}


class Weights(Protocol):
    """What split inference needs from a model's weights."""

    name: str
    config: PretrainedConfig
    layout: FamilyLayout

    @property
    def num_blocks(self) -> int: ...

    def block_tensors(self, index: int) -> dict[str, torch.Tensor]:
        """Tensors of decoder layer `index`, named relative to the layer."""
        ...

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """Embedding, final norm and (if untied) LM head, under their full state-dict names."""
        ...

    def block_hash(self, index: int) -> str: ...

    @property
    def head_hash(self) -> str: ...

    @property
    def model_hash(self) -> str: ...

    def tokenizer(self) -> PreTrainedTokenizerBase: ...


class CorruptWeightsError(RuntimeError):
    """Stored tensors do not match the hashes recorded when they were converted."""


@dataclass
class StoredWeights:
    """Weights in the canonical layout under `root` (see `store.py`)."""

    root: Path
    verify: bool = True
    manifest: dict[str, Any] = field(init=False)
    config: PretrainedConfig = field(init=False)
    layout: FamilyLayout = field(init=False)
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.manifest = json.loads((self.root / MANIFEST_FILE).read_text())
        if self.manifest.get("format") != STORE_FORMAT:
            raise CorruptWeightsError(f"{self.root}: unknown store format")
        self.config = AutoConfig.from_pretrained(str(self.root))
        self.layout = layout_for(self.config.model_type)
        self.name = str(self.manifest["name"])

    @property
    def num_blocks(self) -> int:
        return int(self.config.num_hidden_layers)

    def _checked(self, tensors: dict[str, torch.Tensor], expected: str, what: str) -> None:
        if self.verify and hash_tensors(tensors) != expected:
            raise CorruptWeightsError(f"{self.root}: {what} does not match its recorded hash")

    def block_tensors(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_blocks:
            raise IndexError(f"block {index} outside [0, {self.num_blocks})")
        tensors = load_file(str(self.root / BLOCKS_DIR / block_file_name(index)))
        self._checked(tensors, self.block_hash(index), f"block {index}")
        return tensors

    def head_tensors(self) -> dict[str, torch.Tensor]:
        tensors = load_file(str(self.root / HEAD_FILE))
        self._checked(tensors, self.head_hash, "head")
        return tensors

    def block_hash(self, index: int) -> str:
        return str(self.manifest["block_hashes"][index])

    @property
    def head_hash(self) -> str:
        return str(self.manifest["head_hash"])

    @property
    def model_hash(self) -> str:
        return str(self.manifest["model_hash"])

    def tokenizer(self) -> PreTrainedTokenizerBase:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            str(self.root / TOKENIZER_DIR)
        )
        return tokenizer


@dataclass
class RandomWeights:
    """Seeded random weights of a named config shape, generated one block at a time.

    The content of every tensor is a pure function of (config, seed, tensor name), generated on
    the CPU, so hashes are those of the content without having to materialise the whole model.
    """

    name: str
    config: PretrainedConfig
    seed: int
    tokenizer_model: str | None = None  # a registry model whose tokenizer this one borrows
    layout: FamilyLayout = field(init=False)

    def __post_init__(self) -> None:
        self.layout = layout_for(self.config.model_type)

    @property
    def num_blocks(self) -> int:
        return int(self.config.num_hidden_layers)

    @cached_property
    def _shapes(self) -> tuple[dict[str, torch.Size], dict[str, torch.Size]]:
        from swarm.models.skeleton import block_param_shapes, head_param_shapes

        return block_param_shapes(self.config), head_param_shapes(self.config, self.layout)

    def _generate(self, shapes: dict[str, torch.Size], salt: str) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        std = float(getattr(self.config, "initializer_range", 0.02))
        for name in sorted(shapes):
            seed_bytes = hashlib.sha256(f"{self.seed}/{salt}/{name}".encode()).digest()[:8]
            generator = torch.Generator().manual_seed(int.from_bytes(seed_bytes, "little") >> 1)
            shape = shapes[name]
            if name.endswith("norm.weight") and "gemma" not in self.config.model_type:
                tensors[name] = torch.ones(shape)
            elif name.endswith("norm.weight"):
                tensors[name] = torch.zeros(shape)
            else:
                tensors[name] = torch.randn(shape, generator=generator) * std
        return tensors

    def block_tensors(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_blocks:
            raise IndexError(f"block {index} outside [0, {self.num_blocks})")
        return self._generate(self._shapes[0], f"block/{index}")

    def head_tensors(self) -> dict[str, torch.Tensor]:
        return self._generate(self._shapes[1], "head")

    def _recipe_hash(self, what: str) -> str:
        recipe = {"config": config_essentials(self.config), "seed": self.seed, "what": what}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()

    def block_hash(self, index: int) -> str:
        return self._recipe_hash(f"block/{index}")

    @property
    def head_hash(self) -> str:
        return self._recipe_hash("head")

    @cached_property
    def model_hash(self) -> str:  # hashing every block's recipe is slow: once per object
        blocks = (self.block_hash(i) for i in range(self.num_blocks))
        return hash_model(config_essentials(self.config), self.head_hash, blocks)

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The borrowed tokenizer, loaded on first use (peers never need it)."""
        folder = os.environ.get("SWARMGATE_RANDOM_TOKENIZER")
        if folder:  # a tokenizer folder, for machines without the embedded model's package
            tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(folder)
            return tokenizer
        if self.tokenizer_model is None:
            raise RuntimeError(f"{self.name} has no tokenizer")
        from swarm.models.registry import load_weights

        try:
            return load_weights(self.tokenizer_model).tokenizer()
        except (FileNotFoundError, ImportError) as error:
            missing = f"{self.name}: the tokenizer of {self.tokenizer_model} is missing"
            raise RuntimeError(missing) from error
