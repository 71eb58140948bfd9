"""Decode-step time per block of a peer's span on a GPU (bf16 and nf4), random Llama-3-8B shape.

Runs the peer's compute path (a `Span` built the way `swarmgate peer` builds it, quantized the way
`--quant nf4` does) and times decode steps at batch 1 with 128 cached positions, plus batched
steps of 8 and 32 sessions through `forward_many`. Baseline in the same run: the same span in
bf16, so nf4 is reported as a ratio. Prints a table and writes JSON to $OUT or ./bench-out.

    python bench/gpu_span.py --blocks 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    device = torch.device("cuda")
    weights = RandomSource("llama-3-8b", tokenizer_model=None).load("random:llama-3-8b")
    rows = []
    for quant in ("none", "nf4"):
        started = time.perf_counter()
        span = Span(weights, 0, args.blocks, dtype=torch.bfloat16, device=device)
        if quant != "none":
            quantize_linears(span.module, quant, torch.bfloat16)  # type: ignore[arg-type]
        load_s = time.perf_counter() - started
        for batch in (1, 8, 32):
            step = timed_steps(span, batch, 128, args.steps)
            rows.append(
                {
                    "quant": quant,
                    "batch": batch,
                    "blocks": args.blocks,
                    "step_ms": step * 1e3,
                    "ms_per_block": step * 1e3 / args.blocks,
                    "tokens_per_s": batch / step,
                    "load_s": load_s,
                    "weights_gib": torch.cuda.memory_allocated() / 2**30,
                }
            )
        del span
        torch.cuda.empty_cache()
    base = {r["batch"]: r["step_ms"] for r in rows if r["quant"] == "none"}
    print(f"{'quant':6} {'batch':>5} {'step ms':>9} {'ms/block':>9} {'tok/s':>9} {'vs bf16':>8}")
    for r in rows:
        ratio = r["step_ms"] / base[r["batch"]]
        r["ratio_vs_bf16"] = ratio
        print(
            f"{r['quant']:6} {r['batch']:>5} {r['step_ms']:>9.2f} {r['ms_per_block']:>9.3f} {r['tokens_per_s']:>9.1f} {ratio:>8.2f}"
        )
    out = Path(os.environ.get("OUT", "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_span.json").write_text(
        json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
