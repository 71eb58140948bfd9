"""Split inference equals the whole model: prefill, 32 decode steps, rollback, batch > 1."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from swarm.blocks import Cache, Span
from swarm.generate_cli import even_bounds
from swarm.head import Head
from swarm.models import Weights
from swarm.models.reference import build_full_model

TOLERANCE = 1e-4
DECODE_STEPS = 32
PROMPT = "The three most useful things to pack for a week of hiking are"


class Chain:
    """Spans chained in one process, with one cache per span."""

    def __init__(self, weights: Weights, bounds: list[tuple[int, int]]) -> None:
        self.head = Head(weights)
        self.spans = [Span(weights, a, b) for a, b in bounds]
        self.caches: list[Cache] = [s.new_cache() for s in self.spans]

    def logits(self, ids: torch.Tensor, position: int | None = None) -> torch.Tensor:
        hidden = self.head.embed(ids)
        for span, cache in zip(self.spans, self.caches, strict=True):
            hidden = span.forward(hidden, cache, position)
        return self.head.logits(hidden)


class Reference:
    """The whole transformers model, decoding with its own cache."""

    def __init__(self, weights: Weights) -> None:
        self.model = build_full_model(weights)
        self.cache = DynamicCache()

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True)
        return out.logits.float()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _check_prefill_and_decode(
    weights: Weights, bounds: list[tuple[int, int]], prompt_ids: list[int]
) -> None:
    chain, ref = Chain(weights, bounds), Reference(weights)
    ids = torch.tensor([prompt_ids])
    chain_logits, ref_logits = chain.logits(ids), ref.logits(ids)
    assert _max_diff(chain_logits, ref_logits) <= TOLERANCE
    chain_tokens: list[int] = []
    ref_tokens: list[int] = []
    chain_next = int(chain_logits[0, -1].argmax())
    ref_next = int(ref_logits[0, -1].argmax())
    worst = 0.0
    for _ in range(DECODE_STEPS):
        chain_tokens.append(chain_next)
        ref_tokens.append(ref_next)
        chain_step = chain.logits(torch.tensor([[chain_next]]))
        ref_step = ref.logits(torch.tensor([[ref_next]]))
        worst = max(worst, _max_diff(chain_step, ref_step))
        chain_next = int(chain_step[0, -1].argmax())
        ref_next = int(ref_step[0, -1].argmax())
    assert chain_tokens == ref_tokens
    assert worst <= TOLERANCE, f"decode logits differ by {worst}"

    # roll back 5 positions and decode again: the same logits and tokens come back
    length = len(prompt_ids) + DECODE_STEPS
    assert all(cache.length == length for cache in chain.caches)
    rollback_to = length - 5
    replay = torch.tensor([chain_tokens[-5:]])
    again = chain.logits(replay, position=rollback_to)
    assert all(cache.length == length for cache in chain.caches)
    ref_again = Reference(weights).logits(torch.tensor([prompt_ids + chain_tokens]))
    assert _max_diff(again, ref_again[:, -5:]) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("parts", [2, 3])
def test_smollm2_split_equals_full(smollm2: Weights, parts: int) -> None:
    head = Head(smollm2)
    prompt = head.encode_chat([{"role": "user", "content": PROMPT}])
    _check_prefill_and_decode(smollm2, even_bounds(smollm2.num_blocks, parts), prompt)


@pytest.mark.slow
def test_smollm2_uneven_three_spans(smollm2: Weights) -> None:
    head = Head(smollm2)
    prompt = head.encode_text(PROMPT)
    _check_prefill_and_decode(smollm2, [(0, 3), (3, 22), (22, 30)], prompt)


@pytest.mark.slow
# three spans only: two-way splits are covered by SmolLM2 above, and each Gemma3 case costs a
# minute of the suite on two cores
@pytest.mark.parametrize("parts", [3])
def test_gemma3_split_equals_full(gemma3: Weights, parts: int) -> None:
    head = Head(gemma3)
    prompt = head.encode_text(PROMPT)
    _check_prefill_and_decode(gemma3, even_bounds(gemma3.num_blocks, parts), prompt)


@pytest.mark.slow
def test_gemma3_beyond_sliding_window(gemma3: Weights) -> None:
    """A prompt longer than Gemma3's 512-token sliding window, split across 3 spans."""
    head = Head(gemma3)
    words = " ".join(f"item{i}" for i in range(400))
    prompt = head.encode_text(f"Remember this list: {words}. The first item was")
    assert len(prompt) > gemma3.config.sliding_window + 50
    chain, ref = Chain(gemma3, even_bounds(gemma3.num_blocks, 3)), Reference(gemma3)
    ids = torch.tensor([prompt])
    assert _max_diff(chain.logits(ids)[:, -8:], ref.logits(ids)[:, -8:]) <= TOLERANCE
    token = int(ref.logits(torch.tensor([[7]]))[0, -1].argmax())
    assert int(chain.logits(torch.tensor([[7]]))[0, -1].argmax()) == token


@pytest.mark.slow
def test_batch_of_two_equals_each_alone(smollm2: Weights) -> None:
    head = Head(smollm2)
    first = head.encode_text("Once upon a time")
    second = head.encode_text("In a galaxy far")
    assert len(first) == len(second)
    bounds = even_bounds(smollm2.num_blocks, 2)
    together = Chain(smollm2, bounds).logits(torch.tensor([first, second]))
    alone = [Chain(smollm2, bounds).logits(torch.tensor([ids])) for ids in (first, second)]
    assert _max_diff(together[0], alone[0][0]) <= TOLERANCE
    assert _max_diff(together[1], alone[1][0]) <= TOLERANCE


def test_bf16_split_keeps_greedy_tokens(smollm2: Weights) -> None:
    """bf16 spans with fp32 head: the greedy continuation matches the fp32 one."""
    head = Head(smollm2)
    ids = torch.tensor([head.encode_chat([{"role": "user", "content": "What is 2+2?"}])])
    spans32 = [Span(smollm2, a, b) for a, b in even_bounds(smollm2.num_blocks, 2)]
    spans16 = [Span(smollm2, a, b, dtype=torch.bfloat16) for a, b in even_bounds(30, 2)]
    outputs = []
    for spans in (spans32, spans16):
        hidden = head.embed(ids)
        for span in spans:
            hidden = span.forward(hidden, span.new_cache())
        outputs.append(head.logits(hidden.float())[0, -1])
    assert int(outputs[0].argmax()) == int(outputs[1].argmax())
    kl = torch.nn.functional.kl_div(
        outputs[1].log_softmax(-1), outputs[0].log_softmax(-1), log_target=True, reduction="sum"
    )
    assert float(kl) < 0.05
