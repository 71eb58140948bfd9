"""On a GPU: the CUDA-graph decode path (host in and out) gives what the eager path gives.

Random Llama-3-8B-shaped blocks 0-4 in bf16: a prefill, then decode steps of one session and of
three sessions together (`forward_many`), once with graphs and once eager; prints the largest
difference of the outputs (bf16 rounding only: both run the same kernels' math).

    python bench/gpu_graph_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swarm.blocks import Span  # noqa: E402
from swarm.models import load_weights  # noqa: E402


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
    worst = max(
        float((a.float() - b.float()).abs().max()) for a, b in zip(eager, graphed, strict=True)
    )
    scale = max(float(a.float().abs().max()) for a in eager)
    devices = {str(t.device) for t in graphed}
    print(f"graph vs eager: max abs difference {worst:.4f} (outputs up to {scale:.2f}); {devices}")
    assert devices == {"cpu"} and worst <= 0.02 * scale, "the graph path differs"


if __name__ == "__main__":
    main()
