"""The step scheduler: steps submitted as a group batch like single steps, and a stopped
scheduler fails what it was given (no waiter hangs)."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from peer.scheduler import StepScheduler
from peer.sessions import Session
from swarm import llama_span
from swarm.blocks import Span
from swarm.models import load_weights


def tiny_span() -> Span:
    return Span(load_weights("random:llama-tiny@3"), 0, 2)


def prefilled(span: Span, sid: str, n: int, seed: int) -> tuple[Session, torch.Tensor]:
    """A session whose cache holds `n` positions, and the next position's input."""
    g = torch.Generator().manual_seed(seed)
    cache = span.new_cache()
    span.forward(torch.randn(1, n, span.hidden_size, generator=g), cache, 0)
    return Session(sid, cache, 64, 1), torch.randn(1, 1, span.hidden_size, generator=g)


def test_a_group_of_steps_runs_as_one_forward_with_the_outputs_of_single_steps() -> None:
    span = tiny_span()
    lengths = [3, 5, 2]
    alone = []
    for i, n in enumerate(lengths):  # the same steps one by one, on fresh caches
        session, x = prefilled(span, f"s{i}", n, seed=i)
        alone.append(span.forward(x, session.cache, n))

    async def main() -> tuple[list[torch.Tensor | BaseException], StepScheduler]:
        scheduler = StepScheduler(span)
        scheduler.start()
        try:
            steps = []
            for i, n in enumerate(lengths):
                session, x = prefilled(span, f"s{i}", n, seed=i)
                steps.append((session, x, n))
            return await scheduler.step_group(steps), scheduler
        finally:
            await scheduler.stop()

    outs, scheduler = asyncio.run(main())
    assert scheduler.stats.batch_sizes == {3: 1}  # one batched forward for the group
    for out, want in zip(outs, alone, strict=True):
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)


def test_stopping_fails_a_group_being_computed_and_one_still_queued() -> None:
    span = tiny_span()
    computing, release = threading.Event(), threading.Event()
    real = span.forward_many

    def slow_forward_many(*args: object, **kwargs: object) -> torch.Tensor:
        computing.set()
        release.wait(5)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    span.forward_many = slow_forward_many  # type: ignore[method-assign]

    async def main() -> list[list[torch.Tensor | BaseException]]:
        scheduler = StepScheduler(span)
        scheduler.start()
        first = [prefilled(span, f"a{i}", 2, seed=i) for i in range(2)]
        second = [prefilled(span, f"b{i}", 2, seed=9 + i) for i in range(2)]
        running = asyncio.ensure_future(scheduler.step_group([(s, x, 2) for s, x in first]))
        while not computing.is_set():
            await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(scheduler.step_group([(s, x, 2) for s, x in second]))
        await asyncio.sleep(0.05)
        # the forward returns a little after the stop began (the stop joins the compute
        # thread, blocking this loop meanwhile: the release comes from another thread)
        threading.Timer(0.2, release.set).start()
        await scheduler.stop()
        return list(await asyncio.wait_for(asyncio.gather(running, queued), 5))

    for group in asyncio.run(main()):
        assert all(isinstance(out, RuntimeError) for out in group), group


def test_prefills_among_decode_steps_join_their_forward_and_bad_ones_fail_alone() -> None:
    span = tiny_span()
    assert span.mixes_steps  # paged, no decode graphs: the CPU
    g = torch.Generator().manual_seed(9)
    prompt = torch.randn(1, 6, span.hidden_size, generator=g)
    late = torch.randn(1, 4, span.hidden_size, generator=g)  # a step placed past its cache
    alone = []
    for i, n in enumerate((3, 5)):
        session, x = prefilled(span, f"s{i}", n, seed=i)
        alone.append(span.forward(x, session.cache, n))
    alone.append(span.forward(prompt, span.new_cache(), 0))

    async def main(bad: bool) -> tuple[list[torch.Tensor | BaseException], StepScheduler]:
        scheduler = StepScheduler(span)
        scheduler.start()
        try:
            steps = [(*prefilled(span, f"s{i}", n, seed=i), n) for i, n in enumerate((3, 5))]
            steps.append((Session("new", span.new_cache(), 64, 1), prompt, 0))
            if bad:
                steps.append((Session("bad", span.new_cache(), 64, 1), late, 2))
            return await scheduler.step_group(steps), scheduler  # type: ignore[arg-type]
        finally:
            await scheduler.stop()

    outs, scheduler = asyncio.run(main(bad=False))
    assert scheduler.stats.batch_sizes == {3: 1}  # two decode rows and a prefill, one forward
    for out, want in zip(outs, alone, strict=True):
        assert isinstance(out, torch.Tensor) and out.shape == want.shape
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    outs, scheduler = asyncio.run(main(bad=True))
    assert isinstance(outs[3], ValueError)  # its own error; the others computed all the same
    for out, want in zip(outs[:3], alone, strict=True):
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)


def test_a_mixed_forward_that_fails_midway_falls_back_to_exact_separate_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ragged forward writes some layers' keys, then fails: every step then runs on its
    own, from caches that say nothing was computed, and the next decode agrees too."""
    span = tiny_span()
    g = torch.Generator().manual_seed(11)
    prompt = torch.randn(1, 9, span.hidden_size, generator=g)
    after = torch.randn(3, 1, span.hidden_size, generator=g)
    reference = tiny_span()
    want, caches = [], []
    for i, n in enumerate((3, 5)):
        session, x = prefilled(reference, f"s{i}", n, seed=i)
        want.append(reference.forward(x, session.cache, n))
        caches.append(session.cache)
    caches.append(reference.new_cache())
    want.append(reference.forward(prompt, caches[2], 0))
    want_next = reference.forward_many(after, caches)
    calls = 0
    real = llama_span._mixed_attention

    def failing(*args: object, **kwargs: object) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first layer has written its keys and values, the second too
            raise RuntimeError("out of memory, say")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(llama_span, "_mixed_attention", failing)

    async def main() -> tuple[list[torch.Tensor | BaseException], StepScheduler, list[Session]]:
        scheduler = StepScheduler(span)
        scheduler.start()
        try:
            steps = [(*prefilled(span, f"s{i}", n, seed=i), n) for i, n in enumerate((3, 5))]
            steps.append((Session("new", span.new_cache(), 64, 1), prompt, 0))
            outs = await scheduler.step_group(steps)  # type: ignore[arg-type]
            return outs, scheduler, [s for s, _, _ in steps]  # type: ignore[misc]
        finally:
            await scheduler.stop()

    outs, scheduler, sessions = asyncio.run(main())
    assert calls == 2 and scheduler.stats.ragged_fallbacks == 1
    for out, expected in zip(outs, want, strict=True):
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(llama_span, "_mixed_attention", real)
    got_next = span.forward_many(after, [s.cache for s in sessions])
    torch.testing.assert_close(got_next, want_next, rtol=1e-4, atol=1e-5)
