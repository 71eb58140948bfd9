"""Load: N concurrent streaming clients for T seconds against `swarmgate up`.

Each client loops: a chat request (streaming, random short question, 32-64 tokens), recording
time to first token, inter-token gaps and the outcome. 429 and 503 count as deliberate refusals,
anything else as a failure. The baseline, measured in the same run, is one client alone: the
table gives aggregate tokens/s as a ratio to it.

    python bench/load.py --clients 32 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.procs import start  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Name three fruits.",
    "Why is the sky blue?",
    "Write a haiku about rain.",
    "What is 12 times 7?",
    "Give me a tip for learning Python.",
]


@dataclass
class Tally:
    ok: int = 0
    refused: int = 0
    failed: int = 0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def client_loop(
    client: openai.AsyncOpenAI, until: float, tally: Tally, seed: int, model: str = "smollm2"
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        started = time.monotonic()
        last = None
        try:
            stream = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": rng.choice(QUESTIONS)}],
                max_tokens=rng.randint(32, 64),
                stream=True,
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    now = time.monotonic()
                    if last is None:
                        tally.ttft.append(now - started)
                    else:
                        tally.gaps.append(now - last)
                    last = now
                    tally.tokens += 1
            tally.ok += 1
        except openai.APIStatusError as error:
            if error.status_code in (429, 503):
                tally.refused += 1
                await asyncio.sleep(1.0)
            else:
                tally.failed += 1
                tally.errors.append(f"{error.status_code}: {error.message[:120]}")
        except Exception as error:
            tally.failed += 1
            tally.errors.append(repr(error)[:160])


async def run_load(
    url: str, clients: int, seconds: float, model: str = "smollm2"
) -> dict[str, float]:
    tally = Tally()
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300
    ) as client:
        until = time.monotonic() + seconds
        started = time.monotonic()
        await asyncio.gather(*(client_loop(client, until, tally, i, model) for i in range(clients)))
        elapsed = time.monotonic() - started
    pct = lambda xs, q: sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else float("nan")  # noqa: E731
    return {
        "clients": clients,
        "ok": tally.ok,
        "refused_429_503": tally.refused,
        "failed": tally.failed,
        "tok_s": tally.tokens / elapsed,
        "ttft_p50_ms": pct(tally.ttft, 0.5),
        "ttft_p99_ms": pct(tally.ttft, 0.99),
        "itl_p50_ms": statistics.median(tally.gaps) * 1e3 if tally.gaps else float("nan"),
        "itl_p99_ms": pct(tally.gaps, 0.99),
        "errors": tally.errors[:5],  # type: ignore[dict-item]
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--peers", type=int, default=2)
    parser.add_argument("--url", help="an already running gateway (skips swarmgate up)")
    args = parser.parse_args()
    proc = (
        None
        if args.url
        else start(["up", "--port", "0", "--peers", str(args.peers)], "GATEWAY_READY ")
    )
    url = args.url or str(proc.ready["url"])  # type: ignore[union-attr]
    try:
        base = asyncio.run(run_load(url, 1, min(20.0, args.seconds)))
        loaded = asyncio.run(run_load(url, args.clients, args.seconds))
    finally:
        if proc is not None:
            proc.stop(timeout=60)
    print(
        f"{'clients':>7} {'ok':>5} {'429/503':>7} {'failed':>6} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'tok/s vs 1':>10}"
    )
    for row in (base, loaded):
        row["ratio"] = row["tok_s"] / base["tok_s"] if base["tok_s"] else float("nan")
        print(
            f"{row['clients']:>7} {row['ok']:>5} {row['refused_429_503']:>7} {row['failed']:>6} {row['tok_s']:>7.1f} {row['ttft_p50_ms']:>9.0f} {row['ttft_p99_ms']:>9.0f} {row['itl_p50_ms']:>8.0f} {row['itl_p99_ms']:>8.0f} {row['ratio']:>10.2f}"
        )
    for error in loaded["errors"]:  # type: ignore[attr-defined]
        print("error:", error)
    out = ROOT / "bench-out"
    out.mkdir(exist_ok=True)
    (out / "load.json").write_text(json.dumps([base, loaded], indent=1))


if __name__ == "__main__":
    main()
