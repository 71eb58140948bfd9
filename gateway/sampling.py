"""Token sampling for the gateway: OpenAI sampling parameters applied to one logits vector.

``SamplingParams`` holds a request's sampling settings (``SamplingParams.from_request``).
``Sampler`` is created per choice and turns the logits of the next position into a token::

    sampler = Sampler(params, choice_index=i)
    tok = sampler.sample(logits, generated_ids)   # logits: [vocab], generated: ids so far

Order of processing (what the returned logprobs describe):

1. ``logit_bias`` is added to the logits; a bias of -100 bans the token outright (-inf),
   +100 makes it all but certain (OpenAI's "exclusive selection").
2. Presence/frequency penalties over the *generated* tokens (OpenAI):
   ``logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty``.
3. Temperature: below 1e-5 (0 included) decoding is greedy (argmax, deterministic) and logprobs
   are ``log_softmax`` of the processed logits (T=1); otherwise logits are divided by T.
4. ``top_k`` then ``top_p`` (nucleus, on the renormalised top-k) truncate the distribution the
   token is drawn from, with the sampler's ``torch.Generator``.

``SampledToken.logprob`` / ``top_logprobs`` come from the distribution after steps 1-3, before
the truncation of step 4 (so they are never -inf for a sampled token). They are clamped to
-9999.0 (OpenAI's value for "very unlikely"), so they always serialise as JSON numbers.

Seeding: the generator of choice ``i`` is seeded with ``(seed + i) mod 2**64``; without a seed a
random one is drawn (see ``Sampler.seed``). Same seed, same logits → same tokens.

Cost per token is a few O(vocab) torch ops; penalties touch only the generated ids, nucleus
sampling sorts only a top window (1024 tokens, widened when it holds less than ``top_p``).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from gateway.errors import invalid_request
from gateway.schemas import ChatCompletionRequest, CompletionRequest

__all__ = [
    "GREEDY_TEMPERATURE",
    "MIN_LOGPROB",
    "SampledToken",
    "Sampler",
    "SamplingParams",
]

#: Temperatures below this decode greedily.
GREEDY_TEMPERATURE = 1e-5
#: Logprobs are clamped to this (OpenAI's "very unlikely").
MIN_LOGPROB = -9999.0
#: A bias at or below this bans the token.
BAN_BIAS = -100.0
_NUCLEUS_WINDOW = 1024
_BLOCK = 1024
_SEED_MOD = 2**64


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of one request (OpenAI defaults when absent)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or negative) = off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, got {self.top_logprobs}")
        if any(token < 0 for token in self.logit_bias):
            raise ValueError("logit_bias token ids must be >= 0")

    @classmethod
    def from_request(cls, request: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
        """From a validated request. Legacy completions' ``logprobs: N`` means logprobs with the
        top N alternatives."""
        if isinstance(request, ChatCompletionRequest):
            logprobs = request.logprobs
            top_logprobs = (request.top_logprobs or 0) if logprobs else 0
        else:
            logprobs = request.logprobs is not None
            top_logprobs = request.logprobs or 0
        return cls(
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=max(0, request.top_k or 0),
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logit_bias=request.logit_bias_ids(),
            seed=request.seed,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )

    @property
    def greedy(self) -> bool:
        """Whether decoding is deterministic argmax (temperature ~0 or top_k == 1)."""
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1

    @property
    def plain_greedy(self) -> bool:
        """Argmax of the raw logits: greedy with no bias, penalty or logprobs to compute."""
        return (
            self.greedy
            and not self.logit_bias
            and not self.presence_penalty
            and not self.frequency_penalty
            and not self.logprobs
        )

    def check_vocab(self, vocab_size: int) -> None:
        """Raise a 400 ``APIError`` (param ``logit_bias``) if a biased id is not in the vocab."""
        for token in self.logit_bias:
            if token >= vocab_size:
                raise invalid_request(
                    f"Invalid value for 'logit_bias': token id {token} is out of range for this "
                    f"model's vocabulary of {vocab_size} tokens.",
                    param="logit_bias",
                )


@dataclass(frozen=True, slots=True)
class SampledToken:
    """A drawn token, its logprob and the ``top_logprobs`` best ``(token_id, logprob)``."""

    token_id: int
    logprob: float
    top_logprobs: list[tuple[int, float]]


class Sampler:
    """Draws the tokens of one choice. Not thread-safe; one per choice."""

    def __init__(self, params: SamplingParams, choice_index: int = 0) -> None:
        self.params = params
        base = params.seed if params.seed is not None else secrets.randbits(64)
        self._seed = (base + choice_index) % _SEED_MOD
        self._generator: torch.Generator | None = None
        self._bias_cache: tuple[int, torch.device, _Bias] | None = None

    @property
    def seed(self) -> int:
        """The generator's seed (drawn at random when the request gave none)."""
        return self._seed

    def _gen(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            # a device change restarts the stream; it does not happen within one generation
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self._seed)
        return self._generator

    def _bias(self, vocab: int, device: torch.device) -> _Bias:
        cached = self._bias_cache
        if cached is not None and cached[0] == vocab and cached[1] == device:
            return cached[2]
        add = [(t, b) for t, b in self.params.logit_bias.items() if t < vocab and b > BAN_BIAS]
        ban = [t for t, b in self.params.logit_bias.items() if t < vocab and b <= BAN_BIAS]
        bias = _Bias(
            add_ids=torch.tensor([t for t, _ in add], dtype=torch.long, device=device),
            add_values=torch.tensor([b for _, b in add], dtype=torch.float32, device=device),
            ban_ids=torch.tensor(ban, dtype=torch.long, device=device),
        )
        self._bias_cache = (vocab, device, bias)
        return bias

    def process(self, logits: torch.Tensor, generated: Sequence[int] = ()) -> torch.Tensor:
        """Logits after bias and penalties (fp32, [vocab]); never modifies ``logits``."""
        x = logits.detach().reshape(-1)
        if x.dtype != torch.float32:
            x = x.float()
        vocab = x.numel()
        p = self.params
        if p.logit_bias:
            bias = self._bias(vocab, x.device)
            if bias.add_ids.numel():
                x = x.index_add(0, bias.add_ids, bias.add_values)
            if bias.ban_ids.numel():
                x = x.index_fill(0, bias.ban_ids, float("-inf"))
        if (p.presence_penalty or p.frequency_penalty) and len(generated):
            ids = torch.as_tensor(generated, dtype=torch.long, device=x.device).reshape(-1)
            ids = ids[(ids >= 0) & (ids < vocab)]
            if ids.numel():
                uniq, counts = torch.unique(ids, return_counts=True)
                penalty = counts.to(torch.float32) * p.frequency_penalty + p.presence_penalty
                x = x.index_add(0, uniq, -penalty)
        return x

    def sample(self, logits: torch.Tensor, generated: Sequence[int] = ()) -> SampledToken:
        """Draw the next token from ``logits`` ([vocab], any float dtype, any device).

        ``generated``: the ids this choice produced so far (for the penalties). Raises
        ``ValueError`` when no token is left (everything banned by ``logit_bias``).
        """
        p = self.params
        x = self.process(logits, generated)
        if p.temperature < GREEDY_TEMPERATURE and not p.logprobs:
            # greedy, no logprob asked: the best token is all there is to find
            (token,), (best,) = argmax_rows(x[None])
            if not math.isfinite(best):
                raise ValueError(f"no token can be sampled: the largest processed logit is {best}")
            return SampledToken(token, 0.0, [])
        if p.temperature < GREEDY_TEMPERATURE and not (p.logprobs and p.top_logprobs > 0):
            # the common greedy case in one device round trip: best value, its index, log Z
            best_value, index = x.max(0)
            stacked = torch.stack([best_value, torch.logsumexp(x, 0), index.to(x.dtype)])
            best, log_z, token_f = stacked.tolist()
            if not math.isfinite(best):
                raise ValueError(f"no token can be sampled: the largest processed logit is {best}")
            return SampledToken(int(token_f), max(MIN_LOGPROB, best - log_z), [])
        best = float(x.amax())
        if not math.isfinite(best):  # all -inf (everything banned), or a NaN/+inf logit
            raise ValueError(f"no token can be sampled: the largest processed logit is {best}")
        if p.temperature < GREEDY_TEMPERATURE:
            logp = torch.log_softmax(x, dim=0)
            token = int(torch.argmax(x))
        else:
            logp = torch.log_softmax(x / p.temperature, dim=0)
            token = self._draw(logp)
        top: list[tuple[int, float]] = []
        if p.logprobs and p.top_logprobs > 0:
            values, ids = torch.topk(logp, min(p.top_logprobs, logp.numel()))
            top = [
                (int(i), max(MIN_LOGPROB, float(v)))
                for i, v in zip(ids.tolist(), values.tolist(), strict=True)
            ]
        return SampledToken(token, max(MIN_LOGPROB, float(logp[token])), top)

    def _draw(self, logp: torch.Tensor) -> int:
        vocab = logp.numel()
        p = self.params
        gen = self._gen(logp.device)
        if 0 < p.top_k < vocab:
            values, ids = torch.topk(logp, p.top_k)  # sorted, descending
            probs = torch.softmax(values, dim=0)
            if p.top_p < 1.0:
                keep = _nucleus_size(probs, p.top_p)
                probs, ids = probs[:keep], ids[:keep]
        elif p.top_p < 1.0:
            window = _NUCLEUS_WINDOW
            while True:
                values, ids = torch.topk(logp, min(window, vocab))
                probs = values.exp()
                if window >= vocab or float(probs.sum()) >= p.top_p:
                    break
                window *= 8
            keep = _nucleus_size(probs, p.top_p)
            probs, ids = probs[:keep], ids[:keep]
        else:
            probs, ids = logp.exp(), None
        j = _draw_index(probs, gen)
        return j if ids is None else int(ids[j])


