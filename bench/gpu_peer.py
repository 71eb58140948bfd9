"""A real `swarmgate peer` process on a GPU, driven over libp2p by a client session.

Starts `swarmgate peer --model random:llama-3-8b --blocks 0:N --device cuda --dtype bfloat16
[--quant nf4]`, opens an inference session from this process and times decode steps (prefill of
128 positions, then batch-1 steps): the wall time per step over the wire, and per block. The
peer's own compute-only step time is in `bench/gpu_span.py`. Prints a table; JSON to $OUT.

    python bench/gpu_peer.py --blocks 8 --quant none nf4
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import write_json  # noqa: E402
from swarm.models.sources import RandomSource  # noqa: E402
from swarm.p2p import P2PNode  # noqa: E402
from swarm.protocol import INFO_PROTOCOL  # noqa: E402
from swarm.session import Hop, InferenceSession  # noqa: E402
from tests.procs import start_peer  # noqa: E402


async def drive(
    ready: dict[str, object], model_hash: str, hidden_size: int, steps: int
) -> dict[str, float]:
    peer_id, maddrs = str(ready["peer_id"]), list(ready["maddrs"])  # type: ignore[call-overload]
    node = P2PNode(dht_mode="client", bootstrap=[maddrs[0]])
    await node.start()
    try:
        hop = Hop(peer_id, int(ready["start"]), int(ready["end"]), tuple(maddrs))  # type: ignore[call-overload]
        async with InferenceSession(
            node, model_hash, [hop], max_length=1024, transport_dtype=torch.bfloat16
        ) as session:
            await session.step(torch.randn(1, 128, hidden_size) * 0.1)
            times = []
            for i in range(steps + 3):
                started = time.perf_counter()
                await session.step(torch.randn(1, 1, hidden_size) * 0.1)
                if i >= 3:
                    times.append(time.perf_counter() - started)
        info = (await node.request(peer_id, INFO_PROTOCOL, {"type": "info"}, addrs=maddrs)).header
    finally:
        await node.stop()
    return {
        "step_ms": statistics.median(times) * 1e3,
        "throughput_decode": float(info["throughput_decode"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--quant", nargs="+", default=["none", "nf4"])
    args = parser.parse_args()
    weights = RandomSource("llama-3-8b", tokenizer_model=None).load("random:llama-3-8b")
    rows = []
    for quant in args.quant:
        started = time.perf_counter()
        proc = start_peer(
            "--model",
            "random:llama-3-8b",
            "--blocks",
            f"0:{args.blocks}",
            "--device",
            "cuda",
            "--dtype",
            "bfloat16",
            "--quant",
            quant,
            "--cache-tokens",
            "65536",
        )
        load_s = time.perf_counter() - started
        try:
            result = asyncio.run(drive(proc.ready, weights.model_hash, 4096, args.steps))
        finally:
            proc.stop(timeout=60)
        rows.append(
            {
                "quant": quant,
                "blocks": args.blocks,
                "load_s": load_s,
                **result,
                "ms_per_block": result["step_ms"] / args.blocks,
            }
        )
    print(
        f"{'quant':6} {'blocks':>6} {'step ms (wire)':>15} {'ms/block':>9} {'peer-measured tok/s':>20} {'start s':>8}"
    )
    for r in rows:
        print(
            f"{r['quant']:6} {r['blocks']:>6} {r['step_ms']:>15.2f} {r['ms_per_block']:>9.3f} {r['throughput_decode']:>20.1f} {r['load_s']:>8.1f}"
        )
    write_json("gpu_peer", rows)


if __name__ == "__main__":
    main()
