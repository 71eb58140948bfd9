"""The whole stack on one GPU: random Llama-3-8B (bf16), two peers + gateway, vs. its baselines.

Run with the `device` tool on an H200. In one run it measures:
- the HBM roofline: bytes of weights read per decoded token / measured copy bandwidth;
- transformers `generate` of the same model in this process, batch 1 and batch 32 (greedy);
- `swarmgate up --model random:llama-3-8b --peers 2 --device cuda --dtype bfloat16`: one
  stream (OpenAI SDK, streaming), 32 concurrent streams, and the gateway's overhead on a
  request: client latency minus the peers' own compute for it (from their /metrics).
Prints a table (every figure also as a ratio to its baseline) and writes $OUT/gpu.json.
Random weights borrow the embedded model's tokenizer (SWARMGATE_RANDOM_TOKENIZER may point at
a tokenizer folder on machines without it).

    python bench/gpu.py [--tokens 128] [--streams 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import overhead  # noqa: E402
from swarm.models import load_weights  # noqa: E402
from swarm.models.reference import build_full_model  # noqa: E402
from tests.procs import Proc, start  # noqa: E402

MODEL = "random:llama-3-8b"
SETUPS = {  # extra `up` flags of each setup
    "default": [],  # lanes, two pipelined micro-batches, outputs relayed by the gateway
    "push": ["--push"],  # peer-to-peer push
    "one-group": ["--round-groups", "1"],  # every generation in one round
    "three-groups": ["--round-groups", "3"],  # three pipelined micro-batches
    "serial-rounds": ["--rounds-in-flight", "1"],  # two groups, one round in flight (session 7)
    "eager": ["--no-compile"],  # layers not compiled (session 8)
    "asyncio-loop": [],  # every process on asyncio's own event loop, not uvloop (session 14)
    "no-busy-poll": ["--busy-poll", "off"],  # loops sleep between messages (before session 15)
    "head-inline": ["--head-inline"],  # head passes on the gateway's loop thread (session 15)
    "libp2p": ["--no-lanes", "--round-groups", "1"],  # as of session 4
    "eager-head": ["--no-head-graphs"],  # greedy head passes eager (default until session 12)
    "thread": ["--compute", "thread"],  # peers compute beside their loop (default until session 12)
}
PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), best of 10."""
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(10):
        torch.cuda.synchronize()
        started = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    del src, dst
    return 2 * (2 << 30) / best


def baseline_generate(tokens: int, batches: list[int]) -> tuple[dict[int, float], int]:
    """transformers `generate` tok/s per batch size, and the bytes of weights read per token."""
    weights = load_weights(MODEL)
    print("building the whole model for the generate baseline...", flush=True)
    model = build_full_model(weights).to(device="cuda", dtype=torch.bfloat16)
    read_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters())
    read_bytes -= model.get_input_embeddings().weight.numel() * 2  # embedding rows: a gather
    results = {}
    for batch in batches:
        ids = torch.randint(100, 40000, (batch, 24), device="cuda")
        kwargs: dict[str, Any] = {"do_sample": False, "pad_token_id": 0}
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, **kwargs)  # warm up
        torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)
        torch.cuda.synchronize()
        results[batch] = batch * tokens / (time.perf_counter() - started)
        print(f"generate batch {batch}: {results[batch]:.1f} tok/s", flush=True)
    del model
    torch.cuda.empty_cache()
    return results, read_bytes


def streaming_request(tokens: int) -> dict[str, Any]:
    """Greedy, streaming, with the usage chunk at the end (it counts the tokens)."""
    return {
        "model": MODEL,
        "messages": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def stream_once(client: openai.OpenAI, tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    first = last = 0.0
    usage = None
    stream = client.chat.completions.create(**streaming_request(tokens))
    for chunk in stream:
        now = time.perf_counter()
        first = first or now
        last = now
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None
    count = usage.completion_tokens
    return {
        "ttft_ms": (first - started) * 1e3,
        "tokens": count,
        "tok_s": (count - 1) / max(last - first, 1e-9),
    }


async def many_streams(base_url: str, streams: int, tokens: int) -> dict[str, float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)

    async def one() -> int:
        reply = await client.chat.completions.create(**streaming_request(tokens))
        count = 0
        async for chunk in reply:
            if chunk.usage is not None:
                count = chunk.usage.completion_tokens
        return count

    started = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(streams)))
    elapsed = time.perf_counter() - started
    await client.close()
    return {"streams": streams, "tokens": sum(counts), "tok_s": sum(counts) / elapsed}


def scrape(url: str, names: list[str]) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            values[name] = values.get(name, 0.0) + float(value)
    return values


