"""The gateway process: joins the swarm as a DHT client, keeps a live swarm view, serves HTTP.

`run_gateway(config)` loads the head of each configured model, starts the p2p node, refreshes
the swarm view in the background, and runs the FastAPI app under uvicorn until a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import torch
import uvicorn

from gateway.app import create_app
from gateway.engine import Engine, ServedModel
from gateway.keys import KeyGuard
from gateway.store import MemoryStore, RedisStore, SessionStore
from swarm import busy_poll, trace
from swarm.compute_turns import ComputeTurns
from swarm.head import Head
from swarm.models import load_weights
from swarm.models.registry import find_entry
from swarm.p2p import P2PNode
from swarm.records import register_validators
from swarm.swarm_view import SwarmView
from swarm.threads import glue_thread

log = logging.getLogger("swarmgate.gateway")


@dataclass
class GatewayConfig:
    bootstrap: list[str]
    host: str = "127.0.0.1"
    port: int = 8000
    models: list[str] = field(default_factory=lambda: ["smollm2-135m-instruct"])
    redis_url: str | None = None
    api_keys: list[str] = field(default_factory=list)
    refresh_period: float = 3.0
    keep_alive: float = 300.0  # seconds peers keep a finished turn's caches for reuse
    mixed_precision: bool = False  # chain peers of different quantizations together
    queue_timeout: float = 10.0  # seconds a request waits for cache space before a 503
    max_queued: int = 64  # requests waiting for cache space at most
    max_body_bytes: int = 4 << 20
    device: str = "cpu"  # where the head (embeddings, final norm, LM head) runs
    # seconds a round to a peer waits for other generations still on their way to it
    round_window: float = 0.005
    lanes: bool = True  # sessions over lanes (TCP + Noise beside libp2p) where peers offer them
    round_groups: int = 1  # pipelined micro-batches the generations decoding together form
    rounds_in_flight: int | None = None  # rounds a peer pipelines; None: one per round group
    push: bool = False  # peers push each hop's output straight to the next hop
    stream_after_send: bool = False  # deltas written once the next step left (see Engine)
    head_graphs: bool = True  # on a GPU, greedy head passes replay CUDA graphs
    head_inline: bool = False  # head passes on the loop's thread, not a thread of their own
    # a file shared by the processes that compute on this machine's CPU cores: the head
    # passes take turns with them (swarm.compute_turns; `swarmgate up` passes its own)
    compute_turns: str | None = None
    busy_poll: bool = False  # the loop stays awake after each message (swarm.busy_poll)


def load_served_model(name: str, device: str = "cpu", head_graphs: bool = True) -> ServedModel:
    weights = load_weights(name)
    entry = find_entry(name)
    aliases = entry.aliases if entry else ()
    # fp32 on the CPU; on a GPU the head runs in bf16 like the peers (logits come out fp32)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    head = Head(weights, dtype=dtype, device=device)
    if head_graphs and head.capture_greedy_graphs():
        log.info("captured the greedy head graphs of %s", weights.name)
    return ServedModel(weights.name, tuple(aliases), weights, head)


async def _refresh_loop(view: SwarmView, period: float) -> None:
    while True:
        try:
            await view.refresh()
        except Exception:
            log.warning("swarm view refresh failed", exc_info=True)
        await asyncio.sleep(period)


async def run_gateway(config: GatewayConfig, on_ready: Callable[[str], None] | None = None) -> int:
    trace.start("gateway")
    loop = asyncio.get_running_loop()
    poll = busy_poll.enable() if config.busy_poll else None
    models = [
        await loop.run_in_executor(None, load_served_model, name, config.device, config.head_graphs)
        for name in config.models
    ]
    glue_thread()  # this loop's thread moves data; the head computes on its own (swarm.threads)
    node = P2PNode(dht_mode="client", bootstrap=config.bootstrap)
    register_validators(node)
    await node.start()
    view = SwarmView(node, ping=True)
    store: SessionStore = RedisStore(config.redis_url) if config.redis_url else MemoryStore()
    engine = Engine(
        node,
        view,
        models,
        store=store,
        keep_alive=config.keep_alive,
        mixed_precision=config.mixed_precision,
        max_waiting=config.max_queued,
        max_wait=config.queue_timeout,
        round_window=config.round_window,
        lanes=config.lanes,
        round_groups=config.round_groups,
        rounds_in_flight=config.rounds_in_flight,
        push=config.push,
        stream_after_send=config.stream_after_send,
        head_inline=config.head_inline,
        turns=ComputeTurns(config.compute_turns),
    )
    refresher = asyncio.create_task(_refresh_loop(view, config.refresh_period), name="swarm-view")
    guard = KeyGuard(static_keys=list(config.api_keys), redis_url=config.redis_url)
    app = create_app(engine, max_body_bytes=config.max_body_bytes, guard=guard)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
    )
    announcer = asyncio.create_task(_announce_when_ready(server, config, on_ready))
    # uvicorn re-raises the signal that stopped it once it has shut down: make that a no-op so
    # a SIGTERM/SIGINT ends the process through our own clean-up with exit code 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        await server.serve()
    finally:
        for task in (announcer, refresher):
            task.cancel()
        await asyncio.gather(announcer, refresher, return_exceptions=True)
        await engine.close()
        await store.close()
        await guard.close()
        with contextlib.suppress(Exception):
            await node.stop()
        if poll is not None:
            busy_poll.disable(poll)
    return 0


async def _announce_when_ready(
    server: uvicorn.Server, config: GatewayConfig, on_ready: Callable[[str], None] | None
) -> None:
    while not server.started:
        await asyncio.sleep(0.05)
    port = config.port
    for srv in server.servers:
        for sock in srv.sockets:
            port = sock.getsockname()[1]
    url = f"http://{config.host}:{port}"
    deadline = time.monotonic() + 600
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/ready")).status_code == 200:
                    break
            await asyncio.sleep(0.5)
    if on_ready is not None:
        on_ready(url)
