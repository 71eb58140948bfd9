"""The gateway's own time on a request: client latency minus the peers' compute for it.

A request whose first token is forced to be end-of-sequence is exactly one prefill through the
chain: its latency is the time to first token plus the closing of the session. That latency,
minus the growth of the peers' `swarmgate_peer_step_seconds_sum` (their compute, scraped from
`--peer-metrics` endpoints before and after), is what the gateway, the network and the head add
to the time to first token. Subtracting also the gateway's LM-head passes (its
`swarmgate_head_pass_seconds_sum`, from `gateway_url`) leaves what is not model compute at all:
Python, the wire and waits.

The target is the overhead on the time to first token, so each round also streams a request of
`max_tokens=1` and takes its time to the first content chunk (the close of the session and the
end of the response come after it): that, minus the same two counters' growth (the request's
prefill and its one head pass; no decode step follows), is the overhead on TTFT. Both are seen
from the OpenAI SDK, so they include the client's own cost (building the request, parsing the
chunk: ~2-4 ms per request on the 2-core CPU VM, against bare httpx). The gateway's own view of
the same request leaves the client out: its `swarmgate_response_first_token_seconds` runs from
the request's arrival to the first token's bytes handed to the HTTP server, and minus the same
compute it is the `server_ttft_*` figures: the gateway's overhead proper (tokenizing, admission,
routing, the hops' messaging, the response's start), which is what the target bounds.

Shared by bench/decode.py (CPU) and bench/gpu.py (H200).
"""

from __future__ import annotations

import statistics
import time

import httpx
import openai


def metric_sum(urls: list[str], name: str) -> float:
    """The sum over `urls` of every series of `name` (a counter or a histogram's `_sum`)."""
    total = 0.0
    for url in urls:
        for line in httpx.get(url, timeout=10).text.splitlines():
            if line.startswith(name):
                total += float(line.split()[-1])
    return total


def peer_compute_seconds(urls: list[str]) -> float:
    return metric_sum(urls, "swarmgate_peer_step_seconds_sum")


def overhead(
    client: openai.OpenAI,
    model: str,
    prompt: list[dict[str, str]],
    peer_urls: list[str],
    gateway_url: str,
    rounds: int,
    eos_token: int = 2,
) -> dict[str, float]:
    """Client latency of a one-prefill request minus the peers' compute for it, and minus
    the gateway's head passes too."""
    values, latencies, beyond_model = [], [], []
    ttfts, ttft_values, ttft_beyond = [], [], []
    served, served_values, served_beyond = [], [], []
    head_urls = [f"{gateway_url}/metrics"]
    for _ in range(rounds):
        before = peer_compute_seconds(peer_urls)
        head_before = metric_sum(head_urls, "swarmgate_head_pass_seconds_sum")
        served_before = metric_sum(head_urls, "swarmgate_response_first_token_seconds_sum")
        started = time.perf_counter()
        ttft = None
        stream = client.chat.completions.create(
            model=model,
            messages=prompt,  # type: ignore[arg-type]
            max_tokens=1,
            temperature=0,
            stream=True,
        )
        for chunk in stream:
            # the first token's chunk: its text, or the end of the reply when that token
            # decodes to nothing (a random model's special or partial token)
            if (
                ttft is None
                and chunk.choices
                and (chunk.choices[0].delta.content or chunk.choices[0].finish_reason)
            ):
                ttft = time.perf_counter() - started
        assert ttft is not None, "the stream had no content chunk"
        compute = peer_compute_seconds(peer_urls) - before
        head = metric_sum(head_urls, "swarmgate_head_pass_seconds_sum") - head_before
        server = metric_sum(head_urls, "swarmgate_response_first_token_seconds_sum") - served_before
        ttfts.append(ttft * 1e3)
        ttft_values.append((ttft - compute) * 1e3)
        ttft_beyond.append((ttft - compute - head) * 1e3)
        served.append(server * 1e3)
        served_values.append((server - compute) * 1e3)
        served_beyond.append((server - compute - head) * 1e3)
        before = peer_compute_seconds(peer_urls)
        head_before = metric_sum(head_urls, "swarmgate_head_pass_seconds_sum")
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
        head = metric_sum(head_urls, "swarmgate_head_pass_seconds_sum") - head_before
        latencies.append(latency * 1e3)
        values.append((latency - compute) * 1e3)
        beyond_model.append((latency - compute - head) * 1e3)
    return {
        "latency_p50_ms": statistics.median(latencies),
        "overhead_p50_ms": statistics.median(values),
        "beyond_model_p50_ms": statistics.median(beyond_model),
        "ttft_p50_ms": statistics.median(ttfts),
        "ttft_overhead_p50_ms": statistics.median(ttft_values),
        "ttft_beyond_model_p50_ms": statistics.median(ttft_beyond),
        "server_ttft_p50_ms": statistics.median(served),
        "server_ttft_overhead_p50_ms": statistics.median(served_values),
        "server_ttft_beyond_model_p50_ms": statistics.median(served_beyond),
    }