BATCH_COUNTERS = ["swarmgate_peer_rounds_total", "swarmgate_peer_round_ops_total"]
PEER_COUNTERS = ["swarmgate_peer_batch_size_sum", "swarmgate_peer_batch_size_count"]


def counters(gateway_url: str, peer_urls: list[str]) -> dict[str, float]:
    """The gateway's round counters and the peers' batch-size counters, summed."""
    totals = scrape(f"{gateway_url}/metrics", BATCH_COUNTERS)
    for url in peer_urls:
        for name, value in scrape(url, PEER_COUNTERS).items():
            totals[name] = totals.get(name, 0.0) + value
    return totals


def batching(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Ops per round frame at the gateway, rows per forward at the peers, between two scrapes."""

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    return {
        "ops_per_round": grew(BATCH_COUNTERS[1]) / max(grew(BATCH_COUNTERS[0]), 1.0),
        "rows_per_forward": grew(PEER_COUNTERS[0]) / max(grew(PEER_COUNTERS[1]), 1.0),
    }


SETUP_ENVS = {"asyncio-loop": {"SWARMGATE_LOOP": "asyncio"}}  # environments of setups


def start_gpu_swarm(extra: list[str], env: dict[str, str] | None = None) -> Proc:
    """`swarmgate up` with two bf16 peers of MODEL and the head on the GPU, on a free port."""
    return start(
        [
            "up",
            "--model",
            MODEL,
            "--peers",
            "2",
            "--device",
            "cuda",
            "--dtype",
            "bfloat16",
            "--port",
            "0",
            *extra,
        ],
        "GATEWAY_READY ",
        timeout=900,
        env=env,
    )


def process_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the `up` process (the gateway) and by each of
    its children (the peers), from /proc."""

    def seconds(of: int) -> float:
        fields = Path(f"/proc/{of}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def parent(of: Path) -> int:
        try:
            return int((of / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # gone, or not a process
            return -1

    children = sorted(
        int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and parent(p) == pid
    )
    used = {"gateway": seconds(pid)}
    for i, child in enumerate(children):  # in pid order: the order `up` started them
        with contextlib.suppress(OSError):
            used[f"peer{i + 1}"] = seconds(child)
    return used


def measure_swarm(args: argparse.Namespace, setup: str) -> dict[str, Any]:
    """One `swarmgate up` run: single stream, overhead, concurrent streams, batching."""
    result: dict[str, Any] = {"setup": setup}
    print(f"starting swarmgate up (2 peers, cuda, bf16, {setup})...", flush=True)
    extra = [] if args.round_window_ms is None else ["--round-window-ms", str(args.round_window_ms)]
    extra += SETUPS[setup]
    proc = start_gpu_swarm(["--peer-metrics", *extra], SETUP_ENVS.get(setup))
    try:
        base_url = f"{proc.ready['url']}/v1"
        peer_urls = [str(u) for u in proc.ready["peer_metrics"]]  # type: ignore[attr-defined]
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
        # warm up at full length: each peer captures one CUDA graph per (rows, pages) bucket
        # the first time it meets it, a one-time cost kept out of the measurement
        stream_once(client, args.tokens)
        singles = [stream_once(client, args.tokens) for _ in range(3)]
        result["single"] = {
            "tok_s": statistics.median(s["tok_s"] for s in singles),
            "ttft_ms": statistics.median(s["ttft_ms"] for s in singles),
        }
        print("single stream:", result["single"], flush=True)
        gateway_url = str(proc.ready["url"])
        result["overhead"] = overhead(client, MODEL, PROMPT, peer_urls, gateway_url, 10)
        print("gateway overhead:", result["overhead"], flush=True)
        asyncio.run(many_streams(base_url, args.streams, args.tokens))  # warm up, as above
        before = counters(gateway_url, peer_urls)
        cpu_before = process_cpu(proc.popen.pid)
        runs = []
        for _ in range(args.concurrent_runs):
            runs.append(asyncio.run(many_streams(base_url, args.streams, args.tokens)))
            print(f"{args.streams} streams: {runs[-1]['tok_s']:.1f} tok/s", flush=True)
        cpu_after = process_cpu(proc.popen.pid)
        # the run of median throughput, with every run's figure beside it (the 32-stream
        # figure was bimodal from run to run in session 10)
        result["concurrent"] = sorted(runs, key=lambda r: r["tok_s"])[len(runs) // 2]
        result["concurrent"]["runs_tok_s"] = [r["tok_s"] for r in runs]
        tokens = max(1, sum(r["tokens"] for r in runs))
        # all of a process's threads: the gateway's loop, its head and libp2p threads
        result["concurrent"]["cpu_us_per_token"] = {
            name: (cpu_after.get(name, seconds) - seconds) / tokens * 1e6
            for name, seconds in cpu_before.items()
        }
        print("concurrent:", result["concurrent"], flush=True)
        # of the concurrent runs alone (opens, closes and prefills included)
        result["batching"] = batching(before, counters(gateway_url, peer_urls))
        print("batching:", result["batching"], flush=True)
    finally:
        code = proc.stop(timeout=60)
        if code != 0:
            print(proc.output[-3000:])
    return result


def _stop_on_sigterm(*_: object) -> None:
    raise SystemExit(143)  # a `timeout` ends the run: stop the swarm (the `finally`s) first


def main() -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument(
        "--concurrent-runs", type=int, default=1, help="concurrent runs per swarm (the median)"
    )
    parser.add_argument("--round-window-ms", type=float, default=None, help="passed to `up`")
    parser.add_argument(
        "--setups",
        nargs="+",
        choices=list(SETUPS),
        default=["default"],
        help="one swarm per setup: "
        + "; ".join(f"{k}: up {' '.join(v)}" for k, v in SETUPS.items()),
    )
    args = parser.parse_args()
    args.concurrent_runs = max(1, args.concurrent_runs)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "model": MODEL}
    bandwidth = copy_bandwidth()
    generate, read_bytes = (
        ({}, 0) if args.skip_generate else baseline_generate(args.tokens, [1, 32])
    )
    result["copy_bandwidth_gbs"] = bandwidth / 1e9
    result["weights_read_gb"] = read_bytes / 1e9
    roofline = bandwidth / read_bytes if read_bytes else float("nan")
    result["roofline_tok_s"] = roofline
    result["generate_tok_s"] = generate
    swarms = {t: measure_swarm(args, t) for t in args.setups}
    result["swarms"] = swarms
    result.update(swarms[args.setups[0]])  # the first setup's figures, as before
    gen1, gen32 = generate.get(1, float("nan")), generate.get(32, float("nan"))
    rows = [
        ("HBM roofline, batch 1", roofline, "1.00 (bound)"),
        ("transformers generate, batch 1", gen1, f"{gen1 / roofline:.2f} of roofline"),
        ("transformers generate, batch 32", gen32, f"{gen32 / gen1:.2f}x generate bs1"),
    ]
    for setup, swarm in swarms.items():
        single, many = swarm["single"]["tok_s"], swarm["concurrent"]["tok_s"]
        rows += [
            (f"swarmgate, 1 stream, {setup}", single, f"{single / gen1:.2f}x generate bs1"),
            (f"swarmgate, 32 streams, {setup}", many, f"{many / gen32:.2f}x generate bs32"),
        ]
    print(f"\n{'setup':34} {'tok/s':>9}  ratio")
    for name, value, ratio in rows:
        print(f"{name:34} {value:>9.1f}  {ratio}")
    for setup, swarm in swarms.items():
        print(
            f"{setup}: single-stream TTFT {swarm['single']['ttft_ms']:.1f} ms; gateway "
            f"overhead on a request (latency minus peers' compute) p50 "
            f"{swarm['overhead']['overhead_p50_ms']:.2f} ms, not model compute (minus the "
            f"gateway's head passes too) {swarm['overhead']['beyond_model_p50_ms']:.2f} ms"
        )
        print(
            f"{setup}: streamed TTFT {swarm['overhead']['ttft_p50_ms']:.2f} ms p50, overhead on "
            f"it {swarm['overhead']['ttft_overhead_p50_ms']:.2f} ms, not model compute "
            f"{swarm['overhead']['ttft_beyond_model_p50_ms']:.2f} ms"
        )
        print(
            f"{setup}: at the gateway, request arrival to first token sent "
            f"{swarm['overhead']['server_ttft_p50_ms']:.2f} ms p50, overhead on it "
            f"{swarm['overhead']['server_ttft_overhead_p50_ms']:.2f} ms, not model compute "
            f"{swarm['overhead']['server_ttft_beyond_model_p50_ms']:.2f} ms"
        )
        runs = ", ".join(f"{v:.1f}" for v in swarm["concurrent"]["runs_tok_s"])
        print(f"{setup}: {args.streams}-stream runs (tok/s): {runs}")
        cpu = swarm["concurrent"]["cpu_us_per_token"]
        print(
            f"{setup}: CPU per token at {args.streams} streams: "
            + ", ".join(f"{name} {us:.0f} us" for name, us in cpu.items())
        )
    result["rows"] = [{"setup": n, "tok_s": v, "ratio": r} for n, v, r in rows]
    out = Path(os.environ.get("OUT", "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
