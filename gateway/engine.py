"""The generation engine: prompt ids in, a stream of per-choice text deltas out, over the swarm.

The gateway holds each served model's head (tokenizer, embeddings, norm, LM head); the engine
routes a chain of peers over all blocks, opens one inference session (batch = n choices),
prefills, then samples token by token, detokenizes incrementally, applies stop sequences and
closes the session (also when the consumer goes away: the peers free their caches at once).
A failed peer is banned and its blocks rerouted and replayed by the session itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import torch

from gateway.detokenize import IncrementalDecoder
from gateway.head_batch import HeadBatcher
from gateway.metrics import GatewayMetrics
from gateway.routing import Bans, find_route
from gateway.sampling import SampledToken, Sampler, SamplingParams
from gateway.stops import StopMatcher
from gateway.store import KeptSession, MemoryStore, SessionStore, reusable
from swarm import busy_poll, trace
from swarm.compute_turns import NO_TURNS, ComputeTurns
from swarm.head import Head
from swarm.main_thread import InlineExecutor
from swarm.models import Weights
from swarm.p2p import P2PNode
from swarm.rounds import Channels
from swarm.session import HistoryLostError, Hop, InferenceSession, SessionFailedError
from swarm.swarm_view import ModelView, PeerView, SwarmView
from swarm.threads import compute_thread
from swarm.wire import BAD_REQUEST, BUSY, WireError

log = logging.getLogger("swarmgate.gateway")


class NoRouteError(RuntimeError):
    """No chain of live peers covers every block of the model right now."""


class OverloadedError(NoRouteError):
    """The swarm's caches are full: the request waited its turn and gave up (503)."""


ADMISSION_POLL = 0.25  # seconds between attempts while every candidate peer is busy
INLINE_EMBED = 64  # token ids embedded on the event loop; more go to the head's thread
MAX_OPEN_FAILURES = 4  # peers that fail to open a session before the request gets a 503


@dataclass
class ServedModel:
    """A model the gateway can serve: its name, head and swarm identity."""

    name: str
    aliases: tuple[str, ...]
    weights: Weights
    head: Head
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def model_hash(self) -> str:
        return self.weights.model_hash

    @property
    def num_blocks(self) -> int:
        return self.weights.num_blocks

    @property
    def max_context(self) -> int:
        return int(getattr(self.weights.config, "max_position_embeddings", 2048))

    @property
    def chat(self) -> bool:
        return bool(self.head.chat_template)


def _settle(future: asyncio.Future[None]) -> None:
    """Mark a wait over (once: later calls do nothing)."""
    if not future.done():
        future.set_result(None)


def _stepped(sent: asyncio.Future[None] | None, step: asyncio.Future[torch.Tensor]) -> None:
    """A step's end also ends any wait for its sending; its error is for its awaiter."""
    if sent is not None:
        _settle(sent)
    if not step.cancelled():
        step.exception()


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass
class ChoiceDelta:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class _Choice:
    index: int
    sampler: Sampler
    stops: StopMatcher
    detokenizer: IncrementalDecoder
    ids: list[int] = field(default_factory=list)
    done: bool = False


@dataclass
class _Live:
    """The session of one generation and the token ids its caches hold (batch 1 only)."""

    session: InferenceSession
    fed: list[int] = field(default_factory=list)


