"""The peer's protocol handlers: inference sessions, stateless forwards and live status.

Every header field is checked before use; a bad message gets an error frame (and, for a step,
the session stays usable). Model compute goes through the step scheduler, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from peer.memory import BudgetExceededError
from peer.pushes import PushBox
from peer.scheduler import StepScheduler
from peer.sessions import Session, SessionTable
from swarm.p2p import FrameStream, StreamClosedError, StreamResetError
from swarm.protocol import (
    check_hidden,
    field_float,
    field_int,
    field_str,
)
from swarm.wire import BAD_REQUEST, BUSY, NOT_FOUND, WireError, error_header

log = logging.getLogger("swarmgate.peer")

MAX_BATCH = 64
MAX_KEEP_ALIVE = 3600.0
MAX_SESSIONS_PER_REMOTE = 256  # open inference streams one remote peer may hold at once
RESUME_WAIT = 2.0  # seconds a resume waits for the session's previous stream to finish closing


@dataclass
class PeerCounters:
    sessions_opened: int = 0
    sessions_resumed: int = 0
    steps: int = 0
    tokens_in: int = 0  # positions received in steps (prefill + decode + replay)
    forwards: int = 0
    busy_refusals: int = 0
    bad_requests: int = 0
    pushes_in: int = 0  # steps whose rows the previous hop pushed
    pushes_out: int = 0  # outputs pushed to the next hop
    push_failures: int = 0  # outputs that could not be pushed (the client relayed them)


@dataclass
class PeerState:
    """Everything the handlers share."""

    peer_id: str
    model_name: str
    model_hash: str
    start: int
    end: int
    dtype: str
    quant: str
    hidden_size: int
    max_length: int
    sessions: SessionTable
    scheduler: StepScheduler
    counters: PeerCounters = field(default_factory=PeerCounters)
    throughput_decode: float = 0.0
    throughput_prefill: float = 0.0
    started: float = field(default_factory=time.time)
    sessions_by_remote: dict[str, int] = field(default_factory=dict)
    moving: bool = False  # reloading another span: new sessions are refused
    pushes: PushBox = field(default_factory=PushBox)  # rows pushed by previous hops

    def info(self) -> dict[str, Any]:
        budget = self.sessions.budget
        return {
            "type": "info",
            "peer_id": self.peer_id,
            "model": self.model_name,
            "model_hash": self.model_hash,
            "start": self.start,
            "end": self.end,
            "dtype": self.dtype,
            "quant": self.quant,
            "moving": self.moving,
            "sessions": len(self.sessions),
            "sessions_active": sum(1 for x in self.sessions.sessions.values() if x.attached),
            "sessions_kept": sum(1 for x in self.sessions.sessions.values() if not x.attached),
            "cache_tokens_total": budget.total_tokens,
            "cache_tokens_used": budget.used_tokens,
            "cache_tokens_free": budget.free_tokens,
            "sessions_evicted": self.sessions.evicted,
            "queue_len": self.scheduler.queue_length,
            "throughput_decode": self.throughput_decode,
            "throughput_prefill": self.throughput_prefill,
            "uptime": time.time() - self.started,
            "counters": dict(self.counters.__dict__),
            "batch_sizes": {str(k): v for k, v in self.scheduler.stats.batch_sizes.items()},
        }


def _out_dtype(hidden: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    return result.to(hidden.dtype).contiguous()


async def open_session(state: PeerState, header: dict[str, Any]) -> tuple[Session, float]:
    if header.get("type") != "open":
        raise WireError(BAD_REQUEST, "the first message of a session must be 'open'")
    session_id = field_str(header, "session")
    if header.get("model") != state.model_hash:
        raise WireError(NOT_FOUND, "this peer does not serve that model")
    start = field_int(header, "start", 0, 1 << 20)
    end = field_int(header, "end", 0, 1 << 20)
    if (start, end) != (state.start, state.end):
        raise WireError(NOT_FOUND, f"this peer serves blocks [{state.start}, {state.end})")
    max_length = field_int(header, "max_length", 1, state.max_length)
    batch = field_int(header, "batch", 1, MAX_BATCH)
    keep_alive = field_float(header, "keep_alive", 0.0, MAX_KEEP_ALIVE)
    if state.moving:
        raise WireError(BUSY, "this peer is moving to other blocks")
    if header.get("resume"):
        # the client's close of the turn that kept this session may still be on its way
        deadline = time.monotonic() + RESUME_WAIT
        while True:
            try:
                resumed = state.sessions.attach(session_id, max_length)
            except BudgetExceededError as error:
                state.counters.busy_refusals += 1
                raise WireError(BUSY, str(error)) from None
            if resumed is not None or not state.sessions.in_use(session_id):
                break
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.01)
        if resumed is None:
            raise WireError(NOT_FOUND, "no such kept session (expired, in use or never opened)")
        state.counters.sessions_resumed += 1
        return resumed, keep_alive
    try:
        session = state.sessions.open(session_id, max_length, batch)
    except BudgetExceededError as error:
        state.counters.busy_refusals += 1
        raise WireError(BUSY, str(error)) from None
    except ValueError as error:
        raise WireError(BAD_REQUEST, str(error)) from None
    state.counters.sessions_opened += 1
    return session, keep_alive


@dataclass
class CheckedStep:
    """A step's fields, checked against its session (`check_step`), ready to compute."""

    seq: int
    position: int
    hidden: torch.Tensor


