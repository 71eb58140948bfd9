"""Aggregate decode throughput with 1, 4, 8 and 16 concurrent streams through `swarmgate up`.

Each level runs its clients for a fixed time (see `bench/load.py` for the client loop); the
table gives aggregate tokens/s and its ratio to the single-stream level measured in the same run.

    python bench/concurrency.py [--levels 1 4 8 16] [--seconds 30] [--round-groups 1 2] [--push]
        [--dtype bfloat16] [--no-pack] [--up-flags=--stream-after-send ...]

With several `--round-groups` values the swarm runs once per value (`up --round-groups`:
pipelined micro-batches), each level against that run's own single stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import run_load  # noqa: E402
from tests.procs import start  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--peers", type=int, default=2)
    parser.add_argument("--round-groups", type=int, nargs="+", default=[1])
    parser.add_argument("--push", action="store_true", help="up --push")
    parser.add_argument(
        "--dtype", default="auto", help="up --dtype (bfloat16: CPU peers on bf16 weights)"
    )
    parser.add_argument(
        "--no-pack", action="store_true", help="up --no-pack (CPU linears through MKL)"
    )
    parser.add_argument("--up-flags", nargs="*", default=[], help="more `swarmgate up` flags")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for groups in args.round_groups:
        command = ["up", "--port", "0", "--peers", str(args.peers), "--round-groups", str(groups)]
        command += ["--push"] if args.push else []
        command += ["--dtype", args.dtype]
        command += ["--no-pack"] if args.no_pack else []
        command += args.up_flags
        proc = start(command, "GATEWAY_READY ")
        try:
            runs = [
                asyncio.run(run_load(str(proc.ready["url"]), n, args.seconds)) for n in args.levels
            ]
        finally:
            proc.stop(timeout=60)
        for row in runs:
            row["round_groups"] = groups
            row["ratio"] = row["tok_s"] / runs[0]["tok_s"]
        rows += runs
    print(
        f"{'groups':>6} {'streams':>7} {'tok/s':>7} {'vs 1 stream':>11} {'ITL p50 ms':>10} {'failed':>6}"
    )
    for row in rows:
        print(
            f"{row['round_groups']:>6} {row['clients']:>7} {row['tok_s']:>7.1f} {row['ratio']:>11.2f} {row['itl_p50_ms']:>10.0f} {row['failed']:>6}"
        )
    out = ROOT / "bench-out"
    out.mkdir(exist_ok=True)
    (out / "concurrency.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
