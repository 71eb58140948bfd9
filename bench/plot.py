"""Draw docs/benchmarks.png from the JSON the benchmarks wrote (bench-out/ by default).

Reads `decode.json` and `concurrency.json` (CPU, this machine) and `gpu.json` (the `device`
tool's copy of bench/gpu.py's output; `gpu_h200.json`, its older name) when present, and
plots every figure next to its baseline. Needs the `bench` extra (matplotlib).

    python bench/plot.py [--results bench-out] [--out docs/benchmarks.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _load(folder: Path, name: str) -> Any:
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=Path, default=Path("bench-out"))
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.png"))
    args = parser.parse_args()
    decode = _load(args.results, "decode.json")
    concurrency = _load(args.results, "concurrency.json")
    gpu = _load(args.results, "gpu.json") or _load(args.results, "gpu_h200.json")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    if decode:
        rows = decode
        labels = [f"{r['setup']}\n{r['prompt']}" for r in rows]
        axes[0].barh(labels, [r["tok_s"] for r in rows], color="#4c78a8")
        axes[0].set_xlabel("decode tok/s (one stream)")
        axes[0].set_title("CPU, SmolLM2-135M: swarm vs generate")
        axes[0].invert_yaxis()
        axes[0].tick_params(axis="y", labelsize=7)
    if concurrency:
        for groups in sorted({r.get("round_groups", 1) for r in concurrency}):
            rows = [r for r in concurrency if r.get("round_groups", 1) == groups]
            label = f"{groups} round group{'s' if groups > 1 else ''}"
            axes[1].plot(
                [r["clients"] for r in rows], [r["tok_s"] for r in rows], "o-", label=label
            )
        axes[1].legend()
        axes[1].set_xlabel("concurrent streams")
        axes[1].set_ylabel("aggregate tok/s")
        axes[1].set_title("CPU, SmolLM2-135M: concurrency")
    if gpu:
        rows = gpu["rows"]
        axes[2].barh([r["setup"] for r in rows], [r["tok_s"] for r in rows], color="#f58518")
        axes[2].set_xlabel("tok/s")
        device = str(gpu.get("device", "GPU")).replace("NVIDIA ", "")
        axes[2].set_title(f"{device}, Llama-3-8B shape, bf16", fontsize=10)
        axes[2].invert_yaxis()
        axes[2].tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
