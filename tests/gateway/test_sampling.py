"""Properties of gateway.sampling: greedy, seeding, top-k/top-p, bias, penalties, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from gateway.errors import APIError
from gateway.sampling import MIN_LOGPROB, Sampler, SamplingParams
from gateway.schemas import ChatCompletionRequest, CompletionRequest

VOCAB = 5000


def logits_for(seed: int, vocab: int = VOCAB, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, generator=g) * scale


def draw(params: SamplingParams, steps: int = 30, choice: int = 0, vocab: int = VOCAB) -> list[int]:
    sampler = Sampler(params, choice)
    return [sampler.sample(logits_for(i, vocab)).token_id for i in range(steps)]


def test_greedy_is_argmax() -> None:
    plain = Sampler(SamplingParams(temperature=0.0))
    with_logprob = Sampler(SamplingParams(temperature=0.0, logprobs=True))
    for i in range(20):
        logits = logits_for(i)
        assert plain.sample(logits).token_id == int(torch.argmax(logits))
        out = with_logprob.sample(logits)  # the logprob is computed only when asked for
        assert out.token_id == int(torch.argmax(logits))
        assert out.logprob == pytest.approx(
            float(torch.log_softmax(logits, 0)[out.token_id]), abs=1e-5
        )


def test_greedy_ignores_seed() -> None:
    a = draw(SamplingParams(temperature=0.0, seed=1))
    b = draw(SamplingParams(temperature=0.0, seed=2), choice=3)
    assert a == b


def test_does_not_modify_logits() -> None:
    logits = logits_for(0)
    before = logits.clone()
    params = SamplingParams(
        logit_bias={1: 5.0, 2: -100.0}, presence_penalty=1.0, frequency_penalty=1.0
    )
    Sampler(params).sample(logits, [1, 1, 3])
    assert torch.equal(logits, before)


def test_same_seed_same_tokens() -> None:
    params = SamplingParams(temperature=1.0, seed=1234)
    assert draw(params) == draw(params)
    nucleus = SamplingParams(temperature=0.8, top_p=0.9, top_k=100, seed=5)
    assert draw(nucleus) == draw(nucleus)


def test_different_seeds_and_choices_differ() -> None:
    a = draw(SamplingParams(temperature=1.0, seed=1))
    b = draw(SamplingParams(temperature=1.0, seed=2))
    c = draw(SamplingParams(temperature=1.0, seed=1), choice=1)
    assert a != b
    assert a != c


def test_no_seed_is_random() -> None:
    params = SamplingParams(temperature=1.0)
    assert Sampler(params).seed != Sampler(params).seed
    assert draw(params) != draw(params)


def test_seed_mixes_choice_index() -> None:
    assert Sampler(SamplingParams(seed=10), 3).seed == 13
    assert Sampler(SamplingParams(seed=2**64 - 1), 1).seed == 0


def test_top_k_one_is_greedy() -> None:
    greedy = draw(SamplingParams(temperature=0.0))
    assert draw(SamplingParams(temperature=1.5, top_k=1, seed=3)) == greedy


def test_tiny_top_p_is_greedy() -> None:
    greedy = draw(SamplingParams(temperature=0.0))
    assert draw(SamplingParams(temperature=1.5, top_p=1e-6, seed=3)) == greedy
    assert draw(SamplingParams(temperature=1.0, top_p=1e-6, top_k=50, seed=3)) == greedy


def test_top_k_restricts_support() -> None:
    logits = logits_for(7)
    allowed = set(torch.topk(logits, 5).indices.tolist())
    sampler = Sampler(SamplingParams(temperature=2.0, top_k=5, seed=0))
    seen = {sampler.sample(logits).token_id for _ in range(300)}
    assert seen <= allowed
    assert len(seen) > 1


@pytest.mark.parametrize("vocab", [50, 5000])
def test_top_p_restricts_support(vocab: int) -> None:
    logits = logits_for(8, vocab, scale=3.0)
    probs = torch.softmax(logits, 0)
    order = torch.argsort(probs, descending=True)
    cum = torch.cumsum(probs[order], 0)
    size = int((cum - probs[order] < 0.5).sum())
    allowed = set(order[:size].tolist())
    sampler = Sampler(SamplingParams(top_p=0.5, seed=0))
    seen = {sampler.sample(logits).token_id for _ in range(300)}
    assert seen <= allowed
    assert len(seen) > 1


def test_top_p_large_nucleus_needs_wide_window() -> None:
    # a flat distribution: the nucleus holds most of the vocabulary
    logits = torch.zeros(4096)
    logits[:4] = 1.0
    sampler = Sampler(SamplingParams(top_p=0.99, seed=0))
    seen = {sampler.sample(logits).token_id for _ in range(300)}
    assert max(seen) > 1024


def test_sampling_follows_distribution() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    sampler = Sampler(SamplingParams(seed=0))
    counts = torch.bincount(
        torch.tensor([sampler.sample(logits).token_id for _ in range(3000)]), minlength=3
    )
    freq = counts.float() / counts.sum()
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.04)


def test_sampling_large_vocab_follows_distribution() -> None:
    # tokens spread over several blocks of the two-level draw
    vocab = 10_000
    logits = torch.full((vocab,), -1e9)
    picks = torch.tensor([3, 1500, 4095, 9999])
    logits[picks] = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    sampler = Sampler(SamplingParams(seed=1))
    drawn = torch.tensor([sampler.sample(logits).token_id for _ in range(3000)])
    assert set(drawn.tolist()) <= set(picks.tolist())
    freq = torch.stack([(drawn == p).float().mean() for p in picks])
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.04)


def test_low_temperature_sharpens() -> None:
    logits = torch.log(torch.tensor([0.4, 0.35, 0.25]))
    sampler = Sampler(SamplingParams(temperature=0.05, seed=0))
    tokens = [sampler.sample(logits).token_id for _ in range(200)]
    assert tokens.count(0) > 190


def test_logit_bias_ban_and_force() -> None:
    for i in range(10):
        logits = logits_for(i)
        top = int(torch.argmax(logits))
        banned = Sampler(SamplingParams(temperature=0.0, logit_bias={top: -100.0})).sample(logits)
        assert banned.token_id != top
    forced = draw(SamplingParams(temperature=1.0, seed=3, logit_bias={42: 100.0}))
    assert forced == [42] * len(forced)
    sampler = Sampler(
        SamplingParams(temperature=2.0, seed=3, logit_bias={t: -100.0 for t in range(10, VOCAB)})
    )
    assert all(sampler.sample(logits_for(i)).token_id < 10 for i in range(50))


def test_logit_bias_out_of_vocab_is_ignored_and_checked() -> None:
    params = SamplingParams(temperature=0.0, logit_bias={VOCAB + 5: 100.0})
    logits = logits_for(0)
    assert Sampler(params).sample(logits).token_id == int(torch.argmax(logits))
    with pytest.raises(APIError) as info:
        params.check_vocab(VOCAB)
    assert info.value.param == "logit_bias" and info.value.status == 400
    SamplingParams(logit_bias={VOCAB - 1: 1.0}).check_vocab(VOCAB)


def test_everything_banned_raises() -> None:
    params = SamplingParams(logit_bias={t: -100.0 for t in range(10)})
    with pytest.raises(ValueError):
        Sampler(params).sample(torch.zeros(10))


def test_penalties_lower_repeated_tokens() -> None:
    logits = torch.zeros(10)
    logits[3] = 2.0
    generated = [3, 3, 3, 5]
    base = Sampler(SamplingParams()).process(logits, generated)
    assert torch.equal(base, logits)
    freq = Sampler(SamplingParams(frequency_penalty=0.5)).process(logits, generated)
    assert float(freq[3]) == pytest.approx(2.0 - 1.5)
    assert float(freq[5]) == pytest.approx(-0.5)
    assert float(freq[0]) == 0.0
    pres = Sampler(SamplingParams(presence_penalty=0.7)).process(logits, generated)
    assert float(pres[3]) == pytest.approx(2.0 - 0.7)
    assert float(pres[5]) == pytest.approx(-0.7)
    # negative penalties encourage repetition
    neg = Sampler(SamplingParams(frequency_penalty=-1.0)).process(logits, generated)
    assert float(neg[5]) == pytest.approx(1.0)


def test_penalties_change_greedy_choice() -> None:
    logits = torch.tensor([1.0, 0.9, 0.0])
    plain = Sampler(SamplingParams(temperature=0.0)).sample(logits, [0, 0])
    assert plain.token_id == 0
    penalised = Sampler(SamplingParams(temperature=0.0, presence_penalty=0.5)).sample(
        logits, [0, 0]
    )
    assert penalised.token_id == 1


def test_logprobs_shape_and_values() -> None:
    logits = logits_for(11)
    params = SamplingParams(temperature=0.7, seed=0, logprobs=True, top_logprobs=5)
    out = Sampler(params).sample(logits)
    expected = torch.log_softmax(logits / 0.7, 0)
    assert len(out.top_logprobs) == 5
    ids = [t for t, _ in out.top_logprobs]
    values = [lp for _, lp in out.top_logprobs]
    assert ids == torch.topk(expected, 5).indices.tolist()
    assert values == sorted(values, reverse=True)
    assert all(v <= 0.0 for v in values)
    assert out.logprob == pytest.approx(float(expected[out.token_id]), abs=1e-5)
    assert math.fsum(math.exp(v) for v in values) <= 1.0 + 1e-6
    assert float(torch.logsumexp(expected, 0)) == pytest.approx(0.0, abs=1e-5)


def test_logprobs_off_and_clamped() -> None:
    assert Sampler(SamplingParams(seed=0)).sample(logits_for(0)).top_logprobs == []
    logits = torch.tensor([0.0, -1e6, -1e6])
    out = Sampler(SamplingParams(temperature=0.0, logprobs=True, top_logprobs=3)).sample(logits)
    assert [lp for _, lp in out.top_logprobs][1:] == [MIN_LOGPROB, MIN_LOGPROB]
    banned = SamplingParams(temperature=0.0, logprobs=True, top_logprobs=3, logit_bias={1: -100.0})
    assert all(math.isfinite(lp) for _, lp in Sampler(banned).sample(logits).top_logprobs)


def test_accepts_other_dtypes_and_shapes() -> None:
    logits = logits_for(3)
    out = Sampler(SamplingParams(temperature=0.0)).sample(logits.to(torch.bfloat16).reshape(1, -1))
    assert out.token_id == int(torch.argmax(logits.to(torch.bfloat16)))


def test_from_requests() -> None:
    chat = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "temperature": 0.3,
            "top_k": -1,
            "seed": 9,
            "logit_bias": {"4": -2},
            "logprobs": True,
            "top_logprobs": 3,
        }
    )
    p = SamplingParams.from_request(chat)
    assert (p.temperature, p.top_p, p.top_k, p.seed) == (0.3, 1.0, 0, 9)
    assert (p.logprobs, p.top_logprobs, dict(p.logit_bias)) == (True, 3, {4: -2.0})
    default = SamplingParams.from_request(
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        )
    )
    assert default == SamplingParams()
    legacy = SamplingParams.from_request(
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "logprobs": 2})
    )
    assert (legacy.logprobs, legacy.top_logprobs) == (True, 2)
    legacy0 = SamplingParams.from_request(
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "logprobs": 0})
    )
    assert (legacy0.logprobs, legacy0.top_logprobs) == (True, 0)
    assert not SamplingParams.from_request(
        CompletionRequest.model_validate({"model": "m", "prompt": "x"})
    ).logprobs


def test_invalid_params_rejected() -> None:
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1.0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
