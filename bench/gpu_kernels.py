"""Where a span's decode step spends its GPU time, kernel by kernel (H200, random Llama-3-8B).

For batches of 1, 16 and 32 sessions with `--context` cached positions: the GPU time of one
captured decode step (CUDA events around graph replays), the wall time of the peer's call
(`Span.forward_many(..., to_host=True)`: inputs in, replay, output on the host), and the
profiler's kernel table of one eager step, grouped into matrix products, attention, KV-cache
gathers/writes and the rest. The HBM floor of the step (weight bytes / measured copy bandwidth)
is the baseline of the same run. Prints tables; writes JSON to $OUT or ./bench-out.

    python bench/gpu_kernels.py --blocks 16 --context 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swarm.blocks import Span
from swarm.cuda_graphs import bucket
from swarm.kv_pages import PagedCache
from swarm.models.sources import RandomSource

GROUPS = (
    ("matmul", ("gemm", "gemv", "cutlass", "nvjet", "sm90_", "cublas", "splitk")),
    ("attention", ("fmha", "flash", "attention", "softmax", "sdpa")),
    ("kv index", ("index", "gather", "scatter")),
)


def group_of(kernel: str) -> str:
    lowered = kernel.lower()
    for name, keys in GROUPS:
        if any(key in lowered for key in keys):
            return name
    return "other"


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a 2 GiB device-to-device copy (read + write)."""
    src = torch.empty(1 << 30, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 10 * 2 * src.numel() * 2 / (start.elapsed_time(end) / 1e3)


def sessions(span: Span, batch: int, context: int) -> list[PagedCache]:
    hidden = torch.randn(1, context, span.hidden_size, device=span.device, dtype=span.dtype) * 0.1
    caches = []
    for _ in range(batch):
        cache = span.new_cache()
        span.forward(hidden, cache)
        caches.append(cache)  # type: ignore[arg-type]
    return caches


def step_inputs(span: Span, caches: list[PagedCache]) -> tuple[torch.Tensor, ...]:
    """The eager module's inputs for one decode step of `caches` (positions = their lengths)."""
    from swarm.kv_pages import page_tables

    assert span.pool is not None
    lengths = [c.length for c in caches]
    for cache, length in zip(caches, lengths, strict=True):
        cache.prepare(1, length + 1)
    table = page_tables(caches, span.pool.pages_for(max(lengths) + 1)).to(span.device)
    positions = torch.tensor(lengths, dtype=torch.int64, device=span.device).unsqueeze(1)
    x = torch.randn(len(caches), 1, span.hidden_size, device=span.device, dtype=span.dtype) * 0.1
    return x, positions, table


def graph_gpu_ms(span: Span, caches: list[PagedCache], replays: int) -> tuple[float, float, Any]:
    """(GPU ms of one graph replay, wall ms of the peer's forward_many call), medians."""
    rows = torch.randn(len(caches), 1, span.hidden_size, dtype=span.dtype) * 0.1
    walls = []
    for i in range(replays + 3):
        if i:  # every call at the same context: undo the previous call's position
            for cache in caches:
                cache.rollback(cache.length - 1)
        torch.cuda.synchronize()
        started = time.perf_counter()
        span.forward_many(rows, caches, to_host=True)  # type: ignore[arg-type]
        if i >= 3:
            walls.append((time.perf_counter() - started) * 1e3)
    assert span._graphs is not None and span.pool is not None
    pages = span.pool.pages_for(max(c.length for c in caches) + 1)
    captured = span._graphs._graphs[(bucket(len(caches)), bucket(pages, 4))]
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        captured.graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), statistics.median(walls), captured


