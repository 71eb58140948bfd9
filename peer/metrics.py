"""A peer's Prometheus metrics, served as text on 127.0.0.1 only (`swarmgate peer --metrics-port`).

Live values (steps, forwards, tokens in, cache tokens, sessions, queue) are read from the
current `PeerState` at scrape time by `PeerCollector`, so they follow a peer that moves to other
blocks. Step latency and batch sizes are histograms fed by the scheduler's `stats.observe` hook
on the compute thread (`PeerMetrics.observe`). The HTTP side is a tiny asyncio server on the
peer's own event loop: scrapes read the state on the thread that changes it.
Names and meanings: docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from swarm import busy_poll

if TYPE_CHECKING:
    from peer.handlers import PeerState

HOST = "127.0.0.1"
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
READ_TIMEOUT = 5.0
MAX_HEADER_LINES = 100

# (metric name, help, key in PeerState.info()["counters"])
COUNTERS = (
    ("swarmgate_peer_steps", "Inference steps served", "steps"),
    ("swarmgate_peer_forwards", "Stateless forward requests served", "forwards"),
    (
        "swarmgate_peer_tokens_in",
        "Positions received in steps (prefill, decode, replay)",
        "tokens_in",
    ),
    ("swarmgate_peer_sessions_opened", "Inference sessions opened", "sessions_opened"),
    ("swarmgate_peer_sessions_resumed", "Kept sessions re-attached", "sessions_resumed"),
    ("swarmgate_peer_busy_refusals", "Sessions refused for lack of cache space", "busy_refusals"),
    ("swarmgate_peer_pushes_in", "Steps whose rows the previous peer pushed", "pushes_in"),
    ("swarmgate_peer_pushes_out", "Step outputs pushed to the next peer", "pushes_out"),
    (
        "swarmgate_peer_push_failures",
        "Step outputs that could not be pushed (the client relayed them)",
        "push_failures",
    ),
)
# (metric name, help, key in PeerState.info())
GAUGES = (
    (
        "swarmgate_peer_cache_tokens_used",
        "KV-cache tokens reserved by sessions",
        "cache_tokens_used",
    ),
    ("swarmgate_peer_cache_tokens_free", "KV-cache tokens free", "cache_tokens_free"),
    ("swarmgate_peer_cache_tokens_total", "KV-cache budget in tokens", "cache_tokens_total"),
    ("swarmgate_peer_sessions_active", "Sessions attached to a client", "sessions_active"),
    ("swarmgate_peer_sessions_kept", "Finished sessions kept for prefix reuse", "sessions_kept"),
    ("swarmgate_peer_queue_length", "Steps waiting for the compute thread", "queue_len"),
)


class PeerCollector(Collector):
    """Counters and gauges read from the peer's current state when scraped."""

    def __init__(self, state: Callable[[], PeerState | None]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state()
        if state is None:  # still loading its span
            return
        info = state.info()
        labels = ["model", "start", "end", "dtype", "quant", "peer_id"]
        about = GaugeMetricFamily("swarmgate_peer_info", "The span this peer serves", labels=labels)
        about.add_metric([str(info[k]) for k in labels], 1)
        yield about
        for name, doc, key in COUNTERS:
            yield CounterMetricFamily(name, doc, value=info["counters"][key])
        for name, doc, key in GAUGES:
            yield GaugeMetricFamily(name, doc, value=info[key])
        yield CounterMetricFamily(
            "swarmgate_peer_busy_poll_seconds",
            "Seconds the peer's event loop was kept awake polling (--busy-poll)",
            value=busy_poll.seconds(),
        )


class PeerMetrics:
    """A peer's registry, the scheduler hook and the loopback HTTP endpoint."""

    def __init__(self, state: Callable[[], PeerState | None]) -> None:
        self.registry = registry = CollectorRegistry()
        self.step_seconds = Histogram(
            "swarmgate_peer_step_seconds",
            "Compute time of one batched forward through the span",
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "swarmgate_peer_batch_size",
            "Steps computed together in one forward",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        registry.register(PeerCollector(state))
        self.url: str | None = None
        self._server: asyncio.Server | None = None

    def observe(self, batch_size: int, seconds: float) -> None:
        """The scheduler's `stats.observe` hook (called on the compute thread)."""
        self.step_seconds.observe(seconds)
        self.batch_size.observe(batch_size)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(self, port: int = 0) -> str:
        """Listen on 127.0.0.1:`port` (0 picks a free one); returns the metrics URL."""
        self._server = await asyncio.start_server(self._handle, HOST, port)
        chosen = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{HOST}:{chosen}/metrics"
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target = await self._read_request(reader)
            if target in ("/metrics", "/"):
                status, kind, body = "200 OK", CONTENT_TYPE_LATEST, self.render()
            else:
                status, kind, body = "404 Not Found", "text/plain", b"not found: try /metrics\n"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> str | None:
        """The path of a GET request (headers read and ignored), or None for anything else."""
        line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
        for _ in range(MAX_HEADER_LINES):
            header = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            if header in (b"\r\n", b"\n", b""):
                break
        parts = line.decode("latin-1").split()
        if len(parts) < 2 or parts[0] != "GET":
            return None
        return parts[1].split("?", 1)[0]
