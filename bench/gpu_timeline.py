"""The serving path's timeline on a GPU host: where a round's time goes at 1 and 32 streams.

Starts `swarmgate up` like bench/gpu.py (random Llama-3-8B, two bf16 peers, head on the GPU)
with `SWARMGATE_TRACE` set, runs each stream count asked for (after a warm-up), stops the
swarm (the processes write their events as they exit) and prints bench/timeline.py's table
for each run's time window. Traces and JSON go to $OUT (default bench-out/).

    python bench/gpu_timeline.py [--streams 1 32] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu import many_streams, start_gpu_swarm  # noqa: E402
from bench.timeline import load, report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--extra", nargs="*", default=[], help="more `swarmgate up` flags")
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "bench-out"))
    folder = out / "trace"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["SWARMGATE_TRACE"] = str(folder)  # the swarm's processes inherit it
    proc = start_gpu_swarm(args.extra)
    runs = []
    try:
        base_url = f"{proc.ready['url']}/v1"
        for streams in args.streams:
            # warm up at full length: the peers capture a CUDA graph per (rows, pages) bucket
            asyncio.run(many_streams(base_url, streams, args.tokens))
            began = time.perf_counter()
            result = asyncio.run(many_streams(base_url, streams, args.tokens))
            runs.append((streams, began, time.perf_counter(), result))
            print(f"{streams} streams: {result['tok_s']:.1f} tok/s", flush=True)
    finally:
        proc.stop(timeout=60)
        (out / "gpu_timeline_up.log").write_text(proc.output)  # start-up: compiles, graphs
    trace = load(folder)
    tables = {}
    for streams, began, ended, result in runs:
        print(f"\n== {streams} streams, {result['tok_s']:.1f} tok/s (traced)")
        # the first and last second have streams starting and ending: leave them out (a
        # tenth of a short run, a single stream's 128 tokens take ~1.4 s)
        margin = min(1.0, (ended - began) / 10)
        tables[streams] = report(trace, began + margin, ended - margin)
    (out / "gpu_timeline.json").write_text(json.dumps(tables, indent=2))


if __name__ == "__main__":
    main()