def profiled(run: Any, steps: int) -> dict[str, Any]:
    """The profiler's CUDA kernels of `steps` calls of `run`, per step."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run()
        torch.cuda.synchronize()
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = per_kernel[event.name]
            entry[0] += event.device_time / steps / 1e3  # ms per step
            entry[1] += 1 / steps
    groups: dict[str, float] = defaultdict(float)
    for name, (ms, _) in per_kernel.items():
        groups[group_of(name)] += ms
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:14]
    return {
        "kernels_per_step": sum(n for _, n in per_kernel.values()),
        "groups_ms": dict(groups),
        "top": [(name[:90], ms, count) for name, (ms, count) in top],
    }


def kernel_table(span: Span, caches: list[PagedCache], steps: int) -> dict[str, Any]:
    assert span.pool is not None
    pool = span.pool
    x, positions, table = step_inputs(span, caches)
    with torch.inference_mode():
        for _ in range(3):
            span.module(x, positions, table, pool)
        torch.cuda.synchronize()
        return profiled(lambda: span.module(x, positions, table, pool), steps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 32])
    parser.add_argument("--replays", type=int, default=50)
    parser.add_argument("--compile", action="store_true", help="also the compiled variant")
    args = parser.parse_args()
    device = torch.device("cuda")
    weights = RandomSource("llama-3-8b", tokenizer_model=None).load("random:llama-3-8b")
    print("building the span...", flush=True)
    span = Span(weights, 0, args.blocks, torch.bfloat16, device, paged=True)
    bandwidth = copy_bandwidth(device)
    weight_bytes = sum(p.numel() * p.element_size() for p in span.module.parameters())
    floor_ms = weight_bytes / bandwidth * 1e3
    print(
        f"weights {weight_bytes / 1e9:.2f} GB, copy bandwidth {bandwidth / 1e12:.2f} TB/s: "
        f"HBM floor {floor_ms:.2f} ms per step",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    variants = ["eager layers"] + (["compiled layers"] if args.compile else [])
    for variant in variants:
        if variant == "compiled layers":
            reference = reference_outputs(span, args.context)
            assert span.compile_layers()
            span._graphs = None
            diff = (reference_outputs(span, args.context) - reference).abs().max()
            diff = diff / reference.abs().max()
            print(f"compiled vs eager: max relative difference {float(diff):.5f}", flush=True)
        run_variant(variant, span, args, floor_ms, results)
    out = Path(os.environ.get("OUT", "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_kernels.json").write_text(
        json.dumps({"floor_ms": floor_ms, "bandwidth": bandwidth, "results": results}, indent=1)
    )


def reference_outputs(span: Span, context: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, context, span.hidden_size, generator=gen) * 0.1
    cache = span.new_cache()
    outs = [span.forward(hidden, cache, to_host=True)[:, -1]]
    for _ in range(3):
        step = torch.randn(1, 1, span.hidden_size, generator=gen) * 0.1
        outs.append(span.forward(step, cache, to_host=True)[:, -1])
    cache.release()
    return torch.cat(outs).float()


def run_variant(
    variant: str, span: Span, args: Any, floor_ms: float, results: list[dict[str, Any]]
) -> None:
    for batch in args.batches:
        caches = sessions(span, batch, args.context)
        gpu_ms, wall_ms, captured = graph_gpu_ms(span, caches, args.replays)
        table = kernel_table(span, caches, 5)
        in_graph = profiled(captured.graph.replay, 5)
        results.append(
            {
                "variant": variant,
                "batch": batch,
                "graph_gpu_ms": gpu_ms,
                "wall_ms": wall_ms,
                "eager": table,
                "graph": in_graph,
            }
        )
        print(
            f"\n{variant}, batch {batch}: graph replay {gpu_ms:.3f} ms GPU ({floor_ms / gpu_ms:.2f} of the "
            f"HBM floor's speed), forward_many wall {wall_ms:.3f} ms, "
            f"{table['kernels_per_step']:.0f} kernels per eager step",
            flush=True,
        )
        print(
            "  eager groups (ms/step): "
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(table["groups_ms"].items()))
        )
        print(
            f"  graph groups (ms/step, {in_graph['kernels_per_step']:.0f} kernels): "
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(in_graph["groups_ms"].items()))
        )
        for name, ms, count in in_graph["top"]:
            print(f"  {ms:8.3f} ms {count:5.0f}x  {name}")
        for cache in caches:
            cache.release()


if __name__ == "__main__":
    main()
