"""The client side of `/swarmgate/sessions/1`: one stream per peer for all of a client's sessions.

`Channels` holds one `PeerChannel` per peer (and, for pushed steps, a side channel: see
`swarm.session`). Sessions submit their operations (open, step, close, push) to the channel of
each hop; the channel sends everything waiting as one round frame as
soon as the previous round has been answered. So concurrent sessions that go through the same
peer share one frame per token, and the peer runs their steps as one batched forward, without
anyone waiting on purpose. A stream is opened once and reused by every later request (no
per-request dial, protocol negotiation or stream setup on the hot path).

The stream is a lane (`swarm.lanes`: the same frames straight over TCP and Noise, on this
loop) where the peer offers one, else a libp2p stream; a peer whose lane failed gets libp2p
streams for `LANE_RETRY` seconds.

A failed op raises its `WireError` (with `peer_id` set) to the session that sent it; a failed
stream fails every op in flight or waiting on it, and the next op opens a fresh stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from swarm import trace
from swarm.event_loop import TIMER_GRAIN
from swarm.lanes import LaneStream, open_lane
from swarm.p2p import FrameStream, P2PNode
from swarm.p2p.bridge import as_wire_error
from swarm.p2p.errors import RequestTimeoutError
from swarm.protocol import MAX_ROUND_OPS, MAX_STEP_TOKENS, SESSIONS_PROTOCOL
from swarm.wire import BAD_REQUEST, WireError

log = logging.getLogger("swarmgate.rounds")
MAX_HOLD = 20  # a round waits at most this many windows (+ one patience) for sessions
MAX_CLIENT_PASS = 0.1  # seconds: a longer pass of the client counts as this
CLIENT_PASS_DECAY = 0.95  # per pass, so that one slow pass is soon forgotten
ROUND_TIMEOUT = 120.0  # seconds a peer may take to answer a round (a long prefill on a CPU)
LANE_RETRY = 60.0  # seconds a peer whose lane failed is served over libp2p streams

Reply = tuple[dict[str, Any], torch.Tensor | None]


def _tagged(error: WireError, peer_id: str) -> WireError:
    error.peer_id = peer_id  # type: ignore[attr-defined]  # who failed
    return error


@dataclass
class _Op:
    header: dict[str, Any]
    rows: torch.Tensor | None  # rows sent with the op: a step's input [batch, n, h], a push's
    future: asyncio.Future[Reply]
    out_shape: tuple[int, ...] | None = None  # a step's output [batch, n, h]; None: no rows back
    on_sent: Callable[[], None] | None = None  # called once the op is on the wire

    @property
    def positions(self) -> int:
        return 0 if self.rows is None else self.rows.shape[0] * self.rows.shape[1]

    @property
    def is_step(self) -> bool:
        return self.out_shape is not None


@dataclass
class Whereabouts:
    """Where each decoding session of this client is: waiting at a channel, on the wire, or
    back in the client (sampling, streaming out) since some time. Shared by the channels."""

    places: dict[str, tuple[str, PeerChannel | None, float]] = field(default_factory=dict)
    # how long the client takes to send sessions back from their last hop on to their first
    # (its LM-head pass: ~1 ms on a GPU, ~15 ms for SmolLM2's head on two CPU cores), as a
    # decaying maximum of the passes it reports (`passed`)
    client_pass: float = 0.0

    def passed(self, seconds: float) -> None:
        """The client ran one pass over sessions back from their chains (its LM head)."""
        self.client_pass = max(min(seconds, MAX_CLIENT_PASS), self.client_pass * CLIENT_PASS_DECAY)

    def waiting(self, sid: str, channel: PeerChannel, now: float) -> None:
        self.places[sid] = ("waiting", channel, now)

    def sent(self, sid: str, channel: PeerChannel, now: float) -> None:
        place = self.places.get(sid)
        if place is not None and place[1] is channel:  # not closed, not tracked elsewhere
            self.places[sid] = ("sent", channel, now)

    def back(self, sid: str, channel: PeerChannel, now: float) -> None:
        place = self.places.get(sid)
        if place is not None and place[1] is channel:
            self.places[sid] = ("back", None, now)

    def forget(self, sid: str) -> None:
        self.places.pop(sid, None)


@dataclass
class ChannelStats:
    rounds: int = 0  # frames sent
    ops: int = 0  # operations they carried
    streams: int = 0  # streams opened
    lanes: int = 0  # of which lanes
    widest: int = 0  # most steps one round carried


@dataclass
class PeerChannel:
    """All of this client's sessions with one peer, over one stream, one round at a time."""

    node: P2PNode
    peer_id: str
    addrs: list[str]
    window: float = 0.0  # seconds a round waits for sessions on their way back to this peer
    lanes: bool = True  # ask the peer for a lane before falling back to a libp2p stream
    groups: int = 1  # micro-batches: a round carries about 1/groups of the decoding sessions
    depth: int = 1  # rounds in flight at once (the peer pipelines them): one per group
    whereabouts: Whereabouts = field(default_factory=Whereabouts)
    stats: ChannelStats = field(default_factory=ChannelStats)
    _stepping: dict[str, float] = field(default_factory=dict)  # session → its last step's time
    _last_arrival: float = 0.0  # when the last op was submitted
    _pending: list[_Op] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _stream: FrameStream | LaneStream | None = None
    _lane_failed: float = float("-inf")  # when a lane to this peer last failed
    _task: asyncio.Task[None] | None = None
    _inflight: list[asyncio.Task[None]] = field(default_factory=list)  # answers awaited, in order
    _closed: bool = False

    async def call(
        self,
        header: dict[str, Any],
        rows: torch.Tensor | None = None,
        out_shape: tuple[int, ...] | None = None,
        track: bool = True,
        on_sent: Callable[[], None] | None = None,
    ) -> Reply:
        """Send one op in the next round; its reply.

        A step sends its `rows[batch, n, h]` and gets as many back; a step whose rows the
        previous hop pushes (`pushed: true`) sends none and names its output's `out_shape`.
        `track`: the op tells where its session is (only the last hop of a pushed chain does,
        the session being there until that hop answers). `on_sent` runs when the op's round
        goes out (a pushed chain then sends the next hop's step, so that each hop's rounds
        hold the sessions of one round of the hop before).
        """
        if self._closed:
            raise _tagged(WireError("closed", "the channel is closed"), self.peer_id)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        step = header.get("type") == "step"
        if step and out_shape is None and rows is not None:
            out_shape = tuple(rows.shape)
        self._pending.append(_Op(header, rows, future, out_shape if step else None, on_sent))
        sid = str(header.get("session"))
        self._last_arrival = loop.time()
        if step:
            trace.mark("op", self.peer_id, 1)
            self._stepping[sid] = loop.time()
            if track:
                self.whereabouts.waiting(sid, self, loop.time())
        elif header.get("type") == "close":
            self._stepping.pop(sid, None)
            self.whereabouts.forget(sid)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="channel")
        self._wake.set()
        return await future

    def _missing(self, now: float) -> bool:
        """Is a session that decodes through this peer on its way back here?

        It is, if it is on the wire to another peer (it will be back after that round and
        the client's sampling), or back in the client while sessions keep arriving here (no
        quiet gap of `_patience()` since it came back or since the last arrival: the client works
        through its sessions one after another). A session waiting at another channel is not
        waited for (that channel may be waiting for us), nor one the client has left alone for
        longer (its consumer is slow): rounds never wait for anything that could wait for
        them.
        """
        here = {str(op.header.get("session")) for op in self._pending}
        for sid, stepped in list(self._stepping.items()):
            if now - stepped > 1.0:  # not decoding any more
                del self._stepping[sid]
                continue
            if sid in here:
                continue
            kind, channel, since = self.whereabouts.places.get(sid, ("", None, 0.0))
            if kind == "sent" and channel is not self:
                return True
            if kind == "back" and now - max(since, self._last_arrival) < self._patience():
                return True
        return False

    def _patience(self) -> float:
        """How long a session back in the client is waited for: the window, or more where
        the client's passes take longer than that (its LM head on a CPU). A consumer that is
        slow to read its stream does not stretch it: the passes are what is measured."""
        return max(self.window, 1.5 * self.whereabouts.client_pass)

    def _group_size(self) -> int:
        """How many steps a round carries at most: all the sessions decoding through this
        peer, or with `groups` > 1 a share of them, so that while one group computes here the
        others are at the other peers of their chains (pipelined, not one after another)."""
        if self.groups <= 1:
            return MAX_ROUND_OPS
        return max(1, -(-len(self._stepping) // self.groups))

    async def _gather(self) -> None:
        """Hold the round while other sessions decoding through this peer are on their way.

        A client's sessions come back to a peer one by one (each samples and streams its
        token first), and sessions that were split into two rounds once would otherwise stay
        split forever, each round half the batch it could be. Waiting is bounded: at most
        `MAX_HOLD` windows and one patience in all.
        """
        if self.window <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window * MAX_HOLD + self._patience()
        while True:
            now = loop.time()
            if any(not op.is_step for op in self._pending):
                return  # opens, closes and pushes never wait
            if sum(op.is_step for op in self._pending) >= self._group_size():
                return  # a group is complete
            if now >= deadline or not self._missing(now):
                return
            self._wake.clear()
            # uvloop's timers have a 1 ms grain (a shorter one fires at once: a spin)
            wait = max(TIMER_GRAIN, min(deadline - now, self._patience() / 4))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def close_session_soon(self, session: str, keep_alive: float = 0.0) -> None:
        """Send a close for `session` with the next round, without waiting for its answer."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody awaits it
        header = {"type": "close", "session": session, "keep_alive": keep_alive}
        self._pending.append(_Op(header, None, future))
        self._stepping.pop(session, None)
        self.whereabouts.forget(session)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="channel")
        self._wake.set()

    async def close(self) -> None:
        self._closed = True
        for task in [self._task, *self._inflight]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._drop_stream()
        self._fail(self._pending, WireError("closed", "the channel is closed"))
        self._pending = []

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.reset_nowait()
            self._stream = None

    def _fail(self, ops: list[_Op], error: WireError) -> None:
        for op in ops:
            if not op.future.done():
                fresh = WireError(error.code, str(error))
                op.future.set_exception(_tagged(fresh, self.peer_id))

    def _take(self) -> list[_Op]:
        """The ops of the next round: in order, one transport dtype, within the frame limits."""
        taken: list[_Op] = []
        rest: list[_Op] = []
        dtype: torch.dtype | None = None
        positions = steps = 0
        group = self._group_size()
        for op in self._pending:
            if op.future.done() and op.header.get("type") != "close":
                continue  # its caller gave up before it was sent (a close is sent anyway)
            if op.positions > MAX_STEP_TOKENS:
                op.future.set_exception(
                    WireError(BAD_REQUEST, f"a step of more than {MAX_STEP_TOKENS} positions")
                )
                continue
            fits = len(taken) < MAX_ROUND_OPS and (
                not taken or positions + op.positions <= MAX_STEP_TOKENS
            )
            fits = fits and (not op.is_step or steps < group)
            same = op.rows is None or dtype is None or op.rows.dtype == dtype
            if fits and same and not rest:
                taken.append(op)
                positions += op.positions
                if op.rows is not None:
                    dtype = op.rows.dtype
                steps += op.is_step
            else:
                rest.append(op)
        self._pending = rest
        return taken

    async def _run(self) -> None:
        try:
            while not self._closed:
                if not self._pending:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                self._inflight = [t for t in self._inflight if not t.done()]
                if len(self._inflight) >= max(1, self.depth):
                    await asyncio.wait([self._inflight[0]])  # a round in flight is answered
                    continue
                await self._gather()
                ops = self._take()
                if ops:
                    await self._send_or_fail(ops)
        finally:  # whatever ended the loop, nobody may wait forever
            self._fail(self._pending, WireError("closed", "the channel stopped"))
            self._pending = []

    async def _send_or_fail(self, ops: list[_Op]) -> None:
        """Send a round; its answer is awaited by a task of its own, after the earlier ones."""
        try:
            stream = await self._send(ops)
        except asyncio.CancelledError:
            self._fail(ops, WireError("closed", "the channel is closed"))
            raise
        except Exception as error:
            self._failed(ops, error)
            return
        earlier = self._inflight[-1] if self._inflight else None
        self._inflight.append(
            asyncio.get_running_loop().create_task(self._answered(stream, ops, earlier))
        )

    async def _answered(
        self, stream: FrameStream | LaneStream, ops: list[_Op], earlier: asyncio.Task[None] | None
    ) -> None:
        try:
            if earlier is not None:  # answers come in the order the rounds went out
                await asyncio.wait([earlier])
            await self._receive(stream, ops)
        except asyncio.CancelledError:
            self._fail(ops, WireError("closed", "the channel is closed"))
            raise
        except Exception as error:
            self._failed(ops, error, stream)

    def _failed(
        self, ops: list[_Op], error: Exception, stream: FrameStream | LaneStream | None = None
    ) -> None:
        wire = as_wire_error(error)
        log.info("stream to %s failed: %s", self.peer_id[-8:], wire)
        if stream is None or stream is self._stream:
            self._drop_stream()
        self._fail(ops, wire)

    async def _ready_stream(self) -> FrameStream | LaneStream:
        stream = self._stream
        busy = any(not task.done() for task in self._inflight)
        if stream is not None and not busy and stream.has_unread:
            # between rounds nothing may arrive: the peer ended the stream (or broke it)
            self._drop_stream()
            stream = None
        if stream is None:
            stream = await self._open_lane() or await self.node.open_stream(
                self.peer_id, SESSIONS_PROTOCOL, self.addrs
            )
            self._stream = stream
            self.stats.streams += 1
        return stream

    async def _open_lane(self) -> LaneStream | None:
        now = asyncio.get_running_loop().time()
        if not self.lanes or now - self._lane_failed < LANE_RETRY:
            return None
        try:
            lane = await open_lane(
                self.node, self.peer_id, SESSIONS_PROTOCOL, self.addrs, self.node.limits
            )
        except WireError as error:
            log.info("no lane to %s (libp2p streams instead): %s", self.peer_id[-8:], error)
            self._lane_failed = now
            return None
        self.stats.lanes += 1
        return lane

    async def _send(self, ops: list[_Op]) -> FrameStream | LaneStream:
        stream = await self._ready_stream()
        rows = [op.rows.reshape(-1, op.rows.shape[-1]) for op in ops if op.rows is not None]
        tensors = [torch.cat(rows) if len(rows) > 1 else rows[0]] if rows else []
        steps = sum(op.is_step for op in ops)
        trace.mark("round.send", self.peer_id, steps)
        await stream.send({"type": "round", "ops": [op.header for op in ops]}, tensors)
        trace.mark("round.sent", self.peer_id, steps)
        now = asyncio.get_running_loop().time()
        for op in ops:
            if op.is_step:
                self.whereabouts.sent(str(op.header.get("session")), self, now)
            if op.on_sent is not None:
                op.on_sent()
        self.stats.rounds += 1
        self.stats.ops += len(ops)
        self.stats.widest = max(self.stats.widest, steps)
        return stream

    async def _receive(self, stream: FrameStream | LaneStream, ops: list[_Op]) -> None:
        steps = sum(op.is_step for op in ops)
        try:
            async with asyncio.timeout(ROUND_TIMEOUT):
                frame = await stream.recv()
        except TimeoutError:
            raise RequestTimeoutError(f"no answer to a round in {ROUND_TIMEOUT:.0f} s") from None
        trace.mark("round.reply", self.peer_id, steps)
        now = asyncio.get_running_loop().time()
        for op in ops:
            self.whereabouts.back(str(op.header.get("session")), self, now)
        if frame.is_error:  # the peer refused the frame as a whole
            header = frame.header
            error = WireError(str(header.get("code", "error")), str(header.get("message", "")))
            self._fail(ops, error)
            if error.code != BAD_REQUEST and stream is self._stream:  # e.g. too large: the
                self._drop_stream()  # peer resets the stream after it
            return
        results = frame.header.get("results")
        if frame.header.get("type") != "round" or not isinstance(results, list):
            raise WireError("bad_response", "the peer answered a round with something else")
        if len(results) != len(ops) or len(frame.tensors) > 1:
            raise WireError("bad_response", "the peer's answer does not match the round")
        out = frame.tensors[0] if frame.tensors else None
        offset = 0
        replies: list[Reply | WireError] = []
        for op, result in zip(ops, results, strict=True):
            if not isinstance(result, dict):
                raise WireError("bad_response", "a result is not a map")
            if result.get("type") == "error":
                code, message = str(result.get("code", "error")), str(result.get("message", ""))
                replies.append(WireError(code, message))
            elif op.out_shape is None:
                replies.append((result, None))
            else:
                n = op.out_shape[0] * op.out_shape[1]
                if out is None or offset + n > out.shape[0] or out.dim() != 2:
                    raise WireError("bad_response", "the peer sent fewer positions than asked")
                part = out[offset : offset + n].view(op.out_shape)
                # a slice of a bigger reply would keep all of it alive in the session's history
                replies.append((result, part if n == out.shape[0] else part.clone()))
                offset += n
        if out is not None and offset != out.shape[0]:
            raise WireError("bad_response", "the peer sent more positions than asked")
        for op, reply in zip(ops, replies, strict=True):
            if op.future.done():
                continue
            if isinstance(reply, WireError):
                op.future.set_exception(_tagged(reply, self.peer_id))
            else:
                op.future.set_result(reply)


class Channels:
    """One channel per peer, opened on first use and kept for later requests."""

    def __init__(
        self,
        node: P2PNode,
        window: float = 0.0,
        lanes: bool = True,
        groups: int = 1,
        depth: int | None = None,
    ) -> None:
        self.node = node
        self.window = window
        self.lanes = lanes
        self.groups = groups
        self.depth = groups if depth is None else max(1, depth)  # rounds in flight per peer
        self.whereabouts = Whereabouts()
        self._channels: dict[str, PeerChannel] = {}
        self._sides: dict[str, PeerChannel] = {}

    def get(self, peer_id: str, addrs: list[str] | tuple[str, ...] = ()) -> PeerChannel:
        channel = self._channels.get(peer_id)
        if channel is None:
            channel = PeerChannel(
                self.node,
                peer_id,
                list(addrs),
                self.window,
                self.lanes,
                self.groups,
                self.depth,
                self.whereabouts,
            )
            self._channels[peer_id] = channel
        elif addrs:
            channel.addrs = list(addrs)  # the route's latest addresses (a peer may have moved)
        return channel

    def side(self, peer_id: str, addrs: list[str] | tuple[str, ...] = ()) -> PeerChannel:
        """A second channel to the peer, for ops that must not queue behind its rounds: the
        rows a hop could not push, and cancels of pushed steps (which hold a round open)."""
        channel = self._sides.get(peer_id)
        if channel is None:
            channel = PeerChannel(self.node, peer_id, list(addrs), lanes=self.lanes)
            self._sides[peer_id] = channel
        elif addrs:
            channel.addrs = list(addrs)
        return channel

    @property
    def stats(self) -> ChannelStats:
        total = ChannelStats()
        for channel in [*self._channels.values(), *self._sides.values()]:
            total.rounds += channel.stats.rounds
            total.ops += channel.stats.ops
            total.streams += channel.stats.streams
            total.lanes += channel.stats.lanes
            total.widest = max(total.widest, channel.stats.widest)
        return total

    async def close(self) -> None:
        channels = [*self._channels.values(), *self._sides.values()]
        self._channels, self._sides = {}, {}
        await asyncio.gather(*(c.close() for c in channels))


_DEFAULT: weakref.WeakKeyDictionary[P2PNode, Channels] = weakref.WeakKeyDictionary()


def channels_of(node: P2PNode) -> Channels:
    """The node's shared channels (for clients that do not manage their own)."""
    channels = _DEFAULT.get(node)
    if channels is None:
        channels = _DEFAULT[node] = Channels(node)
    return channels
