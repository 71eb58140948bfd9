"""On a GPU: the CUDA-graph decode path (host in and out) gives what the eager path gives.

Random Llama-3-8B-shaped blocks 0-4 in bf16: a prefill, then decode steps of one session and of
three sessions together (`forward_many`), eager, with graphs, and with graphs of the compiled
layers (`Span.compile_layers`); prints the largest differences of the outputs between them and
against the same blocks in float32 (the compiled layers must be no further from it than eager).
Then the head's greedy CUDA graphs (`swarm.head_graphs`) against its eager pass: the same token
for every row of batches of 1-64 rows.

    python bench/gpu_graph_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.sampling import argmax_rows  # noqa: E402
from swarm.blocks import Span  # noqa: E402
from swarm.head import Head  # noqa: E402
from swarm.models import Weights, load_weights  # noqa: E402


def run(span: Span, prompts: list[torch.Tensor], steps: list[torch.Tensor]) -> list[torch.Tensor]:
    caches = [span.new_cache() for _ in prompts]
    outs = []
    for prompt, cache in zip(prompts, caches, strict=True):
        span.forward(prompt, cache)
    for step in steps:
        outs.append(span.forward(step[:1], caches[0], to_host=True))
        outs.append(span.forward_many(step, caches, to_host=True))
    for cache in caches:
        cache.release()
    return outs


def main() -> None:
    weights = load_weights("random:llama-3-8b")
    span = Span(weights, 0, 4, dtype=torch.bfloat16, device="cuda")
    torch.manual_seed(0)
    h = weights.config.hidden_size
    prompts = [torch.randn(1, n, h, dtype=torch.bfloat16) for n in (5, 40, 77)]
    steps = [torch.randn(3, 1, h, dtype=torch.bfloat16) for _ in range(6)]
    span.use_graphs = False
    eager = run(span, prompts, steps)
    span.use_graphs = True
    graphed = run(span, prompts, steps)
    assert span.compile_layers(), "torch.compile of the layers needs CUDA and Triton"
    span._graphs = None
    compiled = run(span, prompts, steps)
    exact = Span(weights, 0, 4, dtype=torch.float32, device="cuda")
    exact.use_graphs = False
    reference = run(exact, [p.float() for p in prompts], [s.float() for s in steps])
    scale = max(float(a.float().abs().max()) for a in eager)

    def worst(outputs: list[torch.Tensor], against: list[torch.Tensor]) -> float:
        pairs = zip(outputs, against, strict=True)
        return max(float((a.float() - b.float().cpu()).abs().max()) for a, b in pairs)

    devices = {str(t.device) for t in graphed + compiled}
    print(
        f"outputs up to {scale:.2f}; max abs difference: graph vs eager {worst(graphed, eager):.4f}, "
        f"compiled graph vs eager {worst(compiled, eager):.4f}; against float32: eager "
        f"{worst(eager, reference):.4f}, graph {worst(graphed, reference):.4f}, compiled graph "
        f"{worst(compiled, reference):.4f}; {devices}"
    )
    assert devices == {"cpu"} and worst(graphed, eager) <= 0.02 * scale, "the graph path differs"
    assert worst(compiled, reference) <= 1.5 * worst(eager, reference) + 0.01 * scale, (
        "the compiled layers are further from float32 than the eager ones"
    )
    check_head(weights)


def check_head(weights: Weights) -> None:
    """The greedy head graphs against the eager pass: the graph's pick of each row is the
    eager pass's best token, or ties with it within bf16 rounding (the graphs run padded row
    buckets, whose matmuls may round differently)."""
    head = Head(weights, dtype=torch.bfloat16, device="cuda")
    assert head.capture_greedy_graphs()
    assert head.graphs is not None
    h = head.hidden_size
    differing = near = total = 0
    for rows in (1, 3, 16, 33, 64):
        hidden = torch.randn(rows, 1, h, dtype=torch.bfloat16) * 4
        graph_ids, graph_best = head.graphs.argmax(hidden)
        logits = head.logits(hidden)[:, -1]
        eager_ids, eager_best = argmax_rows(logits)
        for row, (mine, best) in enumerate(zip(graph_ids, eager_best, strict=True)):
            total += 1
            if mine == eager_ids[row]:
                continue
            differing += 1
            # bf16 has 8 bits of mantissa: a tie within 1 % of the logit is rounding
            near += float(logits[row, mine]) >= best - 0.01 * abs(best)
        gap = max(abs(a - b) for a, b in zip(graph_best, eager_best, strict=True))
        assert gap <= 0.01 * max(abs(b) for b in eager_best), f"{rows} rows: logits differ"
    print(f"head graphs vs eager: {differing} of {total} greedy tokens differ, {near} of them ties")
    assert differing == near, "the head's greedy graphs pick other tokens than its eager pass"


if __name__ == "__main__":
    main()
