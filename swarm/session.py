"""The client side of an inference session over a chain of peers.

`InferenceSession` opens the session at every hop of its route (through the client's shared
`/swarmgate/sessions/1` channel to each peer, see `swarm.rounds`) and sends hidden states
through the hops in order. For each hop it keeps every input it sent (a tensor of all
positions so far, trimmed on rollback), so when a peer fails mid-generation the session asks its
`reroute` callback for replacement hops covering the failed hop's blocks, replays that history
into them to rebuild their caches, and carries on: the caller sees no break.

With `push` (off by default) a step through two or more hops goes to every hop at once and each
peer sends its output straight to the next one (`peer.pushes`), while still answering this
client with it, so the input history stays whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from swarm.event_loop import retrieved
from swarm.p2p import P2PError, P2PNode
from swarm.protocol import op_header
from swarm.rounds import Channels, PeerChannel, channels_of
from swarm.wire import BAD_REQUEST, WireError

log = logging.getLogger("swarmgate.session")
T = TypeVar("T")


@dataclass(frozen=True)
class Hop:
    """A peer serving blocks [start, end) on this route."""

    peer_id: str
    start: int
    end: int
    addrs: tuple[str, ...] = ()


Reroute = Callable[[int, int, frozenset[str]], Awaitable[list[Hop]]]


class SessionFailedError(RuntimeError):
    """No peer could serve some blocks of the route (after every failover attempt)."""


class HistoryLostError(SessionFailedError):
    """A resumed session lost a peer: the caller must rebuild it from its token ids."""


@dataclass
class _History:
    """Every input position a hop received, kept as the chunks that were sent.

    Appending is O(1) per step (no copy of the past); a rollback trims chunks; the whole
    history is concatenated only when a failover replays it.
    """

    chunks: list[torch.Tensor] = field(default_factory=list)  # each [batch, n, h]
    length: int = 0

    def record(self, hidden: torch.Tensor, position: int) -> None:
        """`hidden` was sent at `position`: forget what it overwrote, then keep it."""
        while self.length > position:
            last = self.chunks[-1]
            if self.length - last.shape[1] >= position:
                self.chunks.pop()
                self.length -= last.shape[1]
            else:
                self.chunks[-1] = last[:, : last.shape[1] - (self.length - position)]
                self.length = position
        self.chunks.append(hidden)
        self.length += hidden.shape[1]

    def upto(self, position: int) -> torch.Tensor | None:
        """Positions [0, position) as one tensor, or None if there are none."""
        if position <= 0 or not self.chunks:
            return None
        return torch.cat(self.chunks, dim=1)[:, :position]


@dataclass
class _Link:
    hop: Hop
    channel: PeerChannel | None = None  # the hop's channel until the session is closed there
    inputs: _History = field(default_factory=_History)
    seq: int = 0


@dataclass
class InferenceSession:
    node: P2PNode
    model_hash: str
    route: list[Hop]
    max_length: int
    batch: int = 1
    transport_dtype: torch.dtype = torch.float32
    reroute: Reroute | None = None
    max_failovers: int = 8
    keep_alive: float = 0.0
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    length: int = 0
    resumed_length: int = 0  # positions cached before this session object attached
    failovers: int = 0
    banned: set[str] = field(default_factory=set)
    channels: Channels | None = None  # default: the node's shared channels
    push: bool = False  # steps go to every hop at once, each hop pushing to the next
    _links: list[_Link] = field(default_factory=list)

    async def open(self, resume: bool = False) -> None:
        """Open the session at every hop; `resume` re-attaches caches peers kept for it."""
        self._links = [self._attach(hop) for hop in self.route]
        keep = self.keep_alive if resume else 0.0
        try:
            # wait for every open, so that none still in flight is left behind unclosed
            results = await asyncio.gather(
                *(self._open_link(link, resume) for link in self._links), return_exceptions=True
            )
        except BaseException:
            await self.close(keep_alive=keep)
            raise
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.close(keep_alive=keep)
            raise failures[0]
        lengths = [r for r in results if isinstance(r, int)]
        if resume:
            if len(set(lengths)) != 1:
                await self.close(keep_alive=0.0)
                raise SessionFailedError(f"kept caches disagree on their length: {lengths}")
            self.length = self.resumed_length = lengths[0]

    async def start(
        self,
        hidden: torch.Tensor,
        *,
        resume: bool = False,
        position: int = 0,
        on_first_hop: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Open the session and send its first step: `hidden[batch, n, h]` at `position`.

        Each hop gets its open and its step in one round (one round trip per hop instead of
        an open round trip before the chain's steps), pushed from hop to hop like `step`'s.
        `resume` re-attaches the caches the peers kept for this session id and keeps their
        first `position` positions. On any failure the hops opened so far are closed and the
        error is raised (no failover: the caller picks another chain). With `on_first_hop`, the
        later hops are opened at once, beside the first hop's round, and `on_first_hop` is
        called when the first of several hops has answered its open and step, every later hop
        its open, and the second hop's step is on its way (hop by hop only).
        """
        self._links = []
        keep = self.keep_alive if resume else 0.0
        try:
            if self.push and len(self.route) > 1:
                self._links = [self._attach(hop) for hop in self.route]
                hidden = await self._pushed_step(hidden, position, opening=True, resume=resume)
            else:
                hidden = await self._start_hop_by_hop(hidden, position, resume, on_first_hop)
        except BaseException:
            await self.close(keep_alive=keep)
            raise
        self.resumed_length = position if resume else 0
        self.length = position + hidden.shape[1]
        return hidden

    async def _start_hop_by_hop(
        self,
        hidden: torch.Tensor,
        position: int,
        resume: bool,
        on_first_hop: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        # with `on_first_hop`, the later hops' opens go out at once, beside the first hop's
        # round: a refusal (a busy peer, a kept cache gone) is known before the caller hears
        # that the chain took the request; otherwise each hop's open rides with its step
        early = on_first_hop is not None and len(self.route) > 1
        later: list[asyncio.Task[int]] = []
        if early:
            self._links = [self._attach(hop) for hop in self.route]
            opens = (self._open_link(link, resume) for link in self._links[1:])
            later = [asyncio.ensure_future(open_) for open_ in opens]
            for task in later:
                task.add_done_callback(retrieved)
        try:
            for index, hop in enumerate(self.route):
                if early:
                    link = self._links[index]
                else:
                    link = self._attach(hop)
                    self._links.append(link)
                # the second hop's round going out: the caller may answer its client
                step = self._step_link(link, hidden, position, on_first_hop if index == 1 else None)
                if early and index > 0:
                    output = await step
                else:
                    output = await self._opened_with(link, resume, step)
                    await asyncio.gather(*later)  # every later hop took the session
                link.inputs.record(hidden, position)
                hidden = output
        finally:
            for task in later:
                task.cancel()  # a failure left some in flight: `close` ends them at the peers
        return hidden

    def _attach(self, hop: Hop) -> _Link:
        channels = self.channels or channels_of(self.node)
        return _Link(hop, channels.get(hop.peer_id, hop.addrs))

    async def _open_link(self, link: _Link, resume: bool = False) -> int:
        hop = link.hop
        assert link.channel is not None  # set before the answer: close() tells the peer
        reply, _ = await link.channel.call(
            {
                "type": "open",
                "session": self.session_id,
                "model": self.model_hash,
                "start": hop.start,
                "end": hop.end,
                "max_length": self.max_length,
                "batch": self.batch,
                "keep_alive": self.keep_alive,
                "resume": resume,
            }
        )
        length = reply.get("length", 0)
        return length if isinstance(length, int) else 0

    async def _opened_with(self, link: _Link, resume: bool, step: Awaitable[T]) -> T:
        """Open `link` and run `step` together (the open queued first: one round carries
        both); the step's result, or the open's error, which explains the step's."""
        opened, result = await asyncio.gather(
            self._open_link(link, resume), step, return_exceptions=True
        )
        for outcome in (opened, result):
            if isinstance(outcome, BaseException):
                raise outcome
        return result  # type: ignore[return-value]  # not an exception: checked above

    def _op(self, kind: str, link: _Link, position: int, shape: Sequence[int]) -> dict[str, Any]:
        return op_header(kind, self.session_id, link.seq, position, shape)

    async def _step_link(
        self,
        link: _Link,
        hidden: torch.Tensor,
        position: int,
        on_sent: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        assert link.channel is not None
        link.seq += 1
        rows = hidden.to(self.transport_dtype).contiguous()
        header = self._op("step", link, position, rows.shape)
        reply, output = await link.channel.call(header, rows, on_sent=on_sent)
        if reply.get("seq") != link.seq or output is None:
            raise WireError("bad_response", "the peer answered out of order")
        return output

    async def step(
        self,
        hidden: torch.Tensor,
        position: int | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Send `hidden[batch, n, h]` at `position` (default: the end) through the route.
        `on_sent` is called when the step's round to the first hop goes out: not at all if
        it fails before, maybe more than once if the hop is retried after a failover."""
        position = self.length if position is None else position
        if not 0 <= position <= self.length:
            raise ValueError(f"position {position} outside [0, {self.length}]")
        if self.push and len(self._links) > 1:
            hidden = await self._pushed_step(hidden, position, on_sent=on_sent)
        else:
            hidden = await self._chain(hidden, position, 0, on_sent)
        self.length = position + hidden.shape[1]
        return hidden

    async def _pushed_step(
        self,
        hidden: torch.Tensor,
        position: int,
        opening: bool = False,
        resume: bool = False,
        on_sent: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """One step sent to every hop at once, each hop pushing its output to the next.

        The first hop gets the rows; each later hop's step waits at its peer for the rows the
        hop before pushes (three transfers for two hops instead of four, and no trip through
        this client between them). Every hop still answers with its output, which is the next
        hop's input history for failover, and says whether its push got there; where it did
        not, this client sends the rows itself (on the peer's side channel). When a hop fails,
        the steps waiting after it are cancelled and the chain goes on hop by hop from there.

        `opening` (from `start`): each hop's open goes in the same round as its step, and a
        failure is raised (after the same cancelling) instead of failed over.
        """
        links = list(self._links)
        rows = hidden.to(self.transport_dtype).contiguous()
        shape = tuple(rows.shape)
        for link in links:
            link.seq += 1
        # a hop's step is queued once the hop before it has sent its own, so that each hop's
        # rounds hold the sessions of one round of the hop before (else a round would wait
        # for the pushes of two)
        queued = [asyncio.Event() for _ in links]
        queued[0].set()

        def first_sent() -> None:  # the first hop's step is on the wire
            if len(queued) > 1:
                queued[1].set()
            if on_sent is not None:
                on_sent()

        async def send(i: int) -> tuple[dict[str, Any], torch.Tensor | None]:
            await queued[i].wait()
            link = links[i]
            assert link.channel is not None
            header = self._op("step", link, position, shape)
            if i > 0:
                header["pushed"] = True
            last = i + 1 == len(links)
            if not last:
                nxt = links[i + 1]
                header["push"] = {
                    "peer": nxt.hop.peer_id,
                    "addrs": list(nxt.hop.addrs),
                    "seq": nxt.seq,
                }
            stepped = link.channel.call(
                header,
                rows if i == 0 else None,
                shape,
                track=last,
                on_sent=first_sent if i == 0 else None if last else queued[i + 1].set,
            )
            return await (self._opened_with(link, resume, stepped) if opening else stepped)

        calls = [asyncio.ensure_future(send(i)) for i in range(len(links))]
        for call in calls:
            call.add_done_callback(lambda c: c.cancelled() or c.exception())
        return await self._pushed_replies(links, calls, queued, rows, position, opening)

    async def _pushed_replies(
        self,
        links: list[_Link],
        calls: Sequence[asyncio.Future[tuple[dict[str, Any], torch.Tensor | None]]],
        queued: list[asyncio.Event],
        rows: torch.Tensor,
        position: int,
        opening: bool,
    ) -> torch.Tensor:
        """Each hop's answer in chain order: its output is the next hop's input history."""
        inputs = rows
        for i, link in enumerate(links):
            try:
                # shielded: a caller that gives up leaves the hops' steps to finish (they push)
                reply, output = await asyncio.shield(calls[i])
                if reply.get("seq") != link.seq or output is None:
                    raise WireError("bad_response", "the peer answered out of order")
            except (WireError, OSError) as error:
                # the hops from here on wait for (or hold) rows that will not be used: release
                for j in range(max(i, 1), len(links)):
                    if queued[j].is_set():
                        self._cancel_push(links[j])
                    else:
                        calls[j].cancel()
                await asyncio.gather(*calls[i + 1 :], return_exceptions=True)
                if opening or (isinstance(error, WireError) and error.code == BAD_REQUEST):
                    raise
                return await self._chain(inputs, position, i)
            link.inputs.record(inputs, position)
            if i + 1 < len(links) and reply.get("pushed") is not True:
                await self._push_rows(links[i + 1], position, output)
            inputs = output
        return inputs

    def _side(self, link: _Link) -> PeerChannel:
        channels = self.channels or channels_of(self.node)
        return channels.side(link.hop.peer_id, link.hop.addrs)

    async def _push_rows(self, link: _Link, position: int, rows: torch.Tensor) -> None:
        """Send a pushed step's rows ourselves (its previous hop could not)."""
        header = self._op("push", link, position, rows.shape)
        try:
            await self._side(link).call(header, rows)
        except (WireError, OSError) as error:
            log.info("pushing to %s failed: %s", link.hop.peer_id[-8:], error)
            self._cancel_push(link)  # its step then fails, and failover takes it from there

    def _cancel_push(self, link: _Link) -> None:
        header = {"type": "push", "session": self.session_id, "seq": link.seq, "cancel": True}
        cancel = asyncio.ensure_future(self._side(link).call(header))
        cancel.add_done_callback(lambda c: c.cancelled() or c.exception())

    async def _chain(
        self,
        hidden: torch.Tensor,
        position: int,
        index: int,
        on_sent: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Send `hidden` through the links from `index` on, one after another, failing over
        (`on_sent`: see `step`; only the first attempt at the first link reports)."""
        while index < len(self._links):
            link = self._links[index]
            try:
                output = await self._step_link(link, hidden, position, on_sent)
                on_sent = None
            except (WireError, OSError) as error:
                if isinstance(error, WireError) and error.code == BAD_REQUEST:
                    raise  # our own mistake: another peer would refuse it too
                log.warning(
                    "hop %s [%d, %d) failed: %s",
                    link.hop.peer_id[-8:],
                    link.hop.start,
                    link.hop.end,
                    error,
                )
                await self._fail_over(index, position)
                continue  # retry the same blocks through the replacement hops
            link.inputs.record(hidden, position)
            hidden = output
            index += 1
        return hidden

    async def _fail_over(self, index: int, position: int) -> None:
        """Replace link `index` by hops covering its blocks, rebuilt from its input history."""
        failed = self._links[index]
        if failed.channel is not None:  # if the peer is still there, it frees the session now
            failed.channel.close_session_soon(self.session_id)
            failed.channel = None
        self.banned.add(failed.hop.peer_id)
        self.failovers += 1
        if self.resumed_length:
            # the inputs of the kept positions were sent by an earlier request: not replayable
            raise HistoryLostError(f"blocks [{failed.hop.start}, {failed.hop.end}) failed")
        if self.reroute is None or self.failovers > self.max_failovers:
            raise SessionFailedError(f"blocks [{failed.hop.start}, {failed.hop.end}) failed")
        history = failed.inputs.upto(position)
        while True:
            hops = await self.reroute(failed.hop.start, failed.hop.end, frozenset(self.banned))
            if not spans_cover(hops, failed.hop.start, failed.hop.end):
                raise SessionFailedError(
                    f"no peer can serve blocks [{failed.hop.start}, {failed.hop.end})"
                )
            links = [self._attach(hop) for hop in hops]
            try:
                await self._rebuild(links, history)
                break
            except (WireError, OSError) as error:
                await self._close_links(links, 0.0)  # the replacements opened so far
                culprit = getattr(error, "peer_id", None)
                self.failovers += 1
                if culprit is None or culprit in self.banned or self.failovers > self.max_failovers:
                    raise SessionFailedError(f"replacing blocks failed: {error}") from error
                self.banned.add(culprit)
        self._links[index : index + 1] = links
        self.route = [link.hop for link in self._links]

    async def _rebuild(self, links: list[_Link], history: torch.Tensor | None) -> None:
        """Open replacement links and replay `history` through them, in chain order."""
        for link in links:
            await self._open_link(link)
            if history is not None and history.shape[1] > 0:
                try:
                    replayed = await self._step_link(link, history, 0)
                except WireError as error:
                    error.peer_id = link.hop.peer_id  # type: ignore[attr-defined]
                    raise
                link.inputs.record(history, 0)
                history = replayed

    async def close(self, keep_alive: float | None = None) -> None:
        """End the session at every hop; peers keep the caches for `keep_alive` seconds if asked."""
        keep = self.keep_alive if keep_alive is None else keep_alive
        await self._close_links(self._links, keep)

    def close_soon(self, keep_alive: float = 0.0) -> None:
        """Like `close`, but without waiting: each close goes with its channel's next round.

        A later request through the same channels is ordered after it; peers make a resume
        from another client wait for the close.
        """
        for link in self._links:
            channel, link.channel = link.channel, None
            if channel is not None:
                channel.close_session_soon(self.session_id, keep_alive)

    async def _close_links(self, links: Sequence[_Link], keep_alive: float) -> None:
        async def close_one(link: _Link) -> None:
            channel, link.channel = link.channel, None
            if channel is None:
                return
            header = {"type": "close", "session": self.session_id, "keep_alive": keep_alive}
            with contextlib.suppress(P2PError, WireError, OSError, TimeoutError):
                await asyncio.wait_for(channel.call(header), 5.0)

        await asyncio.shield(asyncio.gather(*(close_one(link) for link in links)))

    async def __aenter__(self) -> InferenceSession:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def spans_cover(hops: Sequence[Hop], start: int, end: int) -> bool:
    """Do `hops` chain exactly from `start` to `end`?"""
    position = start
    for hop in hops:
        if hop.start != position:
            return False
        position = hop.end
    return position == end
