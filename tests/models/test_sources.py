"""Model sources: registry names and aliases, random shapes, local Hugging Face folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from swarm.blocks import Span
from swarm.head import Head
from swarm.models import UnknownModelError, Weights, load_weights
from swarm.models.registry import resolve_source
from swarm.models.sources import RandomSource


def test_aliases_resolve_to_the_same_model(smollm2: Weights) -> None:
    assert load_weights("smollm2").model_hash == smollm2.model_hash
    assert load_weights("HuggingFaceTB/SmolLM2-135M-Instruct").name == "smollm2-135m-instruct"


def test_unknown_model_names_are_clear() -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        resolve_source("nope")
    with pytest.raises(UnknownModelError, match="random:llama-3-8b"):
        resolve_source("random:nope")


def test_random_weights_are_seeded_and_blockwise() -> None:
    first = RandomSource("llama-tiny", seed=1, tokenizer_model=None).load("t")
    again = RandomSource("llama-tiny", seed=1, tokenizer_model=None).load("t")
    other = RandomSource("llama-tiny", seed=2, tokenizer_model=None).load("t")
    assert first.model_hash == again.model_hash != other.model_hash
    for key, tensor in first.block_tensors(2).items():
        assert torch.equal(tensor, again.block_tensors(2)[key])
    assert not torch.equal(
        first.block_tensors(2)["mlp.up_proj.weight"], other.block_tensors(2)["mlp.up_proj.weight"]
    )
    span = Span(first, 1, 3)
    out = span.forward(torch.randn(2, 5, 64), span.new_cache())
    assert out.shape == (2, 5, 64) and torch.isfinite(out).all()


def test_random_llama_3_8b_shape_without_materialising() -> None:
    weights = RandomSource("llama-3-8b", tokenizer_model=None).load("random:llama-3-8b")
    assert weights.num_blocks == 32 and weights.config.hidden_size == 4096
    assert len({weights.block_hash(i) for i in range(32)}) == 32


def _tiny_hf_folder(path: Path) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(str(path))
    return model


def test_local_hf_folder_split_equals_full(tmp_path: Path, smollm2: Weights) -> None:
    model = _tiny_hf_folder(tmp_path / "tiny")
    weights = load_weights(str(tmp_path / "tiny"))
    assert weights.num_blocks == 5 and weights.config.model_type == "llama"
    head = Head(weights, tokenizer=smollm2.tokenizer())  # the folder has no tokenizer
    ids = torch.tensor([[1, 5, 7, 200, 42]])
    hidden = head.embed(ids)
    for start, end in [(0, 2), (2, 5)]:
        span = Span(weights, start, end)
        hidden = span.forward(hidden, span.new_cache())
    with torch.inference_mode():
        expected = model(ids).logits
    assert float((head.logits(hidden) - expected).abs().max()) <= 1e-5


def test_hf_folder_that_is_not_a_causal_lm_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    with pytest.raises(ValueError, match="ForCausalLM"):
        load_weights(str(folder))
