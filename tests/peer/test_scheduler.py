"""The step scheduler: steps submitted as a group batch like single steps, and a stopped
scheduler fails what it was given (no waiter hangs)."""

from __future__ import annotations

import asyncio
import threading

import torch

from peer.scheduler import StepScheduler
from peer.sessions import Session
from swarm import event_loop
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


def test_the_gather_window_sleeps_rather_than_spins_on_uvloop() -> None:
    """uvloop's timers have a 1 ms grain: a 2 ms window (a GPU peer's) polled every window/8
    used to return from each sleep at once and look ~1000 times; it waits the window out in a
    few sleeps and no longer than the window."""
    looks = 0

    def active() -> int:
        nonlocal looks
        looks += 1
        return 2  # two sessions decode, no step ever queued: the window runs out

    async def main() -> float:
        scheduler = StepScheduler(tiny_span(), window=0.002, active=active)
        began = asyncio.get_running_loop().time()
        await scheduler._gather_window()
        return asyncio.get_running_loop().time() - began

    assert event_loop.loop_factory() is not None  # uvloop is there (a dependency)
    waited = event_loop.run(main())
    assert looks <= 4
    assert waited < 0.1  # bounded (not a speed check: the window itself is 2 ms)
