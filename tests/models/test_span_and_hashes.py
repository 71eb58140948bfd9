"""A span holds only its blocks; content hashes are canonical and stable across processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from swarm.blocks import Span
from swarm.head import Head
from swarm.models import Weights, spec_of
from swarm.models.hashing import hash_tensors


def test_span_10_to_19_holds_only_its_blocks(smollm2: Weights) -> None:
    span = Span(smollm2, 10, 20, paged=False)
    expected: dict[str, torch.Tensor] = {}
    for index in range(10, 20):
        for name, tensor in smollm2.block_tensors(index).items():
            expected[f"layers.{index - 10}.{name}"] = tensor
    params = dict(span.module.named_parameters())
    # every parameter besides the 1-row dummy embedding is one of blocks 10..19
    dummy = params.pop("embed_tokens.weight")
    assert dummy.shape[0] == 1
    assert set(params) == set(expected)
    for name, param in params.items():
        assert torch.equal(param, expected[name]), name
    block_bytes = sum(t.numel() * t.element_size() for t in expected.values())
    assert span.parameter_bytes() - dummy.numel() * dummy.element_size() == block_bytes
    # and nothing of the embedding table, other blocks or the final norm
    assert len(span.module.layers) == 10
    assert not isinstance(span.module.norm, type(Head(smollm2).norm))
    assert span.block_hashes == tuple(smollm2.block_hash(i) for i in range(10, 20))


def test_paged_span_10_to_19_holds_exactly_its_blocks_fused(smollm2: Weights) -> None:
    span = Span(smollm2, 10, 20)
    assert span.paged and len(span.module.layers) == 10
    blocks = [smollm2.block_tensors(i) for i in range(10, 20)]
    block_bytes = sum(t.numel() * t.element_size() for b in blocks for t in b.values())
    assert span.parameter_bytes() == block_bytes  # no embedding, no norm, no other block
    for layer, block in zip(span.module.layers, blocks, strict=True):
        attn = [block[f"self_attn.{n}_proj.weight"] for n in "qkv"]
        assert torch.equal(layer.qkv.weight, torch.cat(attn))
        mlp = [block[f"mlp.{n}_proj.weight"] for n in ("gate", "up")]
        assert torch.equal(layer.gate_up.weight, torch.cat(mlp))
        assert torch.equal(layer.down.weight, block["mlp.down_proj.weight"])
        assert torch.equal(layer.norm_in, block["input_layernorm.weight"])


def test_hash_is_canonical_and_sensitive() -> None:
    a = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    reordered = {"b": torch.ones(3), "w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    assert hash_tensors(a) == hash_tensors(reordered)
    transposed_copy = {"w": a["w"].t().contiguous().t(), "b": a["b"]}
    assert hash_tensors(transposed_copy) == hash_tensors(a)
    changed = {"w": a["w"].clone(), "b": a["b"]}
    changed["w"][1, 2] += 1e-6
    assert hash_tensors(changed) != hash_tensors(a)
    assert hash_tensors({"w": a["w"].to(torch.bfloat16), "b": a["b"]}) != hash_tensors(a)
    assert hash_tensors({"w": a["w"].reshape(3, 2), "b": a["b"]}) != hash_tensors(a)


def test_block_hashes_match_the_tensors(smollm2: Weights) -> None:
    for index in (0, 17, 29):
        assert hash_tensors(smollm2.block_tensors(index)) == smollm2.block_hash(index)
    assert len(set(smollm2.block_hash(i) for i in range(smollm2.num_blocks))) == 30


def test_spec_of_smollm2(smollm2: Weights) -> None:
    spec = spec_of(smollm2)
    assert (spec.family, spec.num_blocks, spec.hidden_size, spec.vocab_size) == (
        "llama",
        30,
        576,
        49152,
    )
    assert spec.chat_template and "<|im_start|>" in spec.chat_template
    assert len(spec.model_hash) == 64


@pytest.mark.slow
def test_same_hashes_in_another_process(smollm2: Weights) -> None:
    code = (
        "import json; from swarm.models import load_weights; "
        "w = load_weights('smollm2'); "
        "from swarm.models.hashing import hash_tensors; "
        "print(json.dumps([w.model_hash, hash_tensors(w.block_tensors(3))]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    model_hash, block3 = json.loads(out.stdout.strip().splitlines()[-1])
    assert model_hash == smollm2.model_hash
    assert block3 == smollm2.block_hash(3)
