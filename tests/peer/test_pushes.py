"""The push box pairs a pushed step with the rows the previous hop sends, in either order."""

from __future__ import annotations

import asyncio

import pytest
import torch

from peer import pushes
from peer.pushes import CANCELLED, PushBox
from swarm.wire import BAD_REQUEST, BUSY, WireError


def rows(n: int = 1) -> torch.Tensor:
    return torch.randn(1, n, 8)


def test_rows_pushed_before_or_after_the_step_reach_it() -> None:
    async def main() -> None:
        box = PushBox()
        early = rows()
        box.deliver("s", 1, 5, early, True)  # the push overtook the client's step
        got, finite = await box.take("s", 1, 5, (1, 1))
        assert got is early and finite
        waiting = asyncio.create_task(box.take("s", 2, 6, (1, 1)))
        await asyncio.sleep(0)
        late = rows()
        box.deliver("s", 2, 6, late, False)
        got, finite = await waiting
        assert got is late and not finite
        assert box.entries == {}  # nothing left behind

    asyncio.run(main())


def test_a_cancel_ends_the_wait_and_refuses_a_late_push() -> None:
    async def main() -> None:
        box = PushBox()
        waiting = asyncio.create_task(box.take("s", 1, 0, (1, 1)))
        await asyncio.sleep(0)
        box.cancel("s", 1)
        with pytest.raises(WireError) as cancelled:
            await waiting
        assert cancelled.value.code == CANCELLED
        box.cancel("s", 2)  # before the step arrived: the step fails at once
        with pytest.raises(WireError):
            await box.take("s", 2, 3, (1, 1))
        box.cancel("s", 3)
        with pytest.raises(WireError) as late:
            box.deliver("s", 3, 0, rows(), True)
        assert late.value.code == BAD_REQUEST

    asyncio.run(main())


def test_mismatched_or_repeated_pushes_are_refused() -> None:
    async def main() -> None:
        box = PushBox()
        box.deliver("s", 1, 4, rows(2), True)
        with pytest.raises(WireError) as twice:
            box.deliver("s", 1, 4, rows(2), True)
        assert twice.value.code == BAD_REQUEST
        with pytest.raises(WireError) as moved:
            await box.take("s", 1, 5, (1, 2))  # another position than the pushed rows'
        assert moved.value.code == BAD_REQUEST
        with pytest.raises(WireError):
            await box.take("s", 1, 4, (1, 3))  # another shape

    asyncio.run(main())


def test_the_box_is_bounded_and_waits_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pushes, "MAX_PUSHES", 3)
    monkeypatch.setattr(pushes, "PUSH_WAIT", 0.05)

    async def main() -> None:
        box = PushBox()
        for seq in range(3):
            box.deliver("s", seq, 0, rows(), True)
        with pytest.raises(WireError) as full:
            box.deliver("s", 9, 0, rows(), True)
        assert full.value.code == BUSY
        monkeypatch.setattr(pushes, "PUSH_TTL", 0.0)  # the unpaired ones expire
        await asyncio.sleep(0.01)
        with pytest.raises(WireError) as never:
            await box.take("t", 1, 0, (1, 1))  # nobody pushes: the wait ends
        assert never.value.code == CANCELLED
        assert box.entries == {}

    asyncio.run(main())


def test_rows_wait_for_a_session_not_open_yet_within_a_byte_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A push may overtake its session's open; what waits is bounded in bytes, and a cancel
    frees delivered rows at once (a later step fails fast instead of waiting)."""
    monkeypatch.setattr(pushes, "MAX_PUSH_BYTES", 3 * 8 * 4)  # three rows of 8 fp32

    async def main() -> None:
        box = PushBox()
        for seq in range(3):
            box.deliver("new", seq, 0, rows(), True)
        assert box.held_bytes == 3 * 8 * 4
        with pytest.raises(WireError) as full:
            box.deliver("new", 3, 0, rows(), True)
        assert full.value.code == BUSY
        await box.take("new", 0, 0, (1, 1))
        box.cancel("new", 1)
        assert box.held_bytes == 8 * 4
        with pytest.raises(WireError) as cancelled:
            await box.take("new", 1, 0, (1, 1))
        assert cancelled.value.code == CANCELLED
        box.deliver("new", 3, 0, rows(), True)  # room again

    asyncio.run(main())
