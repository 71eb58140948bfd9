"""`swarmgate generate`: a chat reply computed by chaining spans in one process (no network).

A demonstration and a smoke test of split inference: the model is cut into `--spans` spans,
the head embeds the prompt, hidden states flow through every span, and the head samples.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Iterator, Sequence

import torch

from swarm.blocks import Span
from swarm.head import Head
from swarm.logs import quiet_third_party_logs
from swarm.models import DEFAULT_MODEL, load_weights


def even_bounds(num_blocks: int, parts: int) -> list[tuple[int, int]]:
    """Split [0, num_blocks) into `parts` contiguous spans of near-equal size."""
    if not 1 <= parts <= num_blocks:
        raise ValueError(f"cannot split {num_blocks} blocks into {parts} spans")
    edges = [round(i * num_blocks / parts) for i in range(parts + 1)]
    return list(itertools.pairwise(edges))


def generate_greedy(
    head: Head, spans: Sequence[Span], prompt_ids: Sequence[int], max_new_tokens: int
) -> Iterator[int]:
    """Yield greedy tokens, stopping at EOS or after `max_new_tokens`."""
    caches = [span.new_cache() for span in spans]
    inputs = torch.tensor([list(prompt_ids)])
    eos = head.eos_token_ids
    for _ in range(max_new_tokens):
        hidden = head.embed(inputs)
        for span, cache in zip(spans, caches, strict=True):
            hidden = span.forward(hidden, cache)
        token = int(head.logits(hidden[:, -1:])[0, -1].argmax())
        if token in eos:
            return
        yield token
        inputs = torch.tensor([[token]])


def run(args: argparse.Namespace) -> int:
    quiet_third_party_logs()
    weights = load_weights(args.model)
    head = Head(weights)
    spans = [Span(weights, a, b) for a, b in even_bounds(weights.num_blocks, args.spans)]
    if head.chat_template:
        prompt_ids = head.encode_chat([{"role": "user", "content": args.prompt}])
    else:
        prompt_ids = head.encode_text(args.prompt)
    started = time.monotonic()
    tokens: list[int] = []
    printed = ""
    for token in generate_greedy(head, spans, prompt_ids, args.max_tokens):
        tokens.append(token)
        text = head.decode(tokens)
        sys.stdout.write(text[len(printed) :])
        sys.stdout.flush()
        printed = text
    elapsed = time.monotonic() - started
    sys.stdout.write("\n")
    bounds = ", ".join(f"[{s.start}, {s.end})" for s in spans)
    print(
        f"-- {len(tokens)} tokens in {elapsed:.2f} s through spans {bounds}",
        file=sys.stderr,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="generate locally through chained spans")
    parser.add_argument("prompt")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--spans", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.set_defaults(func=run)
