"""The peer's side of `/swarmgate/sessions/1`: many sessions of one client over one stream.

Each frame is a round of operations (open, step, close, push) of the client's sessions. The ops of
one session run in order, different sessions concurrently, so all the round's decode steps
reach the step scheduler together and run as one batched forward. The round is answered by one
frame. A bad op gets its own error result and the other ops of the round still run; a malformed
frame gets an error frame and the stream stays usable. When the stream ends, every session
opened on it is detached (kept for the keep-alive its client asked for, or freed).

Rounds pipeline: the next frame is read and its ops start while earlier rounds still compute
(up to `MAX_PIPELINED` rounds per stream), so a client with two groups of sessions in flight
keeps the span busy while a round's frame is on the wire or being decoded. Answers go out in
the order the rounds came, and a session's ops wait for its ops of earlier rounds.

Peer-to-peer push (`peer.pushes`): a step marked `pushed` waits for its rows from the previous
hop, which sends them as a `push` op on a stream of its own; a step with a `push` target sends
its output on to the next hop before its result goes back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import torch

from peer.handlers import (
    MAX_SESSIONS_PER_REMOTE,
    CheckedStep,
    PeerState,
    check_step,
    open_session,
    run_step,
    step_done,
)
from peer.pushes import Pusher
from peer.sessions import Session
from swarm import trace
from swarm.lanes import LaneStream
from swarm.p2p import FrameStream, StreamClosedError, StreamResetError
from swarm.protocol import (
    MAX_ROUND_OPS,
    TRANSPORT_DTYPES,
    all_finite,
    field_float,
    field_int,
    field_str,
    push_target,
)
from swarm.wire import BAD_REQUEST, BUSY, NOT_FOUND, WireError, error_header

MAX_KEEP_ALIVE = 3600.0
MAX_PIPELINED = 4  # rounds of one stream in progress at once; the next frame waits to be read


@dataclass
class _Attached:
    """A session opened on this stream, with the state (span) it was opened on."""

    state: PeerState
    session: Session
    keep_alive: float


@dataclass
class _Op:
    header: dict[str, Any]
    rows: torch.Tensor | None = None  # a step's input [batch, n, h]
    finite: bool = False  # its rows are known to be finite


def _shape(header: dict[str, Any]) -> tuple[int, int]:
    shape = header.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in shape)
    ):
        raise WireError(BAD_REQUEST, "a step's 'shape' must be [batch, n] of positive integers")
    return shape[0], shape[1]


def parse_round(header: dict[str, Any], tensors: list[torch.Tensor]) -> list[_Op]:
    """The ops of a round frame, each step with its slice of the rows; checks the framing."""
    if header.get("type") != "round":
        raise WireError(BAD_REQUEST, "expected a 'round' message")
    raw = header.get("ops")
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_ROUND_OPS:
        raise WireError(BAD_REQUEST, f"'ops' must be a list of 1..{MAX_ROUND_OPS} operations")
    if len(tensors) > 1:
        raise WireError(BAD_REQUEST, "a round carries at most one tensor")
    rows = tensors[0] if tensors else None
    if rows is not None and (rows.dim() != 2 or rows.dtype not in TRANSPORT_DTYPES):
        raise WireError(BAD_REQUEST, "a round's rows must be [positions, hidden], fp32 or bf16")
    # one check for the whole round; only when it fails does each step check its own rows
    finite = rows is not None and all_finite(rows)
    ops: list[_Op] = []
    offset = 0
    for item in raw:
        if not isinstance(item, dict):
            raise WireError(BAD_REQUEST, "every op must be a map")
        op = _Op(item)
        kind = item.get("type")
        # rows come with a step (unless pushed by the previous hop) and with a push
        if (kind == "step" and item.get("pushed") is not True) or (
            kind == "push" and item.get("cancel") is not True
        ):
            batch, n = _shape(item)
            if rows is None or offset + batch * n > rows.shape[0]:
                raise WireError(BAD_REQUEST, "the steps declare more positions than were sent")
            op.rows = rows[offset : offset + batch * n].view(batch, n, rows.shape[1])
            op.finite = finite
            offset += batch * n
        ops.append(op)
    if rows is not None and offset != rows.shape[0]:
        raise WireError(BAD_REQUEST, "the steps declare fewer positions than were sent")
    return ops


class RoundServer:
    """Serves one `/swarmgate/sessions/1` stream; `current` gives the peer's live state."""

    def __init__(
        self,
        current: Callable[[], PeerState],
        stream: FrameStream | LaneStream,
        pusher: Pusher | None = None,
    ) -> None:
        self.current = current
        self.stream = stream
        self.pusher = pusher  # sends step outputs on to the next hop; None: never push
        self.attached: dict[str, _Attached] = {}
        self._turns: dict[str, asyncio.Future[None]] = {}  # each session's latest ops in line

    async def serve(self) -> None:
        rounds: list[asyncio.Task[None]] = []  # in progress, in the order they came
        try:
            while True:
                rounds = [r for r in rounds if not r.done()]
                if len(rounds) >= MAX_PIPELINED:
                    await asyncio.wait([rounds[0]])
                    continue
                try:
                    frame = await self.stream.recv()
                except (StreamClosedError, StreamResetError):
                    return
                before = rounds[-1] if rounds else None
                try:
                    ops = parse_round(frame.header, frame.tensors)
                except WireError as error:
                    self.current().counters.bad_requests += 1
                    rounds.append(asyncio.create_task(self._answer(before, error.to_header())))
                    continue
                trace.mark("peer.recv", self.stream.remote_peer_id, len(ops))
                work = self._run_round(ops)  # the sessions' places in line are taken now
                rounds.append(asyncio.create_task(self._answer(before, work)))
        finally:
            try:
                # a session is detached only once nothing runs its ops: the rounds in progress
                # finish their compute (their answers fail fast on a dead stream)
                pending = [r for r in rounds if not r.done()]
                if pending:
                    try:
                        await asyncio.wait(pending)
                    except asyncio.CancelledError:  # the server itself stops
                        for task in pending:
                            task.cancel()
                        raise
            finally:
                for sid in list(self.attached):
                    self._detach(sid, None)

    async def _answer(
        self,
        before: asyncio.Task[None] | None,
        work: dict[str, Any] | Awaitable[tuple[list[dict[str, Any]], list[torch.Tensor]]],
    ) -> None:
        """Send one round's answer (or a frame's error) after the answers of earlier rounds.

        An answer that cannot be sent resets the stream: the client must not take the next
        round's answer for this one."""
        try:
            await self._send_answer(before, work)
        except (StreamClosedError, StreamResetError):
            pass  # the client went away: the stream's end detaches its sessions
        except BaseException:
            self.stream.reset_nowait()
            raise

    async def _send_answer(
        self,
        before: asyncio.Task[None] | None,
        work: dict[str, Any] | Awaitable[tuple[list[dict[str, Any]], list[torch.Tensor]]],
    ) -> None:
        if isinstance(work, dict):
            header, tensors = work, []
        else:
            results, outputs = await work
            flat = [out.reshape(-1, out.shape[-1]) for out in outputs]
            tensors = [torch.cat(flat) if len(flat) > 1 else flat[0]] if flat else []
            header = {"type": "round", "results": results}
        if before is not None:
            with contextlib.suppress(BaseException):  # its failure ends the stream anyway
                await before
        trace.mark("peer.reply", self.stream.remote_peer_id, len(header.get("results", ())))
        await self.stream.send(header, tensors)
        trace.mark("peer.replied", self.stream.remote_peer_id, len(header.get("results", ())))

    def _forget_expired(self) -> None:
        """Drop sessions the peer expired (idle too long) while this stream stayed open."""
        for sid, held in list(self.attached.items()):
            if held.state.sessions.sessions.get(sid) is not held.session:
                self._detach(sid, 0.0)

    def _detach(self, sid: str, keep_alive: float | None) -> None:
        held = self.attached.pop(sid)
        held.state.sessions.detach(sid, held.keep_alive if keep_alive is None else keep_alive)
        remote = self.stream.remote_peer_id
        count = held.state.sessions_by_remote.get(remote, 0) - 1
        if count > 0:
            held.state.sessions_by_remote[remote] = count
        else:
            held.state.sessions_by_remote.pop(remote, None)

    def _run_round(
        self, ops: list[_Op]
    ) -> asyncio.Task[tuple[list[dict[str, Any]], list[torch.Tensor]]]:
        """Start a round's ops (each session's after its ops of earlier rounds); its results.

        Called in the order the rounds came: each session's place in line is taken here."""
        held = self._plain_steps(ops)
        if held is not None:
            return self._run_plain_steps(ops, held)
        results: list[dict[str, Any] | None] = [None] * len(ops)
        outputs: list[torch.Tensor | None] = [None] * len(ops)
        by_session: dict[str, list[int]] = {}
        for i, op in enumerate(ops):
            sid = op.header.get("session")
            key = sid if isinstance(sid, str) else f"#{i}"  # malformed: fails on its own
            if op.header.get("type") == "push":  # a push never waits behind its session's step
                key = f"push#{i}"
            by_session.setdefault(key, []).append(i)
        loop = asyncio.get_running_loop()
        turns = []
        for key in by_session:
            mine: asyncio.Future[None] = loop.create_future()
            turns.append((self._turns.get(key), mine))
            self._turns[key] = mine

        async def run_session_ops(
            key: str,
            indices: list[int],
            turn: tuple[asyncio.Future[None] | None, asyncio.Future[None]],
        ) -> None:
            earlier, mine = turn
            try:
                if earlier is not None:
                    await asyncio.shield(earlier)
                await run_ops(indices)
            finally:
                mine.set_result(None)
                if self._turns.get(key) is mine:
                    del self._turns[key]

        async def run_ops(indices: list[int]) -> None:
            for i in indices:
                try:
                    results[i], outputs[i] = await self._run_op(ops[i])
                except Exception as error:  # a compute failure fails the op, not the stream
                    results[i] = self._error_result(error)

        async def run_all() -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
            await asyncio.gather(
                *(
                    run_session_ops(key, ix, turn)
                    for (key, ix), turn in zip(by_session.items(), turns, strict=True)
                )
            )
            done = [r if r is not None else error_header("internal", "not run") for r in results]
            return done, [o for o in outputs if o is not None]

        # a task of its own, started now: the ops run (and their turns pass on) whatever
        # happens to the task that answers them
        return asyncio.get_running_loop().create_task(run_all())

    def _plain_steps(self, ops: list[_Op]) -> list[_Attached] | None:
        """The sessions of a round that is only plain steps (rows sent, no push either way) of
        distinct sessions open here on one span, none with ops of an earlier round still in
        line; None for any other round (it takes the general path, op by op)."""
        held: list[_Attached] = []
        seen: set[str] = set()
        for op in ops:
            header = op.header
            sid = header.get("session")
            if (
                header.get("type") != "step"
                or op.rows is None
                or "push" in header
                or "pushed" in header
                or not isinstance(sid, str)
                or sid in seen
                or sid in self._turns
            ):
                return None
            session = self.attached.get(sid)
            if session is None or (held and session.state is not held[0].state):
                return None
            seen.add(sid)
            held.append(session)
        return held

    def _run_plain_steps(
        self, ops: list[_Op], held: list[_Attached]
    ) -> asyncio.Task[tuple[list[dict[str, Any]], list[torch.Tensor]]]:
        """A round of plain steps as one group at the scheduler: one task and one wake-up for
        the round instead of a task, a turn and a wake-up per op (the per-op Python was most
        of a 16-row round's time outside the forward on an H200). Same results as op by op;
        the sessions' later ops wait for the whole round."""
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        sids = [str(op.header["session"]) for op in ops]
        for sid in sids:
            self._turns[sid] = turn

        def passed(_: asyncio.Future[Any]) -> None:
            turn.set_result(None)
            for sid in sids:
                if self._turns.get(sid) is turn:
                    del self._turns[sid]

        task = loop.create_task(self._plain_steps_results(ops, held))
        task.add_done_callback(passed)
        return task

    async def _plain_steps_results(
        self, ops: list[_Op], held: list[_Attached]
    ) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
        """Check every step, compute the good ones as one group; each op's result and the
        outputs of those that succeeded, in order (as `_run_round`'s op-by-op path)."""
        state = held[0].state
        results: list[dict[str, Any] | None] = [None] * len(ops)
        checked: list[tuple[int, Session, CheckedStep]] = []
        for i, (op, attached) in enumerate(zip(ops, held, strict=True)):
            assert op.rows is not None
            try:
                step = check_step(state, attached.session, op.header, [op.rows], op.finite)
            except Exception as error:
                results[i] = self._error_result(error)
                continue
            attached.session.touch()
            checked.append((i, attached.session, step))
        outputs: list[torch.Tensor] = []
        if checked:
            computed = await state.scheduler.step_group(
                [(session, step.hidden, step.position) for _, session, step in checked]
            )
            for (i, session, step), out in zip(checked, computed, strict=True):
                if isinstance(out, BaseException):
                    results[i] = self._error_result(out)
                else:
                    results[i] = step_done(state, session, step)
                    outputs.append(out.to(step.hidden.dtype).contiguous())
        done = [r for r in results if r is not None]
        assert len(done) == len(ops)  # every op was checked, and each checked one computed
        return done, outputs

    def _error_result(self, error: BaseException) -> dict[str, Any]:
        """An op's result for its failure: a wire error as it is (a bad request counted), any
        other error as an internal one that names only its type."""
        if isinstance(error, WireError):
            self.current().counters.bad_requests += error.code == BAD_REQUEST
            return error.to_header()
        return error_header("internal", f"step failed: {type(error).__name__}")

    async def _run_op(self, op: _Op) -> tuple[dict[str, Any], torch.Tensor | None]:
        header = op.header
        kind = header.get("type")
        sid = field_str(header, "session")
        if kind == "open":
            if sid in self.attached:
                raise WireError(BAD_REQUEST, "this session is already open on this stream")
            state = self.current()
            remote = self.stream.remote_peer_id
            self._forget_expired()
            if state.sessions_by_remote.get(remote, 0) >= MAX_SESSIONS_PER_REMOTE:
                state.counters.busy_refusals += 1
                raise WireError(BUSY, f"at most {MAX_SESSIONS_PER_REMOTE} open sessions per client")
            session, keep_alive = await open_session(state, header)
            session.in_rounds = True
            self.attached[sid] = _Attached(state, session, keep_alive)
            state.sessions_by_remote[remote] = state.sessions_by_remote.get(remote, 0) + 1
            return {
                "type": "ok",
                "session": sid,
                "length": session.cache.length,
                "cache_tokens": state.sessions.budget.reservations.get(sid, 0),
            }, None
        if kind == "push":
            return self._take_push(op, sid), None
        held = self.attached.get(sid)
        if held is None:
            raise WireError(NOT_FOUND, "no such session open on this stream")
        if kind == "close":
            keep_alive = field_float(header, "keep_alive", held.keep_alive, MAX_KEEP_ALIVE)
            self._detach(sid, keep_alive)
            return {"type": "closed", "session": sid}, None
        if kind == "step":
            return await self._step(held, op, sid)
        raise WireError(BAD_REQUEST, f"unexpected op type {kind!r}")

    async def _step(
        self, held: _Attached, op: _Op, sid: str
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        header = op.header
        target = push_target(header)
        rows, finite = op.rows, op.finite
        if header.get("pushed") is True:  # the previous hop sends the rows
            seq = field_int(header, "seq", 0, 1 << 62)
            position = field_int(header, "position", 0, held.session.max_length)
            rows, finite = await held.state.pushes.take(sid, seq, position, _shape(header))
            held.state.counters.pushes_in += 1
        assert rows is not None
        reply, output = await run_step(held.state, held.session, header, [rows], finite)
        if target is not None:
            pushed = self.pusher is not None and await self.pusher.push(
                target, sid, int(header["position"]), output
            )
            reply["pushed"] = pushed
            if pushed:
                held.state.counters.pushes_out += 1
            else:
                held.state.counters.push_failures += 1
        return reply, output

    def _take_push(self, op: _Op, sid: str) -> dict[str, Any]:
        """A push (or its cancel) for a step of a session served here, from any stream."""
        state = self.current()
        seq = field_int(op.header, "seq", 0, 1 << 62)
        if op.header.get("cancel") is True:
            state.pushes.cancel(sid, seq)
            return {"type": "pushed", "session": sid, "seq": seq}
        # the session may not be open yet (its open can be on its way, in the client's round)
        position = field_int(op.header, "position", 0, state.max_length)
        assert op.rows is not None
        state.pushes.deliver(sid, seq, position, op.rows, op.finite)
        return {"type": "pushed", "session": sid, "seq": seq}
