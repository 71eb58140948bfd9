"""Aggregate decode throughput with 1, 4, 8 and 16 concurrent streams through `swarmgate up`.

Each level runs its clients for a fixed time (see `bench/load.py` for the client loop); the
table gives aggregate tokens/s and its ratio to the single-stream level measured in the same run.

    python bench/concurrency.py [--levels 1 4 8 16] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import run_load  # noqa: E402
from tests.procs import start  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--peers", type=int, default=2)
    args = parser.parse_args()
    proc = start(["up", "--port", "0", "--peers", str(args.peers)], "GATEWAY_READY ")
    try:
        rows = [asyncio.run(run_load(str(proc.ready["url"]), n, args.seconds)) for n in args.levels]
    finally:
        proc.stop(timeout=60)
    base = rows[0]["tok_s"]
    print(f"{'streams':>7} {'tok/s':>7} {'vs 1 stream':>11} {'ITL p50 ms':>10} {'failed':>6}")
    for row in rows:
        row["ratio"] = row["tok_s"] / base
        print(
            f"{row['clients']:>7} {row['tok_s']:>7.1f} {row['ratio']:>11.2f} {row['itl_p50_ms']:>10.0f} {row['failed']:>6}"
        )
    out = ROOT / "bench-out"
    out.mkdir(exist_ok=True)
    (out / "concurrency.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
