"""The paged span: batched decode over pages equals each session alone; pages are reused safely."""

from __future__ import annotations

import pytest
import torch

from swarm.blocks import Span
from swarm.cuda_graphs import bucket
from swarm.kv_pages import PagedCache
from swarm.llama_span import LlamaSpanModule
from swarm.models import Weights

TOLERANCE = 1e-5  # relative to the largest activation (these layers have outliers in the 100s)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) <= TOLERANCE * max(1.0, float(b.abs().max()))


def _hidden(n: int, seed: int, size: int) -> torch.Tensor:
    return torch.randn(1, n, size, generator=torch.Generator().manual_seed(seed)) * 0.5


def test_batched_decode_over_pages_equals_each_session_alone(smollm2: Weights) -> None:
    span = Span(smollm2, 0, 4)
    reference = Span(smollm2, 0, 4, paged=False)
    assert span.paged and not reference.paged
    size = span.hidden_size
    prompts = [_hidden(n, seed, size) for seed, n in enumerate((3, 40, 70))]  # across pages
    steps = [[_hidden(1, 100 + 10 * s + i, size) for i in range(6)] for s in range(3)]
    batched = [span.new_cache() for _ in prompts]
    for prompt, cache in zip(prompts, batched, strict=True):
        span.forward(prompt, cache)
    outputs = []
    for i in range(6):
        hidden = torch.cat([steps[s][i] for s in range(3)])
        outputs.append(span.forward_many(hidden, batched))
    for s, prompt in enumerate(prompts):
        cache = reference.new_cache()
        reference.forward(prompt, cache)
        for i in range(6):
            alone = reference.forward(steps[s][i], cache)
            assert _close(outputs[i][s], alone[0])
        assert batched[s].length == prompt.shape[1] + 6


def test_rollback_then_redecode_matches(smollm2: Weights) -> None:
    span = Span(smollm2, 0, 3)
    size = span.hidden_size
    prompt, a, b = _hidden(20, 1, size), _hidden(5, 2, size), _hidden(5, 3, size)
    cache = span.new_cache()
    span.forward(prompt, cache)
    span.forward(a, cache)
    cache.rollback(20)
    after_rollback = span.forward(b, cache)
    fresh = span.new_cache()
    span.forward(prompt, fresh)
    assert torch.equal(after_rollback, span.forward(b, fresh))


def test_released_pages_are_reused_without_touching_live_sessions(smollm2: Weights) -> None:
    span = Span(smollm2, 0, 2)
    assert span.pool is not None
    size = span.hidden_size
    live, gone = span.new_cache(), span.new_cache()
    span.forward(_hidden(50, 4, size), live)
    span.forward(_hidden(90, 5, size), gone)
    assert isinstance(gone, PagedCache)
    free_before = span.pool.free_pages
    gone.release()
    span.forward(_hidden(1, 6, size), live)  # a step begins: the released pages are free
    assert span.pool.free_pages == free_before + span.pool.pages_for(90)
    newcomer = span.new_cache()
    span.forward(_hidden(90, 7, size), newcomer)  # takes the released pages
    probe = _hidden(1, 8, size)
    got = span.forward(probe, live, 51)
    check = span.new_cache()
    span.forward(_hidden(50, 4, size), check)
    span.forward(_hidden(1, 6, size), check)
    assert _close(got, span.forward(probe, check))


def test_pool_growth_keeps_every_session(smollm2: Weights) -> None:
    span = Span(smollm2, 0, 2)
    assert span.pool is not None
    size = span.hidden_size
    capacity = span.pool.capacity
    caches = [span.new_cache() for _ in range(3)]
    for seed, cache in enumerate(caches):
        span.forward(_hidden(capacity * span.pool.page_size // 2, seed, size), cache)
    assert span.pool.capacity > capacity and span.pool.generation > 0
    probe = _hidden(1, 99, size)
    for seed, cache in enumerate(caches):
        fresh = span.new_cache()
        span.forward(_hidden(capacity * span.pool.page_size // 2, seed, size), fresh)
        assert torch.equal(span.forward(probe, cache), span.forward(probe, fresh))


def test_padding_rows_and_pages_leaves_the_real_rows_unchanged(smollm2: Weights) -> None:
    """What a captured CUDA graph replays: rows and pages rounded up, padding on scratch page 0."""
    span = Span(smollm2, 0, 2)
    assert span.pool is not None and isinstance(span.module, LlamaSpanModule)
    size = span.hidden_size
    caches = [span.new_cache() for _ in range(3)]
    for seed, (cache, n) in enumerate(zip(caches, (5, 40, 33), strict=True)):
        span.forward(_hidden(n, seed, size), cache)
    lengths = [c.length for c in caches]
    for cache, length in zip(caches, lengths, strict=True):
        assert isinstance(cache, PagedCache)
        cache.prepare(1, length + 1)
    pages = span.pool.pages_for(max(lengths) + 1)
    table = torch.cat([c.page_table(pages) for c in caches])  # type: ignore[union-attr]
    positions = torch.tensor(lengths).unsqueeze(1)
    x = torch.cat([_hidden(1, 50 + i, size) for i in range(3)])
    with torch.inference_mode():
        exact = span.module(x, positions, table, span.pool)
        rows, padded_pages = bucket(3), bucket(pages, 4) * 2
        xp = torch.zeros(rows, 1, size)
        xp[:3] = x
        pp = torch.zeros(rows, 1, dtype=torch.int64)
        pp[:3] = positions
        tp = torch.zeros(rows, padded_pages, dtype=torch.int64)
        tp[:3, :pages] = table
        padded = span.module(xp, pp, tp, span.pool)[:3]
    assert rows == 4 and padded_pages > pages
    assert _close(padded, exact)


def test_packed_linears_give_the_same_prefill_and_batched_decode(smollm2: Weights) -> None:
    packed, plain = Span(smollm2, 0, 4), Span(smollm2, 0, 4)
    expected_bytes = plain.parameter_bytes()
    if not packed.pack_linears():
        pytest.skip("no oneDNN packed kernels in this torch")
    assert packed.packed and not plain.packed
    assert packed.parameter_bytes() == expected_bytes
    size = packed.hidden_size
    prompts = [_hidden(n, seed, size) for seed, n in enumerate((3, 40))]
    caches = {span: [span.new_cache() for _ in prompts] for span in (packed, plain)}
    for span, span_caches in caches.items():
        for prompt, cache in zip(prompts, span_caches, strict=True):
            span.forward(prompt, cache)
    for i in range(4):
        hidden = torch.cat([_hidden(1, 200 + 10 * s + i, size) for s in range(len(prompts))])
        got = packed.forward_many(hidden, caches[packed])
        assert _close(got, plain.forward_many(hidden, caches[plain]))
    prompt = _hidden(9, 7, size)
    assert _close(
        packed.forward(prompt, packed.new_cache()), plain.forward(prompt, plain.new_cache())
    )


def test_only_fp32_cpu_paged_unquantized_spans_pack(smollm2: Weights) -> None:
    assert not Span(smollm2, 0, 1, dtype=torch.bfloat16).pack_linears()
    assert not Span(smollm2, 0, 1, paged=False).pack_linears()
    quantized = Span(smollm2, 0, 1)
    quantized.quant = "int8"
    assert not quantized.pack_linears()