@dataclass(frozen=True, slots=True)
class _Bias:
    add_ids: torch.Tensor
    add_values: torch.Tensor
    ban_ids: torch.Tensor


def argmax_rows(logits: torch.Tensor) -> tuple[list[int], list[float]]:
    """The best token of each row of `logits[rows, vocab]` and its logit."""
    if logits.device.type == "cpu":  # numpy's argmax is ~20x torch's on CPU
        rows = logits.float().numpy()
        picks = rows.argmax(axis=-1)
        best = rows[np.arange(rows.shape[0]), picks]
        return picks.tolist(), best.tolist()
    top, picks = logits.float().max(dim=-1)
    values, ids = torch.stack([top, picks.float()]).tolist()  # one copy to the host
    return [int(i) for i in ids], values


def _draw_index(weights: torch.Tensor, gen: torch.Generator) -> int:
    """Index drawn with probability proportional to ``weights`` (>= 0, not all 0).

    Inverse CDF in two levels: block sums (one vectorised pass), then float64 cumulative sums
    over the blocks and within the chosen block. Several times cheaper on CPU than
    ``torch.multinomial`` or a float64 ``cumsum`` over a large vocabulary; zero weights are
    never drawn.
    """
    u = float(torch.rand(1, generator=gen, device=weights.device, dtype=torch.float64))
    n = weights.numel()
    if n <= _BLOCK:
        return _locate(weights, u * float(weights.sum(dtype=torch.float64)))[0]
    full = n // _BLOCK
    sums = weights[: full * _BLOCK].view(full, _BLOCK).sum(dim=1)
    if full * _BLOCK < n:
        sums = torch.cat([sums, weights[full * _BLOCK :].sum().reshape(1)])
    target = u * float(sums.sum(dtype=torch.float64))
    block, before = _locate(sums, target)
    start = block * _BLOCK
    return start + _locate(weights[start : start + _BLOCK], target - before)[0]


def _locate(weights: torch.Tensor, target: float) -> tuple[int, float]:
    """First index whose float64 cumulative weight exceeds ``target`` (the last non-zero one
    if rounding put ``target`` past the total), and the cumulative weight before it."""
    cdf = torch.cumsum(weights, dim=0, dtype=torch.float64)
    point = torch.tensor([target], dtype=torch.float64, device=weights.device)
    i = int(torch.searchsorted(cdf, point, right=True))
    if i >= weights.numel():
        i = int(torch.nonzero(weights).max())
    return i, float(cdf[i - 1]) if i > 0 else 0.0


def _nucleus_size(sorted_probs: torch.Tensor, top_p: float) -> int:
    """How many of the descending ``sorted_probs`` make the smallest prefix of mass >= top_p."""
    before = torch.cumsum(sorted_probs, dim=0) - sorted_probs
    return max(1, int((before < top_p).sum()))
