"""Single-stream decode through the whole stack vs. transformers `generate` in one process.

For a short and a ~500-token prompt: time to first token, decode tokens/s and inter-token
p50/p99 through `swarmgate up` (2 and 3 peers, OpenAI SDK streaming, greedy), against the same
model's `generate` in this process with the same number of threads (the baseline, measured in
the same run). Prints a table; writes JSON to bench-out/decode.json.

    python bench/decode.py [--peers 2 3] [--tokens 64] [--setups relay push libp2p mkl no-turns]

`--setups` runs each swarm once per way its hops talk: `relay` (the default: lanes, TCP + Noise
beside libp2p, swarm/lanes.py, every output back through the gateway), `push` (`--push`: each
peer sends its output straight to the next) and `libp2p` (`--no-lanes`: py-libp2p streams, as
in session 4); `mkl` (`--no-pack`) runs the CPU peers' linears through MKL instead of
oneDNN's packed kernels; `no-turns` (`--no-compute-turns`) lets the peers and the head
compute at the same time instead of in turns (swarm/compute_turns.py); `asyncio-loop`
(`SWARMGATE_LOOP=asyncio`) runs every process on asyncio's own loop instead of uvloop.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import openai
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SETUPS = {  # extra `up` flags of each setup
    "relay": [],
    "push": ["--push"],
    "libp2p": ["--no-lanes"],
    "no-turns": ["--no-compute-turns"],  # peers and head compute at once (until session 13)
    "mkl": ["--no-pack"],  # CPU peers' linears through MKL, as before session 12
    "asyncio-loop": [],  # every process on asyncio's own event loop, not uvloop (session 14)
}
SETUP_ENVS = {"asyncio-loop": {"SWARMGATE_LOOP": "asyncio"}}  # environments of setups

from bench.overhead import overhead  # noqa: E402
from swarm.head import Head  # noqa: E402
from swarm.logs import quiet_third_party_logs  # noqa: E402
from swarm.models import DEFAULT_MODEL, load_weights  # noqa: E402
from swarm.models.reference import build_full_model  # noqa: E402
from tests.procs import start  # noqa: E402

SHORT = "What is the capital of France?"
LONG = "Summarise the following notes in one sentence. " + " ".join(
    f"Note {i}: the meeting about project {i % 7} moved to room {i % 5}." for i in range(36)
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def baseline(prompt_ids: list[int], tokens: int, runs: int = 3) -> dict[str, float]:
    """`generate`'s figures: the run of median tok/s out of `runs` (one stall on this shared VM
    would otherwise move every ratio of the table)."""
    weights = load_weights(DEFAULT_MODEL)
    model = build_full_model(weights)
    ids = torch.tensor([prompt_ids])
    results = []
    with torch.inference_mode():
        model.generate(ids[:, :8], max_new_tokens=2, do_sample=False)  # warm-up
        for _ in range(runs):
            stamps: list[float] = []

            class Clock:
                def put(self, _value: Any, stamps: list[float] = stamps) -> None:
                    stamps.append(time.perf_counter())

                def end(self) -> None:
                    pass

            started = time.perf_counter()
            model.generate(
                ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=Clock()
            )
            results.append(summarize(started, stamps[1:]))  # the streamer first gets the prompt
    return sorted(results, key=lambda r: r["tok_s"])[len(results) // 2]


def summarize(started: float, stamps: list[float]) -> dict[str, float]:
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return {
        "ttft_ms": (stamps[0] - started) * 1e3,
        "tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        "itl_p50_ms": statistics.median(gaps) * 1e3,
        "itl_p99_ms": percentile(gaps, 0.99) * 1e3,
        "tokens": len(stamps),
    }


def through_swarm(url: str, prompt: str, tokens: int) -> dict[str, float]:

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": prompt}]
    client.chat.completions.create(
        model=DEFAULT_MODEL, messages=messages, max_tokens=2, temperature=0
    )  # type: ignore[arg-type]
    best: dict[str, float] | None = None
    for _ in range(2):
        stamps: list[float] = []
        started = time.perf_counter()
        stream = client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=messages,
            max_tokens=tokens,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
            logit_bias={"2": -100},  # never stop early: every run decodes exactly `tokens`
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                stamps.append(time.perf_counter())
        result = summarize(started, stamps)
        if best is None or result["tok_s"] > best["tok_s"]:
            best = result
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=["relay"])
    args = parser.parse_args()
    quiet_third_party_logs()
    head = Head(load_weights(DEFAULT_MODEL))
    rows: list[dict[str, Any]] = []
    for label, prompt in (("short", SHORT), ("500-token", LONG)):
        ids = head.encode_chat([{"role": "user", "content": prompt}])
        print(f"[{label}] prompt of {len(ids)} tokens: baseline generate...", flush=True)
        rows.append(
            {
                "setup": "generate (1 process)",
                "prompt": label,
                "prompt_tokens": len(ids),
                **baseline(ids, args.tokens),
            }
        )
    gateway: dict[str, dict[str, float]] = {}
    for peers, kind in itertools.product(args.peers, args.setups):
        setup = f"swarmgate up, {peers} peers" + (f", {kind}" if len(args.setups) > 1 else "")
        print(f"starting {setup}...", flush=True)
        flags = SETUPS[kind]
        proc = start(
            ["up", "--port", "0", "--peers", str(peers), "--peer-metrics", *flags],
            "GATEWAY_READY ",
            env=SETUP_ENVS.get(kind),
        )
        try:
            for label, prompt in (("short", SHORT), ("500-token", LONG)):
                result = through_swarm(str(proc.ready["url"]), prompt, args.tokens)
                rows.append({"setup": setup, "prompt": label, **result})
            client = openai.OpenAI(base_url=f"{proc.ready['url']}/v1", api_key="x", max_retries=0)
            peer_urls = [str(u) for u in proc.ready["peer_metrics"]]  # type: ignore[attr-defined]
            prompt = [{"role": "user", "content": SHORT}]
            gateway_url = str(proc.ready["url"])
            gateway[setup] = overhead(client, DEFAULT_MODEL, prompt, peer_urls, gateway_url, 10)
        finally:
            proc.stop(timeout=60)
    base = {r["prompt"]: r for r in rows if r["setup"].startswith("generate")}
    print(
        f"\n{'setup':36} {'prompt':10} {'TTFT ms':>8} {'tok/s':>7} {'ITL p50':>8} {'ITL p99':>8} {'tok/s vs generate':>18}"
    )
    for r in rows:
        r["tok_s_ratio"] = r["tok_s"] / base[r["prompt"]]["tok_s"]
        print(
            f"{r['setup']:36} {r['prompt']:10} {r['ttft_ms']:>8.1f} {r['tok_s']:>7.1f} {r['itl_p50_ms']:>8.1f} {r['itl_p99_ms']:>8.1f} {r['tok_s_ratio']:>18.2f}"
        )
    for setup, figures in gateway.items():
        print(
            f"{setup}: one-prefill request {figures['latency_p50_ms']:.1f} ms p50, of which "
            f"gateway + network + head (not the peers' compute) {figures['overhead_p50_ms']:.1f} ms; "
            f"not model compute (peers' blocks, gateway's head) {figures['beyond_model_p50_ms']:.1f} ms"
        )
        print(
            f"{setup}: streamed TTFT {figures['ttft_p50_ms']:.1f} ms p50, of which gateway + "
            f"network + head {figures['ttft_overhead_p50_ms']:.1f} ms; not model compute "
            f"{figures['ttft_beyond_model_p50_ms']:.1f} ms"
        )
        print(
            f"{setup}: at the gateway, request arrival to first token sent "
            f"{figures['server_ttft_p50_ms']:.1f} ms p50, of which gateway + network + head "
            f"{figures['server_ttft_overhead_p50_ms']:.1f} ms; not model compute "
            f"{figures['server_ttft_beyond_model_p50_ms']:.1f} ms"
        )
    out = ROOT / "bench-out"
    out.mkdir(exist_ok=True)
    (out / "decode.json").write_text(json.dumps(rows, indent=1))
    (out / "decode_overhead.json").write_text(json.dumps(gateway, indent=1))


if __name__ == "__main__":
    main()
