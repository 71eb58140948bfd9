"""Content hashes of blocks and models: the same weights give the same hashes everywhere.

A tensor set is hashed in a canonical form: names sorted, and for each tensor its name, dtype,
shape and its bytes in little-endian, C-contiguous layout. The model hash covers the family
config essentials, the head's tensors and every block hash, in block order; it is the model's
identity in the swarm.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping

import torch

_HASH_VERSION = b"swarmgate-tensors-v1\n"


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    raw = flat.view(torch.uint8)
    if sys.byteorder != "little" and tensor.element_size() > 1:
        raw = raw.reshape(-1, tensor.element_size()).flip(1).reshape(-1)
    return raw.numpy().tobytes()


def hash_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex of a named tensor set in canonical order and byte layout."""
    digest = hashlib.sha256(_HASH_VERSION)
    for name in sorted(tensors):
        tensor = tensors[name]
        meta = f"{name}\t{str(tensor.dtype).removeprefix('torch.')}\t{list(tensor.shape)}\n"
        digest.update(meta.encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def hash_model(
    config_essentials: Mapping[str, object], head_hash: str, block_hashes: Iterable[str]
) -> str:
    """sha256 hex identifying a whole model: its shape, its head and its blocks in order."""
    digest = hashlib.sha256(b"swarmgate-model-v1\n")
    digest.update(json.dumps(config_essentials, sort_keys=True).encode())
    digest.update(b"\nhead " + head_hash.encode())
    for index, block_hash in enumerate(block_hashes):
        digest.update(f"\nblock {index} {block_hash}".encode())
    return digest.hexdigest()


def file_sha256(path: str, chunk_bytes: int = 1 << 20) -> str:
    """sha256 hex of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
