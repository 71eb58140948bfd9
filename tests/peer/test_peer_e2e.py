"""Real peer processes on loopback, driven by a client session (no gateway)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import pytest
import torch
import torch.nn.functional as F

from peer.pushes import PUSH_WAIT
from swarm.head import Head
from swarm.logs import quiet_third_party_logs
from swarm.models import Weights, load_weights
from swarm.models.reference import build_full_model
from swarm.p2p import P2PNode
from swarm.protocol import INFERENCE_PROTOCOL, INFO_PROTOCOL, MAX_STEP_TOKENS, SESSIONS_PROTOCOL
from swarm.rounds import Channels, channels_of
from swarm.session import Hop, InferenceSession
from swarm.wire import WireError
from tests.procs import Proc, start_peer

pytestmark = pytest.mark.slow
quiet_third_party_logs()
T = TypeVar("T")
QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@pytest.fixture(scope="module")
def weights() -> Weights:
    return load_weights("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def peers() -> Iterator[list[Proc]]:
    first = start_peer("--blocks", "0:15", "--cache-tokens", "8192")
    procs = [first]
    try:
        bootstrap = str(first.ready["maddrs"][0])  # type: ignore[index]
        procs.append(start_peer("--blocks", "15:30", "--cache-tokens", "8192", bootstrap=bootstrap))
        yield procs
    finally:
        codes = [p.stop() for p in procs]
        assert codes == [0, 0], [p.output[-2000:] for p in procs]


def hops(peers: list[Proc]) -> list[Hop]:
    return [
        Hop(
            str(p.ready["peer_id"]),
            int(p.ready["start"]),
            int(p.ready["end"]),
            tuple(p.ready["maddrs"]),
        )  # type: ignore[arg-type]
        for p in peers
    ]


async def client(peers: list[Proc]) -> P2PNode:
    node = P2PNode(dht_mode="client", bootstrap=[str(peers[0].ready["maddrs"][0])])  # type: ignore[index]
    await node.start()
    return node


async def info(node: P2PNode, proc: Proc) -> dict[str, Any]:
    frame = await node.request(str(proc.ready["peer_id"]), INFO_PROTOCOL, {"type": "info"})
    return frame.header


def reference_greedy(weights: Weights, prompt: list[int], steps: int) -> list[int]:
    model = build_full_model(weights)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=steps, do_sample=False, min_new_tokens=steps
        )
    return [int(t) for t in out[0, len(prompt) :]]


async def swarm_greedy(
    node: P2PNode,
    head: Head,
    weights: Weights,
    route: list[Hop],
    prompt: list[int],
    steps: int,
    channels: Channels | None = None,
    push: bool = False,
) -> list[int]:
    async with InferenceSession(
        node, weights.model_hash, route, max_length=256, channels=channels, push=push
    ) as session:
        hidden = await session.step(head.embed(torch.tensor([prompt])))
        return await decode_greedy(session, head, hidden, steps)


def join(peers: list[Proc], blocks: str, *flags: str) -> Proc:
    """One more peer, serving `blocks`, in the swarm of `peers`."""
    return start_peer("--blocks", blocks, *flags, bootstrap=str(peers[0].ready["maddrs"][0]))  # type: ignore[index]


async def decode_greedy(
    session: InferenceSession, head: Head, hidden: torch.Tensor, steps: int
) -> list[int]:
    """`steps` greedy tokens, the first from `hidden` (the prompt's output)."""
    tokens = [int(head.logits(hidden)[0, -1].argmax())]
    while len(tokens) < steps:
        hidden = await session.step(head.embed(torch.tensor([[tokens[-1]]])))
        tokens.append(int(head.logits(hidden)[0, -1].argmax()))
    return tokens


def test_greedy_tokens_over_two_peers_equal_the_full_model(
    peers: list[Proc], weights: Weights
) -> None:
    head = Head(weights)
    prompt = head.encode_chat(QUESTION)
    expected = reference_greedy(weights, prompt, 24)

    async def main() -> None:
        node = await client(peers)
        try:
            got = await swarm_greedy(node, head, weights, hops(peers), prompt, 24)
            assert got == expected
            # the sessions are gone from both peers once closed
            for proc in peers:
                status = await info(node, proc)
                assert status["sessions"] == 0 and status["cache_tokens_used"] == 0
        finally:
            await node.stop()

    run(main())


def test_sessions_run_over_lanes_or_libp2p_streams_with_the_same_tokens(
    peers: list[Proc], weights: Weights
) -> None:
    """Lanes by default; a client without lanes, and a peer started with --no-lanes, get
    libp2p streams; every way gives the full model's tokens."""
    head = Head(weights)
    prompt = head.encode_chat(QUESTION)
    expected = reference_greedy(weights, prompt, 12)
    no_lanes = join(peers, "15:30", "--no-lanes")

    async def main() -> None:
        node = await client(peers)
        try:
            for lanes, route, lanes_opened in (
                (True, hops(peers), 2),
                (False, hops(peers), 0),
                (True, hops([peers[0], no_lanes]), 1),  # the first hop's lane, then libp2p
            ):
                channels = Channels(node, lanes=lanes)
                got = await swarm_greedy(node, head, weights, route, prompt, 12, channels)
                assert got == expected
                assert channels.stats.streams == 2 and channels.stats.lanes == lanes_opened
                await channels.close()
            for proc in [*peers, no_lanes]:  # closing the lanes closed every session
                for _ in range(100):
                    if (await info(node, proc))["sessions"] == 0:
                        break
                    await asyncio.sleep(0.05)
                assert (await info(node, proc))["sessions"] == 0
        finally:
            await node.stop()

    try:
        run(main())
    finally:
        assert no_lanes.stop() == 0, no_lanes.output[-2000:]


def test_a_peer_computing_inline_gives_the_same_tokens_and_stops_on_sigterm(
    peers: list[Proc], weights: Weights
) -> None:
    """`--compute inline`: the span computes on the peer's event loop (main thread); a chain
    through such a peer gives the full model's tokens, and SIGTERM still stops it cleanly."""
    head = Head(weights)
    prompt = head.encode_chat(QUESTION)
    expected = reference_greedy(weights, prompt, 12)
    inline = join(peers, "15:30", "--compute", "inline")

    async def main() -> None:
        node = await client(peers)
        try:
            route = hops([peers[0], inline])
            assert await swarm_greedy(node, head, weights, route, prompt, 12) == expected
        finally:
            await node.stop()

    try:
        run(main())
    finally:
        assert inline.stop() == 0, inline.output[-2000:]


def test_steps_are_pushed_peer_to_peer_or_relayed_with_the_same_tokens(
    peers: list[Proc], weights: Weights
) -> None:
    """With push the first peer sends each output straight to the second; a client that
    does not push relays every output itself; behind a --no-push first peer the client sends
    the rows the peer could not push. Every way gives the full model's tokens."""
    head = Head(weights)
    prompt = head.encode_chat(QUESTION)
    expected = reference_greedy(weights, prompt, 12)
    no_push = join(peers, "0:15", "--no-push")

    async def counters(node: P2PNode, proc: Proc) -> dict[str, int]:
        return dict((await info(node, proc))["counters"])

    by_id = {str(p.ready["peer_id"]): p for p in (*peers, no_push)}

    async def main() -> None:
        node = await client(peers)
        try:
            for push, route, pushed_in in (
                (True, hops(peers), 12),  # the prompt and 11 decode steps
                (False, hops(peers), 0),
                (True, hops([no_push, peers[1]]), 12),  # pushed by the client instead
            ):
                procs = [by_id[hop.peer_id] for hop in route]
                before = [await counters(node, p) for p in procs]
                got = await swarm_greedy(node, head, weights, route, prompt, 12, push=push)
                assert got == expected
                after = [await counters(node, p) for p in procs]
                delta = {
                    key: [a[key] - b[key] for a, b in zip(after, before, strict=True)]
                    for key in ("pushes_in", "pushes_out", "push_failures")
                }
                relayed = procs[0] is no_push
                assert delta["pushes_in"][1] == pushed_in, delta
                assert delta["pushes_out"][0] == (0 if relayed or not push else pushed_in), delta
                assert delta["push_failures"][0] == (pushed_in if relayed else 0), delta
        finally:
            await node.stop()

    try:
        run(main())
    finally:
        assert no_push.stop() == 0, no_push.output[-2000:]


def test_a_first_hop_killed_mid_decode_releases_the_pushed_step_and_fails_over(
    peers: list[Proc], weights: Weights
) -> None:
    """SIGKILL of the first hop while the second waits for its push: the client cancels that
    wait (long before the peer would give up on it), replays into a spare and the tokens stay
    the full model's."""
    head = Head(weights)
    prompt = head.encode_chat(QUESTION)
    expected = reference_greedy(weights, prompt, 16)
    bootstrap = str(peers[0].ready["maddrs"][0])  # type: ignore[index]
    doomed = start_peer("--blocks", "0:15", bootstrap=bootstrap)
    spare = start_peer("--blocks", "0:15", bootstrap=bootstrap)
    route = hops([doomed, peers[1]])

    async def reroute(start: int, end: int, banned: frozenset[str]) -> list[Hop]:
        assert (start, end) == (0, 15) and route[0].peer_id in banned
        return hops([spare])

    async def main() -> None:
        node = await client(peers)
        try:
            async with InferenceSession(
                node, weights.model_hash, route, max_length=256, reroute=reroute, push=True
            ) as session:
                hidden = await session.step(head.embed(torch.tensor([prompt])))
                tokens = [int(head.logits(hidden)[0, -1].argmax())]
                while len(tokens) < 16:
                    if len(tokens) == 6:
                        doomed.kill()
                    async with asyncio.timeout(PUSH_WAIT * 0.75):  # not stuck on the push
                        hidden = await session.step(head.embed(torch.tensor([[tokens[-1]]])))
                    tokens.append(int(head.logits(hidden)[0, -1].argmax()))
                assert (
                    session.failovers >= 1 and session.route[0].peer_id == hops([spare])[0].peer_id
                )
            assert tokens == expected
        finally:
            await node.stop()

    try:
        run(main())
    finally:
        doomed.stop()
        assert spare.stop() == 0, spare.output[-2000:]


def test_two_round_groups_pipeline_concurrent_sessions_with_exact_tokens(
    peers: list[Proc], weights: Weights
) -> None:
    """Four sessions decoding together over channels of two groups: no round carries more
    than two of their steps, and each session still gets the full model's tokens."""
    head = Head(weights)
    questions = ["Name a fruit.", "Name a city.", "Name a planet.", "Name a metal."]
    prompts = [head.encode_chat([{"role": "user", "content": q}]) for q in questions]
    expected = [reference_greedy(weights, p, 10) for p in prompts]

    async def main() -> None:
        node = await client(peers)
        try:
            channels = Channels(node, window=0.005, groups=2)
            got = await asyncio.gather(
                *(swarm_greedy(node, head, weights, hops(peers), p, 10, channels) for p in prompts)
            )
            for tokens, reference in zip(got, expected, strict=True):
                # the reference may not end its turn (min_new_tokens): compare up to our end
                end = tokens.index(2) if 2 in tokens else len(tokens)
                assert tokens[:end] == reference[:end] and end >= 5
            assert channels.stats.widest == 2
            await channels.close()
        finally:
            await node.stop()

    run(main())


def test_start_sends_each_hop_its_open_and_first_step_in_one_round(
    peers: list[Proc], weights: Weights
) -> None:
    head = Head(weights)
    prompt = head.encode_chat(QUESTION)
    expected = reference_greedy(weights, prompt, 8)

    async def main() -> None:
        node = await client(peers)

        async def open_sessions() -> list[int]:
            return [int((await info(node, p))["sessions"]) for p in peers]

        async def none_open() -> None:
            for _ in range(100):
                if await open_sessions() == [0, 0]:
                    break
                await asyncio.sleep(0.05)
            assert await open_sessions() == [0, 0]

        try:
            channels = channels_of(node)
            for push in (False, True):  # hop after hop, or pushed from hop to hop
                route = hops(peers)
                session = InferenceSession(
                    node, weights.model_hash, route, max_length=64, push=push
                )
                rounds = channels.stats.rounds
                hidden = await session.start(head.embed(torch.tensor([prompt])))
                assert channels.stats.rounds - rounds == 2  # [open, step] per hop
                assert session.length == len(prompt)
                assert await decode_greedy(session, head, hidden, 8) == expected
                session.close_soon()  # not awaited: goes with the channels' next round
                await none_open()
                # a hop that refuses the open fails the start and leaves nothing open anywhere
                bad = [route[0], Hop(route[1].peer_id, 15, 29, route[1].addrs)]
                failing = InferenceSession(node, weights.model_hash, bad, max_length=64, push=push)
                with pytest.raises(WireError):
                    await failing.start(head.embed(torch.tensor([prompt])))
                await none_open()
        finally:
            await node.stop()

    run(main())


def test_rollback_over_the_wire(peers: list[Proc], weights: Weights) -> None:
    head = Head(weights)
    prompt = head.encode_text("The quick brown fox jumps over the lazy dog. The quick brown")

    async def main() -> None:
        node = await client(peers)
        try:
            async with InferenceSession(node, weights.model_hash, hops(peers), max_length=128) as s:
                full = head.logits(await s.step(head.embed(torch.tensor([prompt]))))
                cut = len(prompt) - 5
                again = head.logits(
                    await s.step(head.embed(torch.tensor([prompt[cut:]])), position=cut)
                )
                assert s.length == len(prompt)
                assert float((again[0] - full[0, cut:]).abs().max()) <= 1e-4
                for proc in peers:
                    status = await info(node, proc)
                    assert status["counters"]["tokens_in"] >= len(prompt) + 5
        finally:
            await node.stop()

    run(main())


def test_full_budget_answers_busy(peers: list[Proc], weights: Weights) -> None:
    async def main() -> None:
        node = await client(peers)
        try:
            big = InferenceSession(node, weights.model_hash, hops(peers)[:1], max_length=6000)
            await big.open()
            try:
                second = InferenceSession(
                    node, weights.model_hash, hops(peers)[:1], max_length=6000
                )
                with pytest.raises(WireError) as refused:
                    await second.open()
                assert refused.value.code == "busy"
            finally:
                await big.close()
            again = InferenceSession(node, weights.model_hash, hops(peers)[:1], max_length=6000)
            await again.open()  # freed at once by the close
            await again.close()
        finally:
            await node.stop()

    run(main())


def test_malformed_messages_get_errors_and_the_peer_keeps_serving(
    peers: list[Proc], weights: Weights
) -> None:
    head = Head(weights)
    prompt = head.encode_chat(QUESTION)
    expected = reference_greedy(weights, prompt, 8)
    first = peers[0]
    peer_id = str(first.ready["peer_id"])
    hidden = torch.zeros(1, 2, weights.config.hidden_size)

    async def main() -> None:
        node = await client(peers)
        try:
            # a concurrent legitimate session runs while the abuse goes on
            legit = asyncio.create_task(swarm_greedy(node, head, weights, hops(peers), prompt, 8))
            stream = await node.open_stream(peer_id, INFERENCE_PROTOCOL)
            await stream.send({"type": "step", "seq": 1, "position": 0}, [hidden])
            with pytest.raises(WireError, match="bad_request"):
                (await stream.recv()).raise_for_error()
            await stream.reset()
            stream = await node.open_stream(peer_id, INFERENCE_PROTOCOL)
            header = {
                "type": "open",
                "session": "x" * 20,
                "model": weights.model_hash,
                "start": 0,
                "end": 15,
                "max_length": 64,
                "batch": 1,
            }
            await stream.send(header)
            assert (await stream.recv()).header["type"] == "ok"
            bad_steps: list[tuple[dict[str, Any], list[torch.Tensor]]] = [
                ({"type": "step", "seq": 1, "position": 0}, [hidden.to(torch.int64)]),
                ({"type": "step", "seq": 2, "position": 0}, [torch.zeros(1, 2, 7)]),
                ({"type": "step", "seq": 3, "position": 50}, [hidden]),
                ({"type": "step", "seq": "x", "position": 0}, [hidden]),
                (
                    {"type": "step", "seq": 4, "position": 0},
                    [torch.full_like(hidden, float("nan"))],
                ),
                ({"type": "dance"}, []),
            ]
            for bad_header, tensors in bad_steps:
                await stream.send(bad_header, tensors)
                reply = await stream.recv()
                assert reply.header["type"] == "error" and reply.header["code"] == "bad_request", (
                    reply.header
                )
            await stream.send({"type": "step", "seq": 9, "position": 0}, [hidden])
            assert (await stream.recv()).header["type"] == "result"  # the session still works
            # an oversized frame: the peer refuses it before allocating, and resets the stream
            huge = torch.zeros(1, 9000, weights.config.hidden_size)
            with pytest.raises(WireError):
                await stream.send({"type": "step", "seq": 10, "position": 0}, [huge])
                (await stream.recv()).raise_for_error()
            assert await legit == expected
            status = await info(node, first)
            assert status["counters"]["bad_requests"] >= len(bad_steps)
        finally:
            await node.stop()

    run(main())
    assert first.popen.poll() is None


def test_four_concurrent_sessions_batch_and_match_alone(
    peers: list[Proc], weights: Weights
) -> None:
    head = Head(weights)
    questions = ["What is 2+2?", "Say hello.", "Name a fruit.", "What colour is the sky?"]
    prompts = [head.encode_chat([{"role": "user", "content": q}]) for q in questions]

    async def main() -> None:
        node = await client(peers)
        try:
            route = hops(peers)
            alone = [await swarm_greedy(node, head, weights, route, p, 12) for p in prompts]
            together = await asyncio.gather(
                *(swarm_greedy(node, head, weights, route, p, 12) for p in prompts)
            )
            assert list(together) == alone
            status = await info(node, peers[1])
            assert max(int(k) for k in status["batch_sizes"]) > 1, status["batch_sizes"]
            # the sessions shared round frames, over one kept stream per peer
            stats = channels_of(node).stats
            assert stats.ops > stats.rounds and stats.streams == len(route), stats
        finally:
            await node.stop()

    run(main())


def test_a_round_answers_each_op_and_a_bad_frame_keeps_the_stream(
    peers: list[Proc], weights: Weights
) -> None:
    first = peers[0]
    peer_id = str(first.ready["peer_id"])
    size = weights.config.hidden_size
    opening = {"model": weights.model_hash, "start": 0, "end": 15, "max_length": 64, "batch": 1}

    def step(session: str, n: int, position: int = 0) -> dict[str, Any]:
        return {"type": "step", "session": session, "seq": 1, "position": position, "shape": [1, n]}

    async def main() -> None:
        node = await client(peers)
        try:
            stream = await node.open_stream(peer_id, SESSIONS_PROTOCOL)
            ops = [
                {"type": "open", "session": "a" * 16, **opening},
                {"type": "open", "session": "b" * 16, **opening},
            ]
            await stream.send({"type": "round", "ops": ops})
            reply = await stream.recv()
            assert [r["type"] for r in reply.header["results"]] == ["ok", "ok"]
            # one round: two good steps around one for a session that is not open here
            rows = torch.randn(3 + 1 + 2, size) * 0.5
            ops = [step("a" * 16, 3), step("z" * 16, 1), step("b" * 16, 2)]
            await stream.send({"type": "round", "ops": ops}, [rows])
            reply = await stream.recv()
            results = reply.header["results"]
            assert [r["type"] for r in results] == ["result", "error", "result"], results
            assert results[1]["code"] == "not_found"
            assert [r["length"] for r in (results[0], results[2])] == [3, 2]
            assert reply.tensors[0].shape == (5, size)  # the two good steps' outputs, in order
            # a NaN in one session's rows fails that step alone (the round is checked once,
            # then step by step only when that check fails)
            mixed = torch.randn(2, size) * 0.5
            mixed[1, 7] = float("nan")
            await stream.send(
                {"type": "round", "ops": [step("a" * 16, 1, 3), step("b" * 16, 1, 2)]}, [mixed]
            )
            results = (await stream.recv()).header["results"]
            assert [r["type"] for r in results] == ["result", "error"], results
            assert results[1]["code"] == "bad_request" and "NaN" in results[1]["message"]
            # malformed frames: an error frame each, and the stream stays usable
            bad_frames: list[tuple[dict[str, Any], list[torch.Tensor]]] = [
                ({"type": "round", "ops": "x"}, []),
                ({"type": "round", "ops": []}, []),
                ({"type": "round", "ops": [step("a" * 16, 4)]}, [rows]),  # 4 declared, 6 sent
                ({"type": "round", "ops": [step("a" * 16, 1)]}, [rows, rows]),
                ({"type": "round", "ops": [{**step("a" * 16, 1), "shape": [1, -1]}]}, [rows]),
                ({"type": "dance"}, []),
            ]
            for header, tensors in bad_frames:
                await stream.send(header, tensors)
                frame = await stream.recv()
                assert frame.header["type"] == "error", frame.header
                assert frame.header["code"] == "bad_request", frame.header
            await stream.send({"type": "round", "ops": [step("a" * 16, 1, 4)]}, [rows[:1]])
            assert (await stream.recv()).header["results"][0]["length"] == 5
            # a step too big for one frame fails at the client, before it costs anyone a stream
            channel = channels_of(node).get(peer_id, list(first.ready["maddrs"]))  # type: ignore[call-overload]
            huge = torch.zeros(1, MAX_STEP_TOKENS + 1, size)
            with pytest.raises(WireError, match="bad_request"):
                await channel.call(step("c" * 16, MAX_STEP_TOKENS + 1), huge)
            assert channel.stats.streams == 0
            status = await info(node, first)
            assert status["sessions"] == 2
            await stream.reset()  # a client that vanishes: its sessions are freed
            for _ in range(50):
                status = await info(node, first)
                if status["sessions"] == 0:
                    break
                await asyncio.sleep(0.1)
            assert status["sessions"] == 0 and status["cache_tokens_used"] == 0
        finally:
            await node.stop()

    run(main())
    assert first.popen.poll() is None


def test_rounds_sent_back_to_back_are_answered_in_order_each_session_in_turn(
    peers: list[Proc], weights: Weights
) -> None:
    """Rounds pipeline at the peer: a client sends four rounds without waiting (an open and a
    prefill, a step of that session, a step of another, a close), gets four answers in that
    order, and each session's ops ran in turn (the second step saw the prefill's cache, the
    close came after the step), with outputs equal to the same steps sent one at a time."""
    first = peers[0]
    peer_id = str(first.ready["peer_id"])
    size = weights.config.hidden_size
    opening = {"model": weights.model_hash, "start": 0, "end": 15, "max_length": 64, "batch": 1}

    def step(session: str, n: int, position: int) -> dict[str, Any]:
        return {"type": "step", "session": session, "seq": 1, "position": position, "shape": [1, n]}

    prefill, token, other = (
        torch.randn(5, size) * 0.5,
        torch.randn(1, size) * 0.5,
        torch.randn(3, size) * 0.5,
    )
    rounds: list[tuple[list[dict[str, Any]], list[torch.Tensor]]] = [
        ([{"type": "open", "session": "p" * 16, **opening}, step("p" * 16, 5, 0)], [prefill]),
        ([step("p" * 16, 1, 5)], [token]),
        ([{"type": "open", "session": "q" * 16, **opening}, step("q" * 16, 3, 0)], [other]),
        ([{"type": "close", "session": "p" * 16, "keep_alive": 0.0}], []),
    ]

    async def exchange(stream: Any, back_to_back: bool) -> list[Any]:
        answers = []
        for ops, tensors in rounds:
            await stream.send({"type": "round", "ops": ops}, tensors)
            if not back_to_back:
                answers.append(await stream.recv())
        while len(answers) < len(rounds):
            answers.append(await stream.recv())
        return answers

    async def main() -> None:
        node = await client(peers)
        try:
            one_by_one = await exchange(await node.open_stream(peer_id, SESSIONS_PROTOCOL), False)
            stream = await node.open_stream(peer_id, SESSIONS_PROTOCOL)
            for ops, _ in rounds:  # the same session ids again: the first stream closed them
                for op in ops:
                    op["session"] = op["session"].upper()
            pipelined = await exchange(stream, True)
            kinds = [[r["type"] for r in a.header["results"]] for a in pipelined]
            assert kinds == [["ok", "result"], ["result"], ["ok", "result"], ["closed"]], kinds
            assert pipelined[1].header["results"][0]["length"] == 6  # after the prefill's 5
            for alone, together in zip(one_by_one, pipelined, strict=True):
                assert len(alone.tensors) == len(together.tensors)
                for a, b in zip(alone.tensors, together.tensors, strict=True):
                    torch.testing.assert_close(a, b)
            status = await info(node, first)
            assert status["sessions"] == 2  # each stream's Q; both P's are closed
        finally:
            await node.stop()

    run(main())
    assert first.popen.poll() is None


def test_int8_peer_serves_close_logits(peers: list[Proc], weights: Weights) -> None:
    head = Head(weights)
    prompt = head.encode_chat(QUESTION)
    bootstrap = str(peers[0].ready["maddrs"][0])  # type: ignore[index]
    quantized = start_peer(
        "--blocks", "15:30", "--quant", "int8", "--cache-tokens", "4096", bootstrap=bootstrap
    )

    async def last_logits(node: P2PNode, route: list[Hop]) -> torch.Tensor:
        async with InferenceSession(node, weights.model_hash, route, max_length=128) as s:
            return head.logits(await s.step(head.embed(torch.tensor([prompt]))))[0, -1]

    async def main() -> None:
        node = await client(peers)
        try:
            exact = await last_logits(node, hops(peers))
            mixed = await last_logits(node, [hops(peers)[0], *hops([quantized])])
            status = await info(node, quantized)
            assert status["quant"] == "int8"
        finally:
            await node.stop()
        kl = F.kl_div(
            mixed.log_softmax(-1), exact.log_softmax(-1), log_target=True, reduction="sum"
        )
        assert 0 < float(kl) < 0.05
        assert not torch.equal(exact, mixed)

    try:
        run(main())
    finally:
        assert quantized.stop() == 0
