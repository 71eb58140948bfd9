"""A peer's metrics endpoint: loopback only, live values read at scrape time, step histograms."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httpx

from peer.handlers import PeerState
from peer.metrics import PeerMetrics
from tests.metrics_text import value


class FakeState:
    def __init__(self) -> None:
        self.steps = 3

    def info(self) -> dict[str, Any]:
        counters = dict.fromkeys(
            ("steps", "forwards", "tokens_in", "sessions_opened", "sessions_resumed"), 0
        )
        counters.update(steps=self.steps, busy_refusals=1, pushes_in=4, pushes_out=0)
        counters.update(push_failures=2)
        return {
            "peer_id": "12D3Koo",
            "model": "m",
            "start": 0,
            "end": 4,
            "dtype": "float32",
            "quant": "none",
            "counters": counters,
            "cache_tokens_used": 10,
            "cache_tokens_free": 90,
            "cache_tokens_total": 100,
            "sessions_active": 1,
            "sessions_kept": 2,
            "queue_len": 0,
        }


def test_scrapes_read_the_state_now_and_the_hook_feeds_histograms() -> None:
    state: FakeState | None = None
    metrics = PeerMetrics(lambda: cast(PeerState, state))

    async def main() -> tuple[str, str, str, int]:
        url = await metrics.serve(0)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                loading = (await client.get(url)).text  # no state yet: histograms only
                nonlocal state
                state = FakeState()
                metrics.observe(4, 0.02)
                metrics.observe(1, 0.003)
                first = (await client.get(url)).text
                state.steps = 8
                second = (await client.get(url)).text
                missing = (await client.get(url.replace("/metrics", "/other"))).status_code
            return loading, first, second, missing
        finally:
            await metrics.close()

    loading, first, second, missing = asyncio.run(main())
    assert "swarmgate_peer_steps_total" not in loading
    assert value(loading, "swarmgate_peer_step_seconds_count") == 0
    assert value(first, "swarmgate_peer_steps_total") == 3
    assert value(second, "swarmgate_peer_steps_total") == 8
    assert value(first, "swarmgate_peer_busy_refusals_total") == 1
    assert value(first, "swarmgate_peer_pushes_in_total") == 4
    assert value(first, "swarmgate_peer_push_failures_total") == 2
    assert value(first, "swarmgate_peer_cache_tokens_free") == 90
    assert value(first, "swarmgate_peer_sessions_kept") == 2
    assert value(first, "swarmgate_peer_info", model="m", start="0", end="4") == 1
    assert value(first, "swarmgate_peer_step_seconds_count") == 2
    assert abs(value(first, "swarmgate_peer_step_seconds_sum") - 0.023) < 1e-9
    assert value(first, "swarmgate_peer_batch_size_sum") == 5
    assert value(first, "swarmgate_peer_batch_size_bucket", le="1.0") == 1
    assert missing == 404


def test_the_endpoint_survives_garbage() -> None:
    metrics = PeerMetrics(lambda: None)

    async def main() -> int:
        url = await metrics.serve(0)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x00\xff garbage\r\n\r\n")
            await writer.drain()
            assert (await reader.read()).startswith(b"HTTP/1.1 404 ")
            writer.close()
            async with httpx.AsyncClient(timeout=5) as client:
                return (await client.get(url)).status_code
        finally:
            await metrics.close()

    assert asyncio.run(main()) == 200
