"""Block selection: where a new peer joins, and when an existing one should move.

Throughput of a block = the sum of the throughputs of the peers serving it; the swarm's
throughput is its bottleneck, the weakest block. A joining peer takes the window of consecutive
blocks whose sorted throughputs are lexicographically smallest: it lands where the swarm is
weakest (uncovered blocks first). A serving peer moves only when, after simulating its own
departure and re-placement, the bottleneck rises by a clear margin, and never when its leaving
would uncover a block nobody else serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ServedSpan:
    peer_id: str
    start: int
    end: int
    throughput: float


def block_throughputs(num_blocks: int, spans: Sequence[ServedSpan]) -> list[float]:
    totals = [0.0] * num_blocks
    for span in spans:
        for index in range(max(0, span.start), min(num_blocks, span.end)):
            totals[index] += span.throughput
    return totals


def bottleneck(num_blocks: int, spans: Sequence[ServedSpan]) -> float:
    return min(block_throughputs(num_blocks, spans), default=0.0)


def choose_start(num_blocks: int, spans: Sequence[ServedSpan], length: int) -> int:
    """Start of the weakest window of `length` blocks.

    Ties (e.g. several windows of uncovered blocks) go to a window that touches existing
    coverage, or the model's first block, so that spans tile the model without leaving
    holes too short for anybody's window; then to the lowest start.
    """
    if not 1 <= length <= num_blocks:
        raise ValueError(f"cannot place {length} blocks in a model of {num_blocks}")
    totals = block_throughputs(num_blocks, spans)
    keys = [sorted(totals[s : s + length]) for s in range(num_blocks - length + 1)]
    best = min(keys)
    candidates = [s for s, key in enumerate(keys) if key == best]

    def touches(start: int) -> bool:
        end = start + length
        left = start == 0 or totals[start - 1] > 0
        right = end == num_blocks or totals[end] > 0
        return left or right

    touching = [s for s in candidates if touches(s)]
    return (touching or candidates)[0]


def uncovered_without(num_blocks: int, spans: Sequence[ServedSpan], peer_id: str) -> bool:
    """Would some block of `peer_id`'s span lose its last server if that peer left?"""
    mine = [s for s in spans if s.peer_id == peer_id]
    others = [s for s in spans if s.peer_id != peer_id]
    covered = [False] * num_blocks
    for span in others:
        for index in range(span.start, span.end):
            covered[index] = True
    return any(not covered[i] for span in mine for i in range(span.start, span.end))


def better_start(
    num_blocks: int,
    spans: Sequence[ServedSpan],
    peer_id: str,
    min_gain: float = 1.25,
) -> int | None:
    """Where `peer_id` should move to, or None to stay.

    It moves when the bottleneck after moving is at least `min_gain` times the current one (or
    positive where it is now zero), and its departure uncovers no block that others do not serve.
    """
    mine = next((s for s in spans if s.peer_id == peer_id), None)
    if mine is None:
        return None
    others = [s for s in spans if s.peer_id != peer_id]
    current = bottleneck(num_blocks, spans)
    length = mine.end - mine.start
    start = choose_start(num_blocks, others, length)
    if start == mine.start:
        return None
    moved = [*others, ServedSpan(peer_id, start, start + length, mine.throughput)]
    after = bottleneck(num_blocks, moved)
    if current > 0 and uncovered_without(num_blocks, spans, peer_id):
        return None
    if (current == 0 and after > 0) or (current > 0 and after >= current * min_gain):
        return start
    return None
