"""Split inference in one process: load times, memory and speed against the whole model.

Measures, for the embedded model: loading the converted weights, building the whole
transformers model vs. a span of blocks 10-19 (time and RSS growth, each in a fresh process),
and greedy decode tok/s through 3 chained spans vs. the whole model's own forward with a cache,
in the same run. Prints a table; JSON to bench-out/split_local.json.

    python bench/split_local.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
from swarm.logs import quiet_third_party_logs; quiet_third_party_logs()
from swarm.models import load_weights
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter(); weights = load_weights("smollm2-135m-instruct"); weights.config
loaded = time.perf_counter() - start
base = rss(); start = time.perf_counter()
what = sys.argv[1]
if what == "full":
    from swarm.models.reference import build_full_model
    obj = build_full_model(weights)
else:
    from swarm.blocks import Span
    obj = Span(weights, 10, 20)
print(json.dumps({{"what": what, "load_weights_s": loaded, "build_s": time.perf_counter() - start, "rss_growth_mb": rss() - base, "rss_mb": rss()}}))
"""

SPEED = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
from transformers import DynamicCache
from swarm.logs import quiet_third_party_logs; quiet_third_party_logs()
from swarm.models import load_weights
from swarm.models.reference import build_full_model
from swarm.blocks import Span
from swarm.head import Head
from swarm.generate_cli import even_bounds
w = load_weights("smollm2-135m-instruct"); head = Head(w); full = build_full_model(w)
spans = [Span(w, a, b) for a, b in even_bounds(30, 3)]
ids = torch.tensor([head.encode_chat([{{"role": "user", "content": "Tell me about the sea."}}])])
def run_full(n):
    cache = DynamicCache(); x = ids; t = time.perf_counter()
    with torch.inference_mode():
        for _ in range(n):
            x = full(input_ids=x, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    return n / (time.perf_counter() - t)
def run_split(n):
    caches = [s.new_cache() for s in spans]; x = ids; t = time.perf_counter()
    for _ in range(n):
        h = head.embed(x)
        for s, c in zip(spans, caches): h = s.forward(h, c)
        x = head.logits(h[:, -1:]).argmax(-1)
    return n / (time.perf_counter() - t)
run_full(4); run_split(4)
rows = []
for _ in range(3):
    rows.append((run_full(64), run_split(64)))
print(json.dumps({{"full_tok_s": max(r[0] for r in rows), "split_tok_s": max(r[1] for r in rows)}}))
"""


def run(code: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code.format(root=str(ROOT)), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    full = run(PROBE, "full")
    span = run(PROBE, "span")
    speed = run(SPEED)
    print(f"{'what':24} {'load weights s':>14} {'build s':>8} {'RSS growth MB':>14} {'RSS MB':>8}")
    for row, label in ((full, "whole model (30 blocks)"), (span, "span of blocks 10-19")):
        print(
            f"{label:24} {row['load_weights_s']:>14.2f} {row['build_s']:>8.2f} {row['rss_growth_mb']:>14.0f} {row['rss_mb']:>8.0f}"
        )
    ratio = speed["split_tok_s"] / speed["full_tok_s"]
    print(
        f"\ngreedy decode, one process: whole model {speed['full_tok_s']:.1f} tok/s, 3 chained spans {speed['split_tok_s']:.1f} tok/s ({ratio:.2f}x)"
    )
    out = ROOT / "bench-out"
    out.mkdir(exist_ok=True)
    (out / "split_local.json").write_text(
        json.dumps({"full": full, "span": span, **speed, "ratio": ratio}, indent=1)
    )


if __name__ == "__main__":
    main()