class Engine:
    def __init__(
        self,
        node: P2PNode,
        view: SwarmView,
        models: Sequence[ServedModel],
        store: SessionStore | None = None,
        keep_alive: float = 300.0,
        mixed_precision: bool = False,
        max_waiting: int = 64,
        max_wait: float = 10.0,
        round_window: float = 0.005,
        lanes: bool = True,
        round_groups: int = 1,
        rounds_in_flight: int | None = None,
        push: bool = False,
        stream_after_send: bool = False,
        turns: ComputeTurns = NO_TURNS,
        head_inline: bool = False,
    ) -> None:
        self.node = node
        self.push = push  # decode steps pushed peer to peer (swarm.session)
        # write a token's deltas once its next step is on the wire, not before sending it:
        # a round of many generations then leaves without waiting for all of their writes
        # (H200, 32 streams: head pass -> next round 2.71 -> 1.85 ms p50). Off where the
        # writes compete with the peers' compute for the same cores (2-core CPU machine, one
        # stream: 0.67x against 0.79-0.85x `generate` with the writes first)
        self.stream_after_send = stream_after_send
        self.mixed_precision = mixed_precision
        self.max_waiting = max_waiting  # requests queued for cache space at most
        self.max_wait = max_wait  # seconds one request waits for cache space at most
        self.waiting = 0
        self.view = view
        self.models = list(models)
        self.store: SessionStore = store or MemoryStore()
        self.keep_alive = keep_alive
        self.bans = Bans()
        self.failovers = 0
        self.prefix_hits = 0
        self.store_errors = 0
        self.metrics = GatewayMetrics(self)  # one registry per engine, so per app
        # the head computes on its own thread, with all of torch's threads (swarm.threads);
        # `head_inline`: on the loop's thread instead (a GPU head's pass is a short graph
        # replay: no hand-off to the thread and back, but the loop waits for each pass)
        self._head_pool: concurrent.futures.Executor = (
            InlineExecutor()
            if head_inline
            else concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="head", initializer=compute_thread
            )
        )
        self._head_batchers: dict[str, HeadBatcher] = {}
        self.turns = turns  # with the peers on these cores, head passes take turns
        # one stream per peer, shared by every session; a round waits up to `round_window`
        # for the steps of the other generations decoding through that peer; a lane where the
        # peer offers one (swarm.lanes), else a libp2p stream; with `round_groups` > 1 the
        # generations decoding together split into that many pipelined micro-batches, and a
        # peer gets `rounds_in_flight` rounds before it answers the first (default: one per
        # group)
        self.channels = Channels(
            node, window=round_window, lanes=lanes, groups=round_groups, depth=rounds_in_flight
        )

    def find_model(self, name: str) -> ServedModel | None:
        for model in self.models:
            if name == model.name or name in model.aliases or name == model.model_hash:
                return model
        return None

    def model_view(self, model: ServedModel) -> ModelView | None:
        return self.view.snapshot.models.get(model.model_hash)

    def available(self, model: ServedModel) -> bool:
        view = self.model_view(model)
        return view is not None and view.complete

    async def route(
        self,
        model: ServedModel,
        start: int,
        end: int,
        exclude: frozenset[str] = frozenset(),
        cache_tokens: int = 0,
        quant: str | None = None,
    ) -> list[Hop]:
        """The cheapest chain over [start, end) of peers that compute alike.

        Unless `mixed_precision` is on, a chain never mixes quantizations: unquantized peers
        first, then each quantization on its own (`quant` pins one, for failover).
        """
        for attempt in range(2):
            view = self.model_view(model)
            peers = view.peers if view else []
            banned = frozenset(p.peer_id for p in peers if self.bans.banned(p.peer_id))
            for candidates in self._precision_classes(peers, quant):
                hops = find_route(candidates, start, end, exclude | banned, cache_tokens)
                if hops is None and banned:  # never ban every server of a block
                    hops = find_route(candidates, start, end, exclude, cache_tokens)
                if hops:
                    return hops
            if attempt == 0:
                await self.view.refresh([model.model_hash], fresh=True)
        raise NoRouteError(f"no chain of peers covers blocks [{start}, {end}) of {model.name}")

    def _precision_classes(self, peers: list[PeerView], quant: str | None) -> list[list[PeerView]]:
        if self.mixed_precision:
            return [peers]
        kinds = sorted({p.record.quant for p in peers}, key=lambda q: (q != "none", q))
        if quant is not None:
            kinds = [quant]
        return [[p for p in peers if p.record.quant == kind] for kind in kinds]

    def quant_of(self, model: ServedModel, hops: Sequence[Hop]) -> str | None:
        view = self.model_view(model)
        quants = {
            p.record.quant
            for p in (view.peers if view else [])
            if p.peer_id in {h.peer_id for h in hops}
        }
        return quants.pop() if len(quants) == 1 else None

    def _batcher(self, model: ServedModel) -> HeadBatcher:
        batcher = self._head_batchers.get(model.name)
        if batcher is None:
            timer = self.metrics.head_passes.labels(model.name)

            def observe(seconds: float) -> None:
                timer.observe(seconds)
                self.channels.whereabouts.passed(seconds)  # rounds wait that long for sessions

            batcher = HeadBatcher(
                model.head.logits,
                self._head_pool,
                observe,
                picker=model.head.graphs,
                turns=self.turns,
            )
            self._head_batchers[model.name] = batcher
        return batcher

    async def _run_head(self, fn: object, *args: object) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        await self.turns.take()  # waited for off the loop and off the head's one thread
        try:
            with busy_poll.paused():  # the head's thread needs the GIL
                result: torch.Tensor = await loop.run_in_executor(self._head_pool, fn, *args)  # type: ignore[arg-type]
        finally:
            self.turns.release()
        return result

    async def _embed(self, model: ServedModel, ids: torch.Tensor) -> torch.Tensor:
        """`ids[batch, n]` → their embeddings `[batch, n, h]`, on the host (for the wire)."""
        if ids.numel() <= INLINE_EMBED:  # a few rows: a lookup, cheaper than a thread hop
            return model.head.embed(ids)
        return await self._run_head(model.head.embed, ids)

    def transport_dtype(self, model: ServedModel, hops: Sequence[Hop]) -> torch.dtype:
        """bf16 on the wire when every hop computes in bf16 (lossless: each peer casts its
        input to bf16 anyway), else fp32. Half the bytes through libp2p's Python stack."""
        view = self.model_view(model)
        dtypes = {p.peer_id: p.record.dtype for p in (view.peers if view else [])}
        if all(dtypes.get(h.peer_id) == "bfloat16" for h in hops):
            return torch.bfloat16
        return torch.float32

    async def _fresh(
        self,
        model: ServedModel,
        batch: int,
        max_length: int,
        embedded: torch.Tensor,
        on_routed: Callable[[], None] | None = None,
    ) -> tuple[InferenceSession, torch.Tensor]:
        """A new session over the best chain, prefilled with `embedded`; its output.

        Waits in a bounded queue while peers are busy. `on_routed`: see `generate`."""
        deadline = time.monotonic() + self.max_wait
        busy: set[str] = set()
        failed: set[str] = set()
        queued = False
        try:
            while True:
                try:
                    return await self._open_fresh(
                        model, batch, max_length, frozenset(busy | failed), embedded, on_routed
                    )
                except (WireError, OSError) as error:
                    peer_id = str(getattr(error, "peer_id", ""))
                    code = error.code if isinstance(error, WireError) else ""
                    if code == BUSY:
                        if peer_id and peer_id not in busy:
                            busy.add(peer_id)
                            continue  # another chain may avoid it: try that at once
                    elif code == BAD_REQUEST:  # the request itself does not fit these peers
                        raise NoRouteError(f"the peers refused the session: {error}") from error
                    elif peer_id and peer_id not in failed and len(failed) < MAX_OPEN_FAILURES:
                        self.bans.ban(peer_id)  # unreachable or broken: try another chain now
                        failed.add(peer_id)
                        continue
                    else:
                        raise NoRouteError(f"no working chain of peers: {error}") from error
                if not queued:
                    if self.waiting >= self.max_waiting:
                        raise OverloadedError("too many requests are waiting for cache space")
                    self.waiting += 1
                    queued = True
                if time.monotonic() >= deadline:
                    raise OverloadedError("every peer that could serve this request is busy")
                await asyncio.sleep(ADMISSION_POLL)
                busy.clear()
        finally:
            if queued:
                self.waiting -= 1

    async def _open_fresh(
        self,
        model: ServedModel,
        batch: int,
        max_length: int,
        avoid: frozenset[str],
        embedded: torch.Tensor,
        on_routed: Callable[[], None] | None = None,
    ) -> tuple[InferenceSession, torch.Tensor]:
        cache_tokens = batch * max_length
        try:
            hops = await self.route(
                model, 0, model.num_blocks, exclude=avoid, cache_tokens=cache_tokens
            )
        except NoRouteError:
            if not avoid:
                raise
            hops = await self.route(model, 0, model.num_blocks, cache_tokens=cache_tokens)
        quant = None if self.mixed_precision else self.quant_of(model, hops)

        async def reroute(start: int, end: int, banned: frozenset[str]) -> list[Hop]:
            for peer_id in banned:
                if not self.bans.banned(peer_id):
                    self.bans.ban(peer_id)
            self.failovers += 1
            return await self.route(
                model, start, end, exclude=banned, cache_tokens=cache_tokens, quant=quant
            )

        session = InferenceSession(
            self.node,
            model.model_hash,
            hops,
            max_length=max_length,
            batch=batch,
            transport_dtype=self.transport_dtype(model, hops),
            reroute=reroute,
            channels=self.channels,
            push=self.push,
        )
        hidden = await session.start(embedded, on_first_hop=on_routed)
        self.metrics.route_opened(model.name, len(hops))
        return session, hidden

    async def _resume(
        self,
        model: ServedModel,
        prompt: list[int],
        max_length: int,
        on_routed: Callable[[], None] | None = None,
    ) -> tuple[_Live, torch.Tensor] | None:
        """Re-attach the peer caches of the longest kept prefix of `prompt` and feed the rest
        of the prompt; None when nothing is kept (or the kept caches are gone)."""
        try:
            kept = await self.store.take(model.model_hash, prompt)
        except Exception:
            self.store_errors += 1
            log.warning("session store unavailable", exc_info=True)
            return None
        if kept is None:
            return None
        hops = [Hop(p, s, e, tuple(a)) for p, s, e, a in kept.hops]
        session = InferenceSession(
            self.node,
            model.model_hash,
            hops,
            max_length=max_length,
            transport_dtype=self.transport_dtype(model, hops),
            session_id=kept.session_id,
            keep_alive=self.keep_alive,
            channels=self.channels,
            push=self.push,
        )
        # the next step overwrites what the prompt does not share (peers roll back)
        keep = reusable(kept, prompt)
        embedded = await self._embed(model, torch.tensor([prompt[keep:]]))
        try:
            hidden = await session.start(
                embedded, resume=True, position=keep, on_first_hop=on_routed
            )
        except (WireError, OSError) as error:
            log.info("kept session %s is gone: %s", kept.session_id[:8], error)
            return None
        self.prefix_hits += 1
        return _Live(session, list(prompt)), hidden

    async def _step(
        self,
        model: ServedModel,
        live: _Live,
        ids: torch.Tensor,
        on_sent: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Feed `ids[batch, k]` at the end of the session; rebuild a resumed one that failed.
        `on_sent`: called once the step is on its way to the first hop."""
        embedded = await self._embed(model, ids)
        try:
            hidden = await live.session.step(embedded, on_sent=on_sent)
        except HistoryLostError:
            self.metrics.failed_over(model.name, live.session.failovers)
            max_length = live.session.max_length
            await live.session.close(keep_alive=0.0)
            replay = await self._embed(model, torch.tensor([live.fed + ids[0].tolist()]))
            live.session, hidden = await self._fresh(model, 1, max_length, replay)
            hidden = hidden[:, -ids.shape[1] :]
        if ids.shape[0] == 1:
            live.fed.extend(int(t) for t in ids[0])
        return hidden

    async def generate(
        self,
        model: ServedModel,
        prompt_ids: list[int],
        *,
        n: int,
        max_tokens: int,
        stops: Sequence[str],
        params: SamplingParams,
        usage: Usage,
        on_routed: Callable[[], None] | None = None,
    ) -> AsyncIterator[list[ChoiceDelta]]:
        """Yield, after each decoding step, the deltas of the choices that changed.

        `on_routed` is called (maybe more than once) when the first peer of a chain of several
        has taken the session and computed its prompt: the request is served from there on
        unless a later peer fails too (the caller may start its response meanwhile)."""
        head = model.head
        usage.prompt_tokens = len(prompt_ids)
        max_length = len(prompt_ids) + max_tokens
        started = await self._resume(model, prompt_ids, max_length, on_routed) if n == 1 else None
        trace.mark("resume.looked", "", int(started is not None))
        if n == 1:
            self.metrics.prefix_lookup(model.name, started is not None)
        if started is None:
            embedded = await self._embed(model, torch.tensor([prompt_ids] * n))
            session, hidden = await self._fresh(model, n, max_length, embedded, on_routed)
            live = _Live(session, list(prompt_ids) if n == 1 else [])
        else:
            live, hidden = started
        trace.mark("prefilled")
        choices = [
            _Choice(i, Sampler(params, i), StopMatcher(stops), IncrementalDecoder(head.decode))
            for i in range(n)
        ]
        eos = head.eos_token_ids
        batcher = self._batcher(model)
        finished = False
        try:
            for index in range(max_tokens):
                picks: list[SampledToken | None]
                if params.plain_greedy:  # picked in the head pass, with every other stream's
                    tokens = await batcher.greedy(hidden[:, -1:])
                    picks = [SampledToken(t, 0.0, []) for t in tokens]  # logprob: not asked
                else:
                    logits = await batcher.logits(hidden[:, -1:])
                    picks = [
                        c.sampler.sample(logits[c.index, -1], c.ids) if not c.done else None
                        for c in choices
                    ]
                deltas = [
                    self._advance(model, choice, pick, eos)
                    for choice, pick in zip(choices, picks, strict=True)
                    if not choice.done and pick is not None
                ]
                usage.completion_tokens += sum(len(d.token_ids) for d in deltas)
                if all(choice.done for choice in choices):
                    finished = True
                    yield deltas
                    return
                if index == max_tokens - 1:  # no step for the last token: nobody would read it
                    yield deltas
                    break
                # the next step goes through the swarm while these deltas stream out; with
                # `stream_after_send` they are written once the step is on the wire (or over)
                next_ids = torch.tensor([[c.ids[-1] if c.ids else 0] for c in choices])
                sent = (
                    asyncio.get_running_loop().create_future() if self.stream_after_send else None
                )
                on_sent = None if sent is None else functools.partial(_settle, sent)
                step = asyncio.ensure_future(self._step(model, live, next_ids, on_sent))
                step.add_done_callback(functools.partial(_stepped, sent))
                try:
                    if sent is not None:
                        await sent
                    yield deltas
                except BaseException:  # the consumer went away (or failed)
                    step.cancel()
                    raise
                hidden = await step
            final = []
            for choice in choices:
                if not choice.done:
                    choice.done = True
                    final.append(
                        ChoiceDelta(choice.index, choice.stops.flush(), finish_reason="length")
                    )
            finished = True
            yield final
        except SessionFailedError as error:
            raise NoRouteError(str(error)) from error
        finally:
            await asyncio.shield(self._finish(model, live, keep=finished and n == 1))

    async def _finish(self, model: ServedModel, live: _Live, keep: bool) -> None:
        """Close the session; after a complete turn keep its caches and record the prefix.

        The closes go out with the channels' next rounds and nobody waits for them: the
        record is written first, and a follow-up turn's resume is ordered after the close
        (same channel) or waits for it at the peer (another gateway)."""
        session = live.session
        self.metrics.failed_over(model.name, session.failovers)
        if not keep:
            session.close_soon(keep_alive=0.0)
            return
        kept = KeptSession(
            model_hash=model.model_hash,
            session_id=session.session_id,
            token_ids=tuple(live.fed),
            hops=tuple((h.peer_id, h.start, h.end, tuple(h.addrs)) for h in session.route),
            expires=time.time() + self.keep_alive - 5.0,
        )
        session.close_soon(keep_alive=self.keep_alive)
        try:
            await self.store.put(kept)
        except Exception:
            self.store_errors += 1
            log.warning("could not record a kept session", exc_info=True)
        trace.mark("kept")

    def _advance(
        self, model: ServedModel, choice: _Choice, sampled: SampledToken, eos: set[int]
    ) -> ChoiceDelta:
        head = model.head
        token = sampled.token_id
        delta = ChoiceDelta(choice.index, token_ids=[token])
        if token in eos:
            choice.ids.append(token)
            choice.done = True
            delta.text = choice.stops.flush()
            delta.finish_reason = "stop"
            return delta
        choice.ids.append(token)
        if choice.sampler.params.logprobs:
            top = [(head.decode([t]), lp) for t, lp in sampled.top_logprobs]
            delta.logprobs.append(TokenLogprob(head.decode([token]), sampled.logprob, top))
        new_text = choice.detokenizer.push(token)
        if not new_text:  # e.g. an incomplete UTF-8 sequence: wait for the next token
            return delta
        emitted, stopped = choice.stops.feed(new_text)
        delta.text = emitted
        if stopped:
            choice.done = True
            delta.finish_reason = "stop"
        return delta

    async def close(self) -> None:
        await self.channels.close()
        self._head_pool.shutdown(wait=False)
