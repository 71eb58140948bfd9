"""oneDNN's packed kernel for a CPU linear layer gives F.linear's results, at any row count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from swarm.cpu_linear import PackedLinear, pack_linears, packed, packed_linear_available

pytestmark = pytest.mark.skipif(not packed_linear_available(), reason="no oneDNN in this torch")


@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_f_linear_for_any_number_of_rows(bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 64, generator=gen) * 0.1
    b = torch.randn(1000, generator=gen) if bias else None
    linear = nn.Linear(64, 1000, bias=bias)
    linear.weight.data, linear.bias = weight, None if b is None else nn.Parameter(b)
    layer = PackedLinear(linear)
    for rows in (1, 2, 4, 8, 33):
        x = torch.randn(rows, 1, 64, generator=gen)  # [rows, positions, hidden], as a head gets
        expected = F.linear(x, weight, b)
        got = layer(x)
        assert got.shape == expected.shape == (rows, 1, 1000)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_pack_linears_swaps_fp32_linears_and_keeps_their_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 96), nn.SiLU(), nn.Sequential(nn.Linear(96, 32, bias=False))
    )
    half = nn.Linear(8, 8).to(torch.bfloat16)  # not fp32: left alone
    model.append(half)
    x = torch.randn(5, 3, 64)
    with torch.inference_mode():
        expected = model[:3](x)
        assert pack_linears(model) == 2
        assert isinstance(model[0], PackedLinear) and isinstance(model[2][0], PackedLinear)
        assert model[3] is half
        got = model[:3](x)
        assert got.shape == expected.shape == (5, 3, 32)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
        one_row = model[:3](x[:1, :1])  # a decode step's single row takes the packed path too
        assert torch.allclose(one_row, expected[:1, :1], rtol=1e-5, atol=1e-5)
    assert model[0].weight_bytes() == (64 * 96 + 96) * 4
    assert not list(model[0].parameters())  # the unpacked weight is not kept


def test_packed_linear_takes_fp32_cpu_weights_only() -> None:
    with pytest.raises(ValueError, match="fp32 CPU"):
        PackedLinear(nn.Linear(4, 4).to(torch.bfloat16))


def test_a_packed_linear_refuses_to_be_moved_or_cast() -> None:
    layer = PackedLinear(nn.Linear(4, 4))
    with pytest.raises(RuntimeError, match="cannot be moved or cast"):
        layer.to(torch.float64)


def test_a_head_tied_to_its_embeddings_packs_beside_the_weight_they_keep() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 1, 16)
    tied, embeddings = nn.Linear(16, 50, bias=False), nn.Embedding(50, 16)
    embeddings.weight = tied.weight  # tied: the embeddings still need the plain weight
    head = packed(tied)
    assert isinstance(head, PackedLinear) and not list(head.parameters())
    assert torch.allclose(head(x), tied(x).detach(), rtol=1e-5, atol=1e-5)
    assert embeddings(torch.tensor([3]))[0].equal(tied.weight[3])  # the embeddings still work

    half = nn.Linear(16, 50).to(torch.bfloat16)
    assert packed(half) is half
