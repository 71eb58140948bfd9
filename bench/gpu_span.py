"""Decode-step time of a peer's span on a GPU, random Llama-3-8B shape, by runtime.

Runs the peer's compute path (a `Span` built the way `swarmgate peer` builds it) and times decode
steps at batch 1 with 128 cached positions, plus batched steps of 8 and 32 sessions through
`forward_many`, for: transformers' own layers (eager, DynamicCache: the baseline, measured in the
same run), our paged layers eager, our paged layers with CUDA graphs, and paged nf4. Also checks
the paged output against transformers' (bf16). Prints a table and writes JSON to $OUT or
./bench-out.

    python bench/gpu_span.py --blocks 16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peer.quant import quantize_linears
from swarm.blocks import Span
from swarm.models.sources import RandomSource


def timed_steps(span: Span, batch: int, context: int, steps: int) -> float:
    """Median seconds of one decode step for `batch` sessions with `context` cached positions."""
    device = span.device
    hidden = torch.randn(1, context, span.hidden_size, device=device, dtype=span.dtype) * 0.1
    caches = [span.new_cache() for _ in range(batch)]
    for cache in caches:
        span.forward(hidden, cache)
    step_in = torch.randn(batch, 1, span.hidden_size, device=device, dtype=span.dtype) * 0.1
    times = []
    for i in range(steps + 3):
        torch.cuda.synchronize()
        started = time.perf_counter()
        if batch == 1:
            span.forward(step_in, caches[0])
        else:
            span.forward_many(step_in, caches)
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


class CachedWeights:
    """Random weights whose blocks are generated once and reused by every variant."""

    def __init__(self, weights: Any) -> None:
        self.inner = weights
        self._blocks: dict[int, dict[str, torch.Tensor]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def block_tensors(self, index: int) -> dict[str, torch.Tensor]:
        if index not in self._blocks:
            self._blocks[index] = self.inner.block_tensors(index)
        return self._blocks[index]


VARIANTS = {
    "transformers eager": {"paged": False, "graphs": False, "quant": "none"},
    "paged eager": {"paged": True, "graphs": False, "quant": "none"},
    "paged + CUDA graphs": {"paged": True, "graphs": True, "quant": "none"},
    "paged nf4 eager": {"paged": True, "graphs": False, "quant": "nf4"},
}


def agreement(spans: dict[str, Span]) -> float:
    """Largest relative difference between paged and transformers outputs (prefill + 4 steps)."""
    outputs = {}
    for name, span in spans.items():
        gen = torch.Generator().manual_seed(0)
        hidden = torch.randn(1, 40, span.hidden_size, generator=gen) * 0.1
        cache = span.new_cache()
        outs = [span.forward(hidden.to(span.device, span.dtype), cache)[:, -1]]
        for _ in range(4):
            step = torch.randn(1, 1, span.hidden_size, generator=gen) * 0.1
            outs.append(span.forward(step.to(span.device, span.dtype), cache)[:, -1])
        outputs[name] = torch.cat(outs).float()
    ref = outputs.pop("transformers eager")
    return max(float((o - ref).abs().max() / ref.abs().max()) for o in outputs.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    device = torch.device("cuda")
    weights = CachedWeights(
        RandomSource("llama-3-8b", tokenizer_model=None).load("random:llama-3-8b")
    )
    rows = []
    check: dict[str, Span] = {}
    for name, variant in VARIANTS.items():
        if variant["quant"] != "none" and importlib.util.find_spec("bitsandbytes") is None:
            print(f"skipping {name}: bitsandbytes is not installed", flush=True)
            continue
        started = time.perf_counter()
        span = Span(weights, 0, args.blocks, torch.bfloat16, device, paged=bool(variant["paged"]))
        span.use_graphs = bool(variant["graphs"])
        if variant["quant"] != "none":
            quantize_linears(span.module, variant["quant"], torch.bfloat16)  # type: ignore[arg-type]
            span.quant = str(variant["quant"])
        load_s = time.perf_counter() - started
        if name in ("transformers eager", "paged + CUDA graphs"):
            check[name] = span
        for batch in (1, 8, 32):
            step = timed_steps(span, batch, 128, args.steps)
            rows.append(
                {
                    "variant": name,
                    "batch": batch,
                    "blocks": args.blocks,
                    "step_ms": step * 1e3,
                    "ms_per_block": step * 1e3 / args.blocks,
                    "tokens_per_s": batch / step,
                    "load_s": load_s,
                }
            )
            print(rows[-1], flush=True)
        if name not in check:
            del span
        torch.cuda.empty_cache()
    diff = agreement(check)
    base = {r["batch"]: r["step_ms"] for r in rows if r["variant"] == "transformers eager"}
    print(f"{'variant':22} {'batch':>5} {'step ms':>9} {'ms/block':>9} {'tok/s':>9} {'speedup':>8}")
    for r in rows:
        r["speedup_vs_transformers"] = base[r["batch"]] / r["step_ms"]
        print(
            f"{r['variant']:22} {r['batch']:>5} {r['step_ms']:>9.2f} {r['ms_per_block']:>9.3f} {r['tokens_per_s']:>9.1f} {r['speedup_vs_transformers']:>8.2f}"
        )
    print(f"paged+graphs vs transformers, bf16, max relative difference: {diff:.4f}")
    out = Path(os.environ.get("OUT", "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_span.json").write_text(
        json.dumps(
            {"device": torch.cuda.get_device_name(), "rows": rows, "max_rel_diff": diff}, indent=1
        )
    )


if __name__ == "__main__":
    main()
