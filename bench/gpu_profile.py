"""Where a busy swarm spends its time on a GPU host: py-spy profiles while N streams decode.

Starts `swarmgate up` like bench/gpu.py (random Llama-3-8B, two bf16 peers, head on the GPU),
warms up, then, for each stream count asked for, records every process with py-spy
(`--py-spy PATH`, per thread, idle samples included) during an N-stream run and prints, per
process and thread, how busy it was and the heaviest functions (own and inclusive time). A
thread's busy share times the run's time per token is its work per token: for one stream,
that is the Python on the critical path. Raw profiles go to $OUT (default bench-out/).

    python bench/gpu_profile.py --py-spy /path/to/py-spy [--streams 1 32] [--tokens 256]
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

IDLE_FRAMES = (
    "Selector.select (",
    "get_events (trio/",
    "Condition.wait (",
    "_worker (concurrent/futures/thread.py:81)",
    "run_forever (swarm/main_thread.py:60)",
)


def summary(path: Path, top: int) -> str:
    """Per thread of a raw py-spy profile (`--threads --idle`): its busy share and heaviest
    functions, own and inclusive, as shares of the thread's busy samples."""
    threads: dict[str, tuple[collections.Counter[str], collections.Counter[str]]] = {}
    totals: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        thread, *frames = stack.split(";")
        totals[thread] += n
        if not frames or any(idle in frames[-1] for idle in IDLE_FRAMES):
            continue  # waiting
        own, inclusive = threads.setdefault(thread, (collections.Counter(), collections.Counter()))
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{path.name}:"]
    for thread, (own, inclusive) in sorted(threads.items(), key=lambda kv: -kv[1][0].total()):
        busy = own.total()
        lines.append(f" {thread}: busy {busy / totals[thread]:.1%} of {totals[thread]} samples")
        lines += [f"  own  {v / busy:6.1%} {k[:110]}" for k, v in own.most_common(top)]
        lines += [f"  incl {v / busy:6.1%} {k[:110]}" for k, v in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--py-spy", required=True)
    parser.add_argument("--streams", type=int, nargs="+", default=[32])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    proc = start_gpu_swarm([])
    try:
        base_url = f"{proc.ready['url']}/v1"
        pids = [proc.popen.pid] + [
            int(p)
            for p in subprocess.run(
                ["pgrep", "-P", str(proc.popen.pid)], capture_output=True, text=True
            ).stdout.split()
        ]
        names = ["gateway"] + [f"peer{i}" for i in range(1, len(pids))]
        for streams in args.streams:
            asyncio.run(many_streams(base_url, streams, 16))  # warm up (CUDA graph buckets)
            paths = [out / f"profile_{streams}_{name}.txt" for name in names]
            spies = [
                spy(args.py_spy, pid, args.seconds, path)
                for pid, path in zip(pids, paths, strict=True)
            ]
            runs = []
            while any(s.poll() is None for s in spies):  # keep decoding while they record
                runs.append(asyncio.run(many_streams(base_url, streams, args.tokens)))
            tokens = sum(r["tokens"] for r in runs)
            rate = tokens / sum(r["tokens"] / r["tok_s"] for r in runs)
            print(f"{streams} streams under py-spy: {rate:.1f} tok/s ({tokens} tokens)", flush=True)
            for path in paths:
                print(summary(path, args.top) if path.exists() else f"{path}: missing", flush=True)
    finally:
        proc.stop(timeout=60)


def spy(py_spy: str, pid: int, seconds: int, path: Path) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` for `seconds`: every thread, idle samples included."""
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "-p",
            str(pid),
            "-d",
            str(seconds),
            "-r",
            "200",
            "-f",
            "raw",
            "--threads",
            "--idle",
            "--nonblocking",
            "-o",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    main()
