"""The peer server: loads a span, serves the peer protocols, announces itself, rebalances.

`PeerServer.start()` loads only the span's blocks (in the chosen dtype, quantized if asked),
measures its throughput, joins the swarm, serves `/swarmgate/sessions/1` (also over lanes,
`swarm.lanes`; step outputs pushed straight to the next hop where the client asks, through
`peer.pushes`), `/swarmgate/inference/1`, `/swarmgate/forward/1` and `/swarmgate/info/1`, and
keeps its capability record fresh. Without fixed blocks it picks the span where the swarm is
weakest and moves when that raises the swarm's bottleneck clearly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from peer.handlers import PeerState, handle_forward, handle_inference, handle_info
from peer.memory import CacheBudget, default_cache_tokens, kv_bytes_per_token
from peer.metrics import PeerMetrics
from peer.pushes import Pusher
from peer.quant import quantize_linears
from peer.rounds import RoundServer
from peer.scheduler import StepScheduler
from peer.selection import ServedSpan, better_start, choose_start
from peer.sessions import SessionTable
from peer.throughput import measure_throughput
from swarm import busy_poll
from swarm.announce import Announcer
from swarm.blocks import Span
from swarm.compute_turns import ComputeTurns
from swarm.lanes import LANE_PROTOCOL, LaneServer, LaneStream, listen_host
from swarm.main_thread import InlineExecutor
from swarm.models import Weights, load_weights
from swarm.models.spec import spec_of
from swarm.p2p import FrameStream, P2PNode
from swarm.protocol import (
    FORWARD_PROTOCOL,
    INFERENCE_PROTOCOL,
    INFO_PROTOCOL,
    MAX_STEP_TOKENS,
    SESSIONS_PROTOCOL,
)
from swarm.records import ModelRecord, PeerRecord, register_validators
from swarm.rounds import Channels
from swarm.swarm_view import SwarmView
from swarm.wire import WireLimits

log = logging.getLogger("swarmgate.peer")
T = TypeVar("T")
VERSION = "0.1.0"
# decode graphs captured at start (CUDA): rows up to the graphs' limit, contexts up to 1024
DECODE_GRAPH_ROWS = [1, 2, 4, 8, 16, 32, 64]
DECODE_GRAPH_PAGES = [4, 8, 16, 32]


@dataclass
class PeerConfig:
    model: str
    blocks: tuple[int, int] | None = None
    num_blocks: int | None = None
    bootstrap: list[str] = field(default_factory=list)
    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    announce: list[str] | None = None
    device: str = "cpu"
    dtype: str = "auto"
    quant: str = "none"
    cache_tokens: int | None = None
    identity: Path | None = None
    max_length: int | None = None
    idle_timeout: float = 300.0
    # seconds a decode step waits for other decoding sessions' steps (None: by device)
    batch_window: float | None = None
    rebalance_period: float = 180.0
    join_jitter: float = 2.0
    metrics_port: int | None = None  # serve Prometheus text on 127.0.0.1 (0: a free port)
    lanes: bool = True  # offer sessions over lanes (TCP + Noise beside libp2p; swarm.lanes)
    push: bool = True  # send step outputs straight to the next hop when the client asks
    lane_port: int = 0  # on the libp2p listen address's host (0: a free port)
    compile: bool = True  # on CUDA: compile the layers' parts around attention (Triton)
    pack: bool = True  # on a CPU in fp32: linears in oneDNN's packed layout (swarm.cpu_linear)
    # a file shared by the processes that compute on this machine's cores: they take turns
    # (swarm.compute_turns; `swarmgate up` passes its own); None: the cores are ours
    compute_turns: str | None = None
    busy_poll: bool = False  # the loop stays awake after each message (swarm.busy_poll)


def peer_wire_limits(hidden_size: int) -> WireLimits:
    """Frames no bigger than one step of MAX_STEP_TOKENS fp32 positions (plus headers)."""
    elements = MAX_STEP_TOKENS * hidden_size
    return WireLimits(
        max_frame_bytes=elements * 4 + (1 << 16),
        max_header_bytes=1 << 16,
        max_tensor_elements=elements,
        max_dims=4,
        max_tensors=2,
    )


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r} (auto, {', '.join(dtypes)})")
    return dtypes[name]


class PeerServer:
    def __init__(
        self, config: PeerConfig, compute: concurrent.futures.Executor | None = None
    ) -> None:
        self.config = config
        # where model compute runs (the process's main thread under `swarmgate peer`)
        self.compute = compute
        self.turns = ComputeTurns(config.compute_turns)
        self.device = torch.device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.weights: Weights | None = None
        self.node: P2PNode | None = None
        self.state: PeerState | None = None
        self.span: Span | None = None
        self.announcer: Announcer | None = None
        self.lanes: LaneServer | None = None
        self.pusher: Pusher | None = None
        self.view: SwarmView | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._busy_poll: busy_poll.BusyPoll | None = None  # while --busy-poll is on
        self._model_record: ModelRecord | None = None
        self.metrics = PeerMetrics(lambda: self.state) if config.metrics_port is not None else None

    @property
    def listen_maddrs(self) -> list[str]:
        return self.node.listen_maddrs if self.node else []

    async def start(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        if config.busy_poll:
            self._busy_poll = busy_poll.enable()
        self.weights = weights = await loop.run_in_executor(None, load_weights, config.model)
        spec = await loop.run_in_executor(None, spec_of, weights)
        self._model_record = ModelRecord(
            name=spec.name,
            model_hash=spec.model_hash,
            family=spec.family,
            num_blocks=spec.num_blocks,
            hidden_size=spec.hidden_size,
            block_hashes=spec.block_hashes,
            chat_template=spec.chat_template,
        )
        self.node = node = P2PNode(
            identity_path=config.identity,
            listen=config.listen,
            bootstrap=config.bootstrap,
            dht_mode="server",
            announce=config.announce,
            limits=peer_wire_limits(spec.hidden_size),
        )
        register_validators(node)
        await node.start()
        self.view = SwarmView(node, ping=False)
        start, end = await self._pick_blocks(weights)
        await self._load(start, end)
        for protocol, handler in (
            (INFERENCE_PROTOCOL, handle_inference),
            (FORWARD_PROTOCOL, handle_forward),
            (INFO_PROTOCOL, handle_info),
        ):
            await node.serve(protocol, self._bind(handler))
        if config.push:
            self.pusher = Pusher(Channels(node, lanes=config.lanes))
        await node.serve(SESSIONS_PROTOCOL, self._serve_rounds)
        if config.lanes:
            self.lanes = LaneServer(
                {SESSIONS_PROTOCOL: self._serve_rounds},
                host=listen_host(config.listen),
                port=config.lane_port,
                limits=node.limits,
            )
            await self.lanes.start()
            await node.serve(LANE_PROTOCOL, self.lanes.take_ticket)
        self.announcer = Announcer(node, self._record, self._model_record)
        await self.announcer.start()
        self._tasks.append(asyncio.create_task(self._expire_loop(), name="expire-sessions"))
        if config.blocks is None:
            self._tasks.append(asyncio.create_task(self._rebalance_loop(), name="rebalance"))
        if self.metrics is not None and config.metrics_port is not None:
            await self.metrics.serve(config.metrics_port)

    def _bind(
        self, handler: Callable[[PeerState, FrameStream], Awaitable[None]]
    ) -> Callable[[FrameStream], Awaitable[None]]:
        async def bound(stream: FrameStream) -> None:
            assert self.state is not None
            await handler(self.state, stream)

        return bound

    async def _serve_rounds(self, stream: FrameStream | LaneStream) -> None:
        def current() -> PeerState:
            assert self.state is not None
            return self.state

        await RoundServer(current, stream, self.pusher).serve()

    async def _pick_blocks(self, weights: Weights) -> tuple[int, int]:
        config = self.config
        if config.blocks is not None:
            return config.blocks
        length = min(config.num_blocks or weights.num_blocks, weights.num_blocks)
        await asyncio.sleep(random.uniform(0, config.join_jitter))
        served = await self._served_spans(weights.model_hash)
        for _ in range(10):  # joining a swarm that shows nothing yet: let the DHT catch up
            if served or not config.bootstrap:
                break
            await asyncio.sleep(1.0)
            served = await self._served_spans(weights.model_hash)
        start = choose_start(weights.num_blocks, served, length)
        return start, start + length

    async def _served_spans(self, model_hash: str) -> list[ServedSpan]:
        assert self.view is not None and self.node is not None
        snapshot = await self.view.refresh([model_hash], fresh=True)
        model = snapshot.models.get(model_hash)
        if model is None:
            return []
        return [
            ServedSpan(
                p.peer_id, p.record.start, p.record.end, max(p.record.throughput_decode, 1e-3)
            )
            for p in model.peers
            if p.peer_id != self.node.peer_id
        ]

    async def _load_phase(self, moving: bool, fn: Callable[..., T], *args: Any) -> T:
        """Run a phase of a span's load (seconds: weights, compiles, graph captures) on the
        compute executor. A GPU peer that computes on its event loop (`--compute inline`) and
        is `moving` to other blocks runs it on a helper thread instead, with its device
        current, so that it keeps answering (BUSY to new sessions) while it loads; its first
        load stays on the loop, the way the inline figures were measured (a span built on a
        helper thread was not compared on the same GPU; on a CPU it computes ~1.8x slower,
        so an inline CPU peer always builds on its loop's thread)."""
        loop = asyncio.get_running_loop()
        inline_gpu = isinstance(self.compute, InlineExecutor) and self.device.type == "cuda"

        def on_device() -> T:
            with torch.cuda.device(self.device):
                return fn(*args)

        with busy_poll.paused():  # a loading thread needs the GIL
            if not (moving and inline_gpu):
                return await loop.run_in_executor(self.compute, functools.partial(fn, *args))
            return await loop.run_in_executor(None, on_device)

    async def _load(self, start: int, end: int, moving: bool = False) -> None:
        assert self.weights is not None and self.node is not None
        weights, config = self.weights, self.config
        log.info("loading blocks [%d, %d) of %s", start, end, weights.name)

        def build() -> Span:
            span = Span(weights, start, end, dtype=self.dtype, device=self.device, progress=True)
            if config.quant != "none":
                quantize_linears(span.module, config.quant, self.dtype)  # type: ignore[arg-type]
                span.quant = config.quant
            if config.pack and span.pack_linears():
                log.info("CPU linears packed for oneDNN")
            if config.compile and span.compile_layers():
                log.info("compiling the layers' fused parts (first steps of each shape)")
            return span

        def prepare_decode() -> None:
            """Graphs (and compiles) of the common decode sizes, once the pool has its final
            size: growing the pool drops the graphs captured before."""
            started = time.monotonic()
            captured = span.warm_up(DECODE_GRAPH_ROWS, DECODE_GRAPH_PAGES)
            if captured:
                log.info(
                    "captured %d decode graphs in %.1f s", captured, time.monotonic() - started
                )

        # built on the compute thread: measured 1.8x slower decode when built on another thread
        span = await self._load_phase(moving, build)
        # timed in the machine's turn: not while the other processes on its cores compute
        await self.turns.take()
        try:
            throughput = await self._load_phase(
                moving, measure_throughput, span, weights.model_hash
            )
        finally:
            self.turns.release()
        text_config = weights.config
        head_dim = int(
            getattr(text_config, "head_dim", 0)
            or text_config.hidden_size // text_config.num_attention_heads
        )
        per_token = kv_bytes_per_token(
            end - start, int(text_config.num_key_value_heads), head_dim, self.dtype
        )
        total = config.cache_tokens or default_cache_tokens(per_token, self.device)
        max_length = config.max_length or int(getattr(text_config, "max_position_embeddings", 2048))
        budget = CacheBudget(total)
        # the pool behind the budget: all of it up front on a GPU (captured graphs keep its
        # addresses), a first part on the CPU (it grows when needed)
        slack = 64 * span.page_size
        up_front = total if self.device.type == "cuda" else min(total, 8192)
        await self._load_phase(moving, span.reserve_cache, up_front + slack)
        await self._load_phase(moving, prepare_decode)
        sessions = SessionTable(span, budget, config.idle_timeout)
        scheduler = StepScheduler(
            span,
            executor=self.compute,
            window=config.batch_window
            if config.batch_window is not None
            else (0.002 if self.device.type == "cuda" else 0.008),
            active=sessions.decoding,
            turns=self.turns,
        )
        scheduler.stats.observe = self.metrics.observe if self.metrics is not None else None
        scheduler.start()
        old = self.state
        self.span = span
        self.state = PeerState(
            peer_id=self.node.peer_id,
            model_name=weights.name,
            model_hash=weights.model_hash,
            start=start,
            end=end,
            dtype=str(self.dtype).removeprefix("torch."),
            quant=config.quant,
            hidden_size=span.hidden_size,
            max_length=min(max_length, total),
            sessions=sessions,
            scheduler=scheduler,
            throughput_decode=throughput.decode,
            throughput_prefill=throughput.prefill,
        )
        if old is not None:
            await old.scheduler.stop()

    def _record(self) -> PeerRecord:
        assert self.state is not None and self.node is not None
        s = self.state
        return PeerRecord(
            peer_id=self.node.peer_id,
            addrs=tuple(self.config.announce or self.node.listen_maddrs),
            model_hash=s.model_hash,
            start=s.start,
            end=s.end,
            dtype=s.dtype,
            quant=s.quant,
            throughput_decode=s.throughput_decode,
            throughput_prefill=s.throughput_prefill,
            cache_tokens_free=s.sessions.budget.free_tokens,
            queue_len=s.scheduler.queue_length,
            version=VERSION,
        )

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            if self.state is not None:
                self.state.sessions.expire()

    async def _rebalance_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.rebalance_period * random.uniform(0.75, 1.25))
            try:
                await self.rebalance_once()
            except Exception:
                log.exception("rebalance check failed")

    async def rebalance_once(self) -> bool:
        """Move to a better span if that raises the swarm's bottleneck clearly."""
        assert self.state is not None and self.weights is not None and self.node is not None
        state = self.state
        served = await self._served_spans(state.model_hash)
        me = ServedSpan(
            self.node.peer_id, state.start, state.end, max(state.throughput_decode, 1e-3)
        )
        start = better_start(self.weights.num_blocks, [*served, me], me.peer_id)
        if start is None or len(state.sessions):
            return False
        state.moving = True  # refuse new sessions while the span is swapped
        log.info(
            "moving from [%d, %d) to [%d, %d)",
            state.start,
            state.end,
            start,
            start + state.end - state.start,
        )
        try:
            await self._load(start, start + state.end - state.start, moving=True)
        except BaseException:
            state.moving = False
            raise
        assert self.announcer is not None
        await self.announcer.announce()
        return True

    async def stop(self) -> None:
        if self._busy_poll is not None:
            busy_poll.disable(self._busy_poll)
        if self.metrics is not None:
            await self.metrics.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.announcer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.announcer.stop(offline=True), 5.0)
        if self.pusher is not None:
            await self.pusher.close()
        if self.lanes is not None:
            await self.lanes.close()
        if self.state is not None:
            await self.state.scheduler.stop()
        if self.node is not None:
            await self.node.stop()
