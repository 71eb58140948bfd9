"""The gateway's Prometheus metrics, on a registry of their own (several apps, one process).

`GatewayMetrics` holds every metric and the small hooks the app and the engine call: requests by
route and status, tokens in and out, time to first token and inter-token latency, generations
in flight, route length, failovers and prefix reuse. Swarm coverage and peer counts are not
stored: `SwarmCollector` computes them from the engine's `SwarmView` at scrape time.
Names and meanings: docs/metrics.md.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from swarm import busy_poll

if TYPE_CHECKING:
    from gateway.engine import ChoiceDelta, Engine, Usage

CONTENT_TYPE = CONTENT_TYPE_LATEST
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HOP_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
HEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class SwarmCollector(Collector):
    """Per served model: the fraction of blocks some reachable peer serves, and those peers."""

    def __init__(self, engine: Engine | None) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        coverage = GaugeMetricFamily(
            "swarmgate_swarm_coverage",
            "Fraction of the model's blocks served by at least one reachable peer",
            labels=["model"],
        )
        peers = GaugeMetricFamily(
            "swarmgate_swarm_peers", "Reachable peers serving blocks of the model", labels=["model"]
        )
        for model in self.engine.models if self.engine is not None else []:
            view = self.engine.model_view(model) if self.engine is not None else None
            counts = view.coverage() if view is not None else []
            served = sum(1 for count in counts if count)
            coverage.add_metric([model.name], served / model.num_blocks if model.num_blocks else 0)
            peers.add_metric(
                [model.name], sum(1 for p in view.peers if p.reachable) if view is not None else 0
            )
        yield coverage
        yield peers
        stats = self.engine.channels.stats if self.engine is not None else None
        rounds = CounterMetricFamily(
            "swarmgate_peer_rounds", "Round frames sent to peers (each carries many sessions' ops)"
        )
        ops = CounterMetricFamily(
            "swarmgate_peer_round_ops", "Session operations those rounds held"
        )
        streams = CounterMetricFamily(
            "swarmgate_peer_streams_opened",
            "Sessions streams opened to peers (kept across requests)",
        )
        lanes = CounterMetricFamily(
            "swarmgate_peer_lanes_opened",
            "Of those, lanes (TCP + Noise beside libp2p) rather than libp2p streams",
        )
        rounds.add_metric([], stats.rounds if stats else 0)
        ops.add_metric([], stats.ops if stats else 0)
        streams.add_metric([], stats.streams if stats else 0)
        lanes.add_metric([], stats.lanes if stats else 0)
        yield rounds
        yield ops
        yield streams
        yield lanes
        yield CounterMetricFamily(
            "swarmgate_busy_poll_seconds",
            "Seconds the gateway's event loop was kept awake polling (--busy-poll)",
            value=busy_poll.seconds(),
        )


class GatewayMetrics:
    """Every gateway metric, registered on this object's own `CollectorRegistry`."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "swarmgate_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "swarmgate_prompt_tokens",
            "Prompt tokens fed to the swarm",
            ["model"],
            registry=registry,
        )
        self.completion_tokens = Counter(
            "swarmgate_completion_tokens", "Tokens generated", ["model"], registry=registry
        )
        self.ttft = Histogram(
            "swarmgate_time_to_first_token_seconds",
            "From the start of a generation to its first sampled token",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.first_token_sent_seconds = Histogram(
            "swarmgate_response_first_token_seconds",
            "Streamed responses: from the request's arrival at the gateway to its first "
            "token's bytes handed to the HTTP server (tokenizing, routing, the swarm, the "
            "head and the response's start included)",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            "swarmgate_inter_token_latency_seconds",
            "Between consecutive decoding steps of one generation",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.active = Gauge(
            "swarmgate_active_generations", "Generations in flight", ["model"], registry=registry
        )
        self.route_hops = Histogram(
            "swarmgate_route_hops",
            "Peers in each chain opened for a generation",
            ["model"],
            buckets=HOP_BUCKETS,
            registry=registry,
        )
        self.head_passes = Histogram(
            "swarmgate_head_pass_seconds",
            "One LM-head pass (final norm, logits, greedy picks) over the rows of every "
            "generation waiting for it: the gateway's own model compute",
            ["model"],
            buckets=HEAD_BUCKETS,
            registry=registry,
        )
        self.failovers = Counter(
            "swarmgate_failovers",
            "Peers replaced in the middle of a session",
            ["model"],
            registry=registry,
        )
        self.prefix_reuse = Counter(
            "swarmgate_prefix_reuse",
            "Lookups of kept peer caches for a prompt's prefix, by result (hit, miss)",
            ["model", "result"],
            registry=registry,
        )
        registry.register(SwarmCollector(engine))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def request_done(self, route: str, method: str, status: int) -> None:
        self.requests.labels(route, method, str(status)).inc()

    def first_token_sent(self, model: str, seconds: float) -> None:
        self.first_token_sent_seconds.labels(model).observe(seconds)

    def route_opened(self, model: str, hops: int) -> None:
        self.route_hops.labels(model).observe(hops)

    def prefix_lookup(self, model: str, hit: bool) -> None:
        self.prefix_reuse.labels(model, "hit" if hit else "miss").inc()

    def failed_over(self, model: str, count: int) -> None:
        if count:
            self.failovers.labels(model).inc(count)

    async def track(
        self, model: str, source: AsyncIterator[list[ChoiceDelta]], usage: Usage
    ) -> AsyncIterator[list[ChoiceDelta]]:
        """Pass `source` through, timing its decoding steps and counting its tokens.

        Prompt tokens count once the prefill gave a first token; completion tokens when the
        generation ends (however it ends: done, failed or abandoned by its client).
        """
        ttft, itl, active = (
            self.ttft.labels(model),
            self.itl.labels(model),
            self.active.labels(model),
        )
        last = time.perf_counter()
        first = True
        active.inc()
        try:
            async for deltas in source:
                if _has_tokens(deltas):
                    now = time.perf_counter()
                    if first:
                        ttft.observe(now - last)
                        self.prompt_tokens.labels(model).inc(usage.prompt_tokens)
                    else:
                        itl.observe(now - last)
                    first, last = False, now
                yield deltas
        finally:
            active.dec()
            self.completion_tokens.labels(model).inc(usage.completion_tokens)


def _has_tokens(deltas: Sequence[ChoiceDelta]) -> bool:
    return any(delta.token_ids for delta in deltas)
