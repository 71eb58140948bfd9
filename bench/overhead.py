"""The gateway's own time on a request: client latency minus the peers' compute for it.

A request whose first token is forced to be end-of-sequence is exactly one prefill through the
chain: its latency is the time to first token plus the closing of the session. That latency,
minus the growth of the peers' `swarmgate_peer_step_seconds_sum` (their compute, scraped from
`--peer-metrics` endpoints before and after), is what the gateway, the network and the head add
to the time to first token. Shared by bench/decode.py (CPU) and bench/gpu.py (H200).
"""

from __future__ import annotations

import statistics
import time

import httpx
import openai


def peer_compute_seconds(urls: list[str]) -> float:
    total = 0.0
    for url in urls:
        for line in httpx.get(url, timeout=10).text.splitlines():
            if line.startswith("swarmgate_peer_step_seconds_sum"):
                total += float(line.split()[-1])
    return total


def overhead(
    client: openai.OpenAI,
    model: str,
    prompt: list[dict[str, str]],
    peer_urls: list[str],
    rounds: int,
    eos_token: int = 2,
) -> dict[str, float]:
    """Client latency of a one-prefill request minus the peers' compute for it."""
    values, latencies = [], []
    for _ in range(rounds):
        before = peer_compute_seconds(peer_urls)
        started = time.perf_counter()
        client.chat.completions.create(
            model=model,
            messages=prompt,  # type: ignore[arg-type]
            max_tokens=1,
            temperature=0,
            logit_bias={str(eos_token): 100},  # the first token ends the reply: one prefill
        )
        latency = time.perf_counter() - started
        compute = peer_compute_seconds(peer_urls) - before
        latencies.append(latency * 1e3)
        values.append((latency - compute) * 1e3)
    return {
        "latency_p50_ms": statistics.median(latencies),
        "overhead_p50_ms": statistics.median(values),
    }
