"""`InferenceSession.start` with `on_first_hop`: later hops are opened beside the first hop's
round, and the caller hears the chain took the request only once every hop took the session."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest
import torch

from swarm.rounds import Channels
from swarm.session import Hop, InferenceSession
from swarm.wire import WireError

BUSY = "busy"


class FakeChannel:
    """A peer that adds 1 to its rows; its opens may fail; it logs every call."""

    def __init__(
        self, name: str, log: list[str], refuse_open: bool, step_gate: asyncio.Event
    ) -> None:
        self.name, self.log, self.refuse_open, self.step_gate = name, log, refuse_open, step_gate

    async def call(
        self,
        header: dict[str, Any],
        rows: torch.Tensor | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        kind = header["type"]
        self.log.append(f"{self.name}.{kind}")
        if on_sent is not None:
            on_sent()
        await asyncio.sleep(0)
        if kind == "open":
            if self.refuse_open:
                raise WireError(BUSY, f"{self.name} has no room")
            return {"length": 0}, None
        if kind == "step":
            await self.step_gate.wait()
            assert rows is not None
            self.log.append(f"{self.name}.stepped")
            return {"seq": header["seq"]}, rows + 1
        return {}, None  # close


class FakeChannels:
    def __init__(self, channels: dict[str, FakeChannel]) -> None:
        self.channels = channels

    def get(self, peer_id: str, addrs: Any = ()) -> FakeChannel:
        return self.channels[peer_id]


def session(log: list[str], refuse: str = "") -> tuple[InferenceSession, asyncio.Event]:
    gate = asyncio.Event()
    channels = {name: FakeChannel(name, log, name == refuse, gate) for name in ("a", "b", "c")}
    route = [Hop("a", 0, 2), Hop("b", 2, 4), Hop("c", 4, 6)]
    fake = cast(Channels, FakeChannels(channels))
    return InferenceSession(None, "m", route, max_length=8, channels=fake), gate  # type: ignore[arg-type]


def test_later_hops_open_beside_the_first_round_and_the_caller_hears_after() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        s, gate = session(log)
        started = asyncio.ensure_future(
            s.start(torch.zeros(1, 3, 4), on_first_hop=lambda: log.append("routed"))
        )
        await asyncio.sleep(0.01)
        # before the first hop computed anything, every hop was opened
        assert {"a.open", "b.open", "c.open"} <= set(log) and "routed" not in log
        gate.set()
        out = await started
        assert torch.equal(out, torch.full((1, 3, 4), 3.0))  # three hops, +1 each
        return log

    log = asyncio.run(main())
    assert log.count("routed") == 1
    # heard once the first hop answered and the second hop's step went out
    assert log.index("a.stepped") < log.index("b.step") < log.index("routed")
    assert log.index("routed") < log.index("b.stepped")


def test_a_later_hop_refusing_its_open_fails_the_start_before_the_caller_hears() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        s, gate = session(log, refuse="c")
        gate.set()
        with pytest.raises(WireError):
            await s.start(torch.zeros(1, 3, 4), on_first_hop=lambda: log.append("routed"))
        return log

    log = asyncio.run(main())
    assert "routed" not in log and "b.step" not in log
    assert {"a.close", "b.close", "c.close"} <= set(log)  # every hop it reached is closed


def test_without_the_callback_hops_open_one_by_one() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        s, gate = session(log)
        gate.set()
        await s.start(torch.zeros(1, 3, 4))
        return log

    log = asyncio.run(main())
    assert log.index("a.stepped") < log.index("b.open")
