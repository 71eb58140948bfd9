"""Named models: each name (and its aliases) maps to a source of weights.

`load_weights(name)` accepts a registry name or alias, `random:<shape>[@seed]`, or a path to a
local Hugging Face model directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from swarm.models.sources import (
    GEMMA3_270M_SHA256,
    RANDOM_SHAPES,
    GGUFFileSource,
    HFDirSource,
    ModelSource,
    RandomSource,
    gemma3_gguf_path,
    smollm2_gguf_path,
)
from swarm.models.weights import Weights

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: ModelSource
    aliases: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""


REGISTRY: tuple[ModelEntry, ...] = (
    ModelEntry(
        name="smollm2-135m-instruct",
        source=GGUFFileSource(smollm2_gguf_path),
        aliases=("smollm2", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        description="SmolLM2 135M Instruct (Llama family, chat), embedded default",
    ),
    ModelEntry(
        name="gemma3-270m",
        source=GGUFFileSource(gemma3_gguf_path, known_sha256=GEMMA3_270M_SHA256),
        aliases=("gemma-3-270m", "google/gemma-3-270m"),
        description="Gemma 3 270M base (sliding + full attention; completions only)",
    ),
)


class UnknownModelError(KeyError):
    """No registry entry, random shape or directory matches the name."""

    def __str__(self) -> str:
        return str(self.args[0])


def find_entry(name: str) -> ModelEntry | None:
    for entry in REGISTRY:
        if name == entry.name or name in entry.aliases:
            return entry
    return None


def canonical_name(name: str) -> str:
    entry = find_entry(name)
    return entry.name if entry else name


def resolve_source(name: str) -> ModelSource:
    entry = find_entry(name)
    if entry is not None:
        return entry.source
    if name.startswith("random:"):
        shape, _, seed = name.removeprefix("random:").partition("@")
        if shape not in RANDOM_SHAPES:
            known = ", ".join(f"random:{s}" for s in sorted(RANDOM_SHAPES))
            raise UnknownModelError(f"unknown random shape in {name!r} (known: {known})")
        return RandomSource(shape, int(seed) if seed else 0)
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return HFDirSource(path.resolve())
    known = ", ".join(entry.name for entry in REGISTRY)
    raise UnknownModelError(
        f"unknown model {name!r}: not a registry name ({known}), random:<shape> or a model folder"
    )


@lru_cache(maxsize=8)
def load_weights(name: str) -> Weights:
    """The weights of a named model (converted into the local cache on first use)."""
    return resolve_source(name).load(canonical_name(name))
