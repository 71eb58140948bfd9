"""oneDNN's packed kernel for a CPU linear layer of several rows gives F.linear's results."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from swarm.cpu_linear import PACKED_FROM_ROWS, RowsLinear, packed_linear_available

pytestmark = pytest.mark.skipif(not packed_linear_available(), reason="no oneDNN in this torch")


@pytest.mark.parametrize("bias", [False, True])
def test_rows_linear_matches_f_linear_for_any_number_of_rows(bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 64, generator=gen) * 0.1
    b = torch.randn(1000, generator=gen) if bias else None
    layer = RowsLinear(weight, b)
    for rows in (1, PACKED_FROM_ROWS - 1, PACKED_FROM_ROWS, 8, 33):
        x = torch.randn(rows, 1, 64, generator=gen)  # [rows, positions, hidden], as a head gets
        expected = F.linear(x, weight, b)
        got = layer(x)
        assert got.shape == expected.shape == (rows, 1, 1000)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_rows_linear_takes_fp32_cpu_weights_only() -> None:
    with pytest.raises(ValueError, match="fp32 CPU"):
        RowsLinear(torch.zeros(4, 4, dtype=torch.bfloat16))
