"""Checks of step inputs shared by peers (`swarm.protocol`)."""

from __future__ import annotations

import pytest
import torch

from swarm.protocol import all_finite, check_hidden
from swarm.wire import WireError


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_finite_finds_every_nan_and_infinity(dtype: torch.dtype) -> None:
    rows = torch.randn(4, 9).to(dtype)
    assert all_finite(rows) and all_finite(rows.t())  # non-contiguous too
    assert all_finite(torch.tensor([torch.finfo(dtype).max, torch.finfo(dtype).min], dtype=dtype))
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = rows.clone()
        broken[2, 5] = bad
        assert not all_finite(broken)
        assert not all_finite(broken[2:3]) and all_finite(broken[3:])


def test_check_hidden_refuses_non_finite_rows() -> None:
    hidden = torch.zeros(1, 2, 8, dtype=torch.bfloat16)
    assert check_hidden([hidden], 8, 1) is hidden
    hidden[0, 1, 3] = float("nan")
    with pytest.raises(WireError, match="NaN"):
        check_hidden([hidden], 8, 1)
