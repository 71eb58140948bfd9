"""Prometheus metrics and the access log of a real `swarmgate up --peer-metrics` under a chat."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.metrics_text import scrape, value
from tests.procs import Proc, start

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def up() -> Iterator[Proc]:
    proc = start(["up", "--port", "0", "--peers", "2", "--peer-metrics"], "GATEWAY_READY ")
    try:
        yield proc
    finally:
        assert proc.stop(timeout=60) == 0, proc.output[-3000:]


def stream_chat(
    url: str, messages: list[dict[str, str]], request_id: str, max_tokens: int
) -> tuple[str, Any, str | None]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="smollm2",
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-request-id": request_id},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert usage is not None and usage.completion_tokens > 1
    return text, usage, finish


def access_line(proc: Proc, request_id: str) -> dict[str, Any]:
    """The request's access-log line (logs are written by a thread of their own: wait for it)."""
    for _ in range(100):
        lines = [
            json.loads(line)
            for line in proc.lines
            if line.startswith("{") and f'"request_id": "{request_id}"' in line
        ]
        if lines:
            break
        time.sleep(0.05)
    assert len(lines) == 1, proc.output[-3000:]
    return lines[0]


def test_streaming_chat_moves_gateway_and_peer_metrics(up: Proc) -> None:
    url = str(up.ready["url"])
    peer_urls = [str(u) for u in up.ready["peer_metrics"]]  # type: ignore[attr-defined]
    assert len(peer_urls) == 2 and all(u.startswith("http://127.0.0.1:") for u in peer_urls)
    before, peers_before = scrape(f"{url}/metrics"), [scrape(u) for u in peer_urls]
    messages = [{"role": "user", "content": f"Name three rivers. ({uuid.uuid4().hex[:6]})"}]
    request_id = f"metrics-{uuid.uuid4().hex[:8]}"
    text, usage, finish = stream_chat(url, messages, request_id, max_tokens=12)
    assert finish in ("stop", "length")
    after, peers_after = scrape(f"{url}/metrics"), [scrape(u) for u in peer_urls]

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    chat = {"route": "/v1/chat/completions", "method": "POST", "status": "200"}
    assert grew("swarmgate_http_requests_total", **chat) == 1
    assert grew("swarmgate_completion_tokens_total", model=MODEL) == usage.completion_tokens
    assert grew("swarmgate_prompt_tokens_total", model=MODEL) == usage.prompt_tokens
    assert grew("swarmgate_time_to_first_token_seconds_count", model=MODEL) == 1
    assert grew("swarmgate_time_to_first_token_seconds_sum", model=MODEL) > 0
    # the response's own first-token time spans the generation's (tokenizing, the start of
    # the response and the writing come on top)
    assert grew("swarmgate_response_first_token_seconds_count", model=MODEL) == 1
    assert grew("swarmgate_response_first_token_seconds_sum", model=MODEL) > grew(
        "swarmgate_time_to_first_token_seconds_sum", model=MODEL
    )
    # one token per decoding step: every token after the first is one inter-token interval
    itl = grew("swarmgate_inter_token_latency_seconds_count", model=MODEL)
    assert itl == usage.completion_tokens - 1
    assert value(after, "swarmgate_active_generations", model=MODEL) == 0
    assert grew("swarmgate_route_hops_count", model=MODEL) == 1
    # one head pass per token sampled (no other generation to share them with)
    assert grew("swarmgate_head_pass_seconds_count", model=MODEL) == usage.completion_tokens
    assert grew("swarmgate_head_pass_seconds_sum", model=MODEL) > 0
    assert grew("swarmgate_route_hops_sum", model=MODEL) == 2  # two peers, one span each
    assert grew("swarmgate_prefix_reuse_total", model=MODEL, result="miss") == 1
    assert value(after, "swarmgate_swarm_coverage", model=MODEL) == 1.0
    assert value(after, "swarmgate_swarm_peers", model=MODEL) == 2
    assert value(after, "swarmgate_failovers_total", model=MODEL) == 0
    # `up` reaches both peers over lanes (TCP + Noise), opened once and kept
    assert value(after, "swarmgate_peer_lanes_opened_total") == 2
    assert value(after, "swarmgate_peer_streams_opened_total") == 2

    line = access_line(up, request_id)  # written when the stream ended: it has the counts
    assert line["logger"] == "swarmgate.access" and line["level"] == "info"
    assert line["method"] == "POST" and line["path"] == "/v1/chat/completions"
    assert line["status"] == 200 and line["stream"] is True and line["model"] == MODEL
    assert line["completion_tokens"] == usage.completion_tokens
    assert line["prompt_tokens"] == usage.prompt_tokens
    assert line["duration_ms"] > 0
    assert 0 < line["first_token_ms"] < line["duration_ms"]

    # the prefill, then one step per token fed back: every token but the last one
    steps = usage.completion_tokens
    for old, new in zip(peers_before, peers_after, strict=True):

        def moved(name: str, old: str = old, new: str = new) -> float:
            return value(new, name) - value(old, name)

        assert moved("swarmgate_peer_steps_total") == steps
        assert moved("swarmgate_peer_step_seconds_count") == steps  # batch 1: a forward each
        assert moved("swarmgate_peer_step_seconds_sum") > 0
        assert moved("swarmgate_peer_batch_size_count") == steps
        assert moved("swarmgate_peer_batch_size_sum") == steps
        assert moved("swarmgate_peer_tokens_in_total") == usage.prompt_tokens + steps - 1
        total = value(new, "swarmgate_peer_cache_tokens_total")
        used = value(new, "swarmgate_peer_cache_tokens_used")
        assert total > 0 and 0 <= used <= total
        assert used + value(new, "swarmgate_peer_cache_tokens_free") == total
        assert value(new, "swarmgate_peer_sessions_active") == 0
        assert value(new, "swarmgate_peer_sessions_kept") >= 1  # the finished turn, for reuse
        assert value(new, "swarmgate_peer_info", model=MODEL) == 1

    # a follow-up turn re-attaches the kept caches: a prefix-reuse hit, no new route
    follow = [*messages, {"role": "assistant", "content": text}]
    follow.append({"role": "user", "content": "And one more?"})
    again = scrape(f"{url}/metrics")
    stream_chat(url, follow, f"{request_id}-2", max_tokens=4)
    final = scrape(f"{url}/metrics")
    hits = value(final, "swarmgate_prefix_reuse_total", model=MODEL, result="hit")
    assert hits - value(again, "swarmgate_prefix_reuse_total", model=MODEL, result="hit") == 1
    hops = value(final, "swarmgate_route_hops_count", model=MODEL)
    assert hops == value(again, "swarmgate_route_hops_count", model=MODEL)


def test_metrics_is_open_plain_text_and_counts_scrapes(up: Proc) -> None:
    url = str(up.ready["url"])
    first = scrape(f"{url}/metrics")
    second = scrape(f"{url}/metrics")
    scrapes = {"route": "/metrics", "method": "GET", "status": "200"}
    assert value(second, "swarmgate_http_requests_total", **scrapes) == (
        value(first, "swarmgate_http_requests_total", **scrapes) + 1
    )
