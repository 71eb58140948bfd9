"""The converted-model cache: every real source is converted once into a canonical layout.

    <cache>/models/<name>-<source fingerprint[:16]>/
        config.json            the model's config (no quantization info: tensors are dequantized)
        tokenizer/             tokenizer files, when the source has a tokenizer
        head.safetensors       embeddings, final norm, LM head (if untied), full names
        blocks/0000.safetensors  one file per decoder layer, names relative to the layer
        manifest.json          name, source fingerprint, per-block and head hashes, model hash

Converting GGUF takes tens of seconds (the gguf package parses vocabularies in Python);
reloading the converted copy takes under a second, and a peer reads only its blocks' files.
Conversion is safe against concurrent processes: a file lock and an atomic rename.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from swarm.models.families import FamilyLayout, layout_for
from swarm.models.hashing import hash_model, hash_tensors
from swarm.models.weights import (
    BLOCKS_DIR,
    HEAD_FILE,
    MANIFEST_FILE,
    STORE_FORMAT,
    TOKENIZER_DIR,
    block_file_name,
    config_essentials,
)

log = logging.getLogger("swarmgate.models")


def cache_root() -> Path:
    """Where converted models live: $SWARMGATE_CACHE or ~/.cache/swarmgate."""
    env = os.environ.get("SWARMGATE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "swarmgate"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def split_state_dict(
    state: dict[str, torch.Tensor], layout: FamilyLayout, num_blocks: int
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Split a `*ForCausalLM` state dict into head tensors and per-block tensors."""
    blocks: list[dict[str, torch.Tensor]] = [{} for _ in range(num_blocks)]
    head: dict[str, torch.Tensor] = {}
    layers_prefix = f"{layout.layers}."
    for name, tensor in state.items():
        if name.startswith(layers_prefix):
            index_text, rest = name[len(layers_prefix) :].split(".", 1)
            blocks[int(index_text)][rest] = tensor.contiguous()
        elif name.startswith((layout.embed + ".", layout.norm + ".", layout.lm_head + ".")):
            head[name] = tensor.contiguous()
    return head, blocks


def write_store(
    target: Path,
    name: str,
    fingerprint: str,
    config: PretrainedConfig,
    head: dict[str, torch.Tensor],
    blocks: list[dict[str, torch.Tensor]],
    tokenizer: PreTrainedTokenizerBase | None,
) -> None:
    """Write a converted model atomically into `target` (which must not exist yet)."""
    layout = layout_for(config.model_type)
    if getattr(config, "tie_word_embeddings", False):
        head.pop(f"{layout.lm_head}.weight", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        config_data = config.to_dict()
        config_data.pop("quantization_config", None)
        config_data.pop("_name_or_path", None)
        (staging / "config.json").write_text(json.dumps(config_data, indent=2, sort_keys=True))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
        save_file(head, str(staging / HEAD_FILE))
        (staging / BLOCKS_DIR).mkdir()
        block_hashes = []
        for index, tensors in enumerate(tqdm(blocks, desc=f"writing {name} blocks", leave=False)):
            if not tensors:
                raise ValueError(f"{name}: block {index} has no tensors")
            save_file(tensors, str(staging / BLOCKS_DIR / block_file_name(index)))
            block_hashes.append(hash_tensors(tensors))
        head_hash = hash_tensors(head)
        manifest = {
            "format": STORE_FORMAT,
            "name": name,
            "fingerprint": fingerprint,
            "dtype": str(next(iter(head.values())).dtype).removeprefix("torch."),
            "head_hash": head_hash,
            "block_hashes": block_hashes,
            "model_hash": hash_model(config_essentials(config), head_hash, block_hashes),
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def store_dir(name: str, fingerprint: str) -> Path:
    return cache_root() / "models" / f"{name}-{fingerprint[:16]}"


@contextmanager
def conversion_lock(name: str, fingerprint: str) -> Iterator[Path]:
    """Hold the conversion lock of one source; yields the target directory."""
    target = store_dir(name, fingerprint)
    with _file_lock(target.parent / f".{target.name}.lock"):
        yield target
