"""GatewayMetrics.track times tokens and counts them, however a generation ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

from gateway.engine import ChoiceDelta, Engine, Usage
from gateway.metrics import GatewayMetrics
from swarm.rounds import ChannelStats
from tests.metrics_text import value

M = "m"


async def steps(usage: Usage, tokens: int) -> AsyncIterator[list[ChoiceDelta]]:
    usage.prompt_tokens = 7
    for i in range(tokens):
        usage.completion_tokens += 1
        yield [ChoiceDelta(0, "x", token_ids=[i])]
        await asyncio.sleep(0)
    yield [ChoiceDelta(0, "", finish_reason="length")]  # a flush: no token, no interval


async def consume(metrics: GatewayMetrics, tokens: int, stop_after: int | None = None) -> None:
    usage = Usage()
    seen = 0
    tracked = metrics.track(M, steps(usage, tokens), usage)
    async for _ in tracked:
        seen += 1
        assert value(metrics.render().decode(), "swarmgate_active_generations", model=M) == 1
        if seen == stop_after:
            await tracked.aclose()  # the client went away
            break


def test_a_whole_generation() -> None:
    metrics = GatewayMetrics()
    asyncio.run(consume(metrics, 5))
    text = metrics.render().decode()
    assert value(text, "swarmgate_time_to_first_token_seconds_count", model=M) == 1
    assert value(text, "swarmgate_inter_token_latency_seconds_count", model=M) == 4
    assert value(text, "swarmgate_prompt_tokens_total", model=M) == 7
    assert value(text, "swarmgate_completion_tokens_total", model=M) == 5
    assert value(text, "swarmgate_active_generations", model=M) == 0


def test_an_abandoned_generation_still_counts_and_leaves_no_activity() -> None:
    metrics = GatewayMetrics()
    asyncio.run(consume(metrics, 5, stop_after=2))
    text = metrics.render().decode()
    assert value(text, "swarmgate_completion_tokens_total", model=M) == 2
    assert value(text, "swarmgate_inter_token_latency_seconds_count", model=M) == 1
    assert value(text, "swarmgate_active_generations", model=M) == 0


def test_hooks_and_swarm_coverage_from_the_view() -> None:
    model = SimpleNamespace(name="m", num_blocks=4)
    peer = SimpleNamespace(reachable=True)
    view = SimpleNamespace(
        coverage=lambda: [1, 1, 0, 2], peers=[peer, peer, SimpleNamespace(reachable=False)]
    )
    channels = SimpleNamespace(stats=ChannelStats(rounds=3, ops=10, streams=2, lanes=1))
    engine: Any = SimpleNamespace(models=[model], model_view=lambda m: view, channels=channels)
    metrics = GatewayMetrics(cast(Engine, engine))
    metrics.route_opened(M, 3)
    metrics.prefix_lookup(M, hit=True)
    metrics.prefix_lookup(M, hit=False)
    metrics.prefix_lookup(M, hit=False)
    metrics.failed_over(M, 0)
    metrics.failed_over(M, 2)
    text = metrics.render().decode()
    assert value(text, "swarmgate_swarm_coverage", model=M) == 0.75
    assert value(text, "swarmgate_peer_rounds_total") == 3
    assert value(text, "swarmgate_peer_round_ops_total") == 10
    assert value(text, "swarmgate_peer_streams_opened_total") == 2
    assert value(text, "swarmgate_peer_lanes_opened_total") == 1
    assert value(text, "swarmgate_swarm_peers", model=M) == 2
    assert value(text, "swarmgate_route_hops_sum", model=M) == 3
    assert value(text, "swarmgate_prefix_reuse_total", model=M, result="hit") == 1
    assert value(text, "swarmgate_prefix_reuse_total", model=M, result="miss") == 2
    assert value(text, "swarmgate_failovers_total", model=M) == 2
    engine.model_view = lambda m: None  # the swarm does not know the model (yet)
    assert value(metrics.render().decode(), "swarmgate_swarm_coverage", model=M) == 0
