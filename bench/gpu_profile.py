"""Where a busy swarm spends its time on a GPU host: py-spy profiles while N streams decode.

Starts `swarmgate up` like bench/gpu.py (random Llama-3-8B, two bf16 peers, head on the GPU),
warms up, then records every process with py-spy (`--py-spy PATH`) during an N-stream run and
prints, per process, the share of samples of the heaviest functions (own and inclusive time).
Raw profiles go to $OUT (default bench-out/).

    python bench/gpu_profile.py --py-spy /path/to/py-spy [--streams 32] [--tokens 256]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu import many_streams, start_gpu_swarm  # noqa: E402


def summary(path: Path, top: int) -> str:
    """The heaviest functions of a raw py-spy profile, own and inclusive."""
    total = 0
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{path.name}: {total} samples"]
    lines += [f"  own  {v / total:6.1%} {k[:110]}" for k, v in own.most_common(top)]
    lines += [f"  incl {v / total:6.1%} {k[:110]}" for k, v in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--py-spy", required=True)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    proc = start_gpu_swarm([])
    try:
        base_url = f"{proc.ready['url']}/v1"
        asyncio.run(many_streams(base_url, args.streams, 16))  # warm up
        pids = [proc.popen.pid] + [
            int(p)
            for p in subprocess.run(
                ["pgrep", "-P", str(proc.popen.pid)], capture_output=True, text=True
            ).stdout.split()
        ]
        names = ["gateway"] + [f"peer{i}" for i in range(1, len(pids))]
        spies = [
            subprocess.Popen(
                [
                    args.py_spy,
                    "record",
                    "-p",
                    str(pid),
                    "-d",
                    str(args.seconds),
                    "-r",
                    "200",
                    "-f",
                    "raw",
                    "-o",
                    str(out / f"profile_{name}.txt"),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for pid, name in zip(pids, names, strict=True)
        ]
        result = asyncio.run(many_streams(base_url, args.streams, args.tokens))
        for spy in spies:
            spy.wait(timeout=120)
        print("run:", result, flush=True)
    finally:
        proc.stop(timeout=60)
    for name in names:
        path = out / f"profile_{name}.txt"
        print(summary(path, args.top) if path.exists() else f"{path.name}: missing", flush=True)


if __name__ == "__main__":
    main()