def check_step(
    state: PeerState,
    session: Session,
    frame_header: dict[str, Any],
    tensors: list[torch.Tensor],
    finite: bool = False,  # the rows are known to be finite (checked once for a whole round)
) -> CheckedStep:
    """Check a step's fields and rows against its session; raises `WireError` if bad."""
    seq = field_int(frame_header, "seq", 0, 1 << 62)
    position = field_int(frame_header, "position", 0, session.max_length)
    hidden = check_hidden(tensors, state.hidden_size, session.batch, finite)
    length = session.cache.length
    if position > length:
        raise WireError(BAD_REQUEST, f"position {position} is past the cached length {length}")
    if position + hidden.shape[1] > session.max_length:
        raise WireError(
            BAD_REQUEST, f"the step goes past the session's max_length {session.max_length}"
        )
    return CheckedStep(seq, position, hidden)


def step_done(state: PeerState, session: Session, step: CheckedStep) -> dict[str, Any]:
    """Count a computed step; its reply header."""
    session.steps += 1
    session.tokens_processed += step.hidden.shape[1]
    state.counters.steps += 1
    state.counters.tokens_in += step.hidden.shape[1]
    return {"type": "result", "seq": step.seq, "length": session.cache.length}


async def run_step(
    state: PeerState,
    session: Session,
    frame_header: dict[str, Any],
    tensors: list[torch.Tensor],
    finite: bool = False,  # the rows are known to be finite (checked once for a whole round)
) -> tuple[dict[str, Any], torch.Tensor]:
    step = check_step(state, session, frame_header, tensors, finite)
    session.touch()
    result = await state.scheduler.step(session, step.hidden, step.position)
    return step_done(state, session, step), _out_dtype(step.hidden, result)


async def handle_inference(state: PeerState, stream: FrameStream) -> None:
    remote = stream.remote_peer_id
    if state.sessions_by_remote.get(remote, 0) >= MAX_SESSIONS_PER_REMOTE:
        state.counters.busy_refusals += 1
        raise WireError(BUSY, f"at most {MAX_SESSIONS_PER_REMOTE} open sessions per client")
    state.sessions_by_remote[remote] = state.sessions_by_remote.get(remote, 0) + 1
    try:
        await _serve_session(state, stream)
    finally:
        state.sessions_by_remote[remote] -= 1
        if not state.sessions_by_remote[remote]:
            del state.sessions_by_remote[remote]


async def _serve_session(state: PeerState, stream: FrameStream) -> None:
    frame = await stream.recv()
    frame.raise_for_error()
    session, keep_alive = await open_session(state, frame.header)
    session.in_rounds = False  # its steps come one by one on this stream
    budget = state.sessions.budget
    try:
        await stream.send(
            {
                "type": "ok",
                "session": session.session_id,
                "length": session.cache.length,
                "cache_tokens": budget.reservations.get(session.session_id, 0),
            }
        )
        while True:
            try:
                frame = await stream.recv()
            except (StreamClosedError, StreamResetError):
                break
            kind = frame.header.get("type")
            if kind == "close":
                keep_alive = field_float(frame.header, "keep_alive", keep_alive, MAX_KEEP_ALIVE)
                break
            if kind != "step":
                state.counters.bad_requests += 1
                await stream.send(error_header(BAD_REQUEST, f"unexpected message type {kind!r}"))
                continue
            try:
                reply, output = await run_step(state, session, frame.header, frame.tensors)
            except WireError as error:
                state.counters.bad_requests += 1
                await stream.send(error.to_header())
                continue
            await stream.send(reply, [output])
    finally:
        state.sessions.detach(session.session_id, keep_alive)


async def handle_forward(state: PeerState, stream: FrameStream) -> None:
    frame = await stream.recv()
    header = frame.header
    if header.get("type") != "forward":
        raise WireError(BAD_REQUEST, "expected a 'forward' message")
    start = field_int(header, "start", 0, 1 << 20)
    end = field_int(header, "end", 0, 1 << 20)
    if (start, end) != (state.start, state.end):
        raise WireError(NOT_FOUND, f"this peer serves blocks [{state.start}, {state.end})")
    hidden = check_hidden(frame.tensors, state.hidden_size, None)
    if hidden.shape[0] * hidden.shape[1] > state.max_length:
        raise WireError(BAD_REQUEST, "too many positions for one forward")
    result = await state.scheduler.forward(hidden)
    state.counters.forwards += 1
    await stream.send({"type": "result"}, [_out_dtype(hidden, result)])


async def handle_info(state: PeerState, stream: FrameStream) -> None:
    frame = await stream.recv()
    if frame.header.get("type") != "info":
        raise WireError(BAD_REQUEST, "expected an 'info' message")
    await stream.send(state.info())
