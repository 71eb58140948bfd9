"""A session's per-hop input history: appends, rollbacks and the replay tensor."""

from __future__ import annotations

import torch

from swarm.session import _History


def test_history_follows_steps_and_rollbacks() -> None:
    full = torch.arange(10.0).reshape(1, 10, 1)
    history = _History()
    history.record(full[:, :6], 0)
    history.record(full[:, 6:7], 6)
    history.record(full[:, 7:9], 7)
    assert torch.equal(history.upto(9), full[:, :9])  # type: ignore[arg-type]
    history.record(full[:, 4:6] + 100, 4)  # roll back to 4, then two new positions
    expected = torch.cat([full[:, :4], full[:, 4:6] + 100], dim=1)
    assert history.length == 6
    assert torch.equal(history.upto(6), expected)  # type: ignore[arg-type]
    assert torch.equal(history.upto(5), expected[:, :5])  # type: ignore[arg-type]
    history.record(full[:, :3], 0)
    assert history.length == 3 and len(history.chunks) == 1
    assert _History().upto(4) is None
