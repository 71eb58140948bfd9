"""Block selection: joining where the swarm is weakest, moving only for a clear gain."""

from __future__ import annotations

from peer.selection import ServedSpan, better_start, block_throughputs, bottleneck, choose_start


def join(
    num_blocks: int, spans: list[ServedSpan], name: str, length: int, tput: float = 10.0
) -> list[ServedSpan]:
    start = choose_start(num_blocks, spans, length)
    return [*spans, ServedSpan(name, start, start + length, tput)]


def test_sequential_joins_tile_the_model_without_holes() -> None:
    spans: list[ServedSpan] = []
    for name in "abc":
        spans = join(30, spans, name, 12)
    assert [(s.start, s.end) for s in spans] == [(0, 12), (12, 24), (18, 30)]
    assert min(block_throughputs(30, spans)) > 0


def test_newcomer_joins_the_weakest_blocks() -> None:
    spans = [
        ServedSpan("a", 0, 15, 50.0),
        ServedSpan("b", 15, 30, 5.0),
        ServedSpan("c", 0, 10, 50.0),
    ]
    start = choose_start(30, spans, 10)
    assert 15 <= start <= 20  # inside the slow peer's span


def test_a_redundant_peer_moves_to_cover_a_hole() -> None:
    spans = [ServedSpan("a", 0, 10, 10), ServedSpan("b", 0, 10, 10), ServedSpan("c", 10, 20, 10)]
    assert bottleneck(30, spans) == 0
    assert better_start(30, spans, "b") == 20
    assert better_start(30, spans, "c") is None  # leaving would uncover blocks 10..19 for nothing


def test_moves_need_a_clear_gain() -> None:
    # a:[0,10)=10, b:[10,20)=10, c:[0,10)=10 and d:[10,20)=11: moving c or d to join the
    # other side raises nothing at all (the bottleneck is the weaker side)
    spans = [
        ServedSpan("a", 0, 10, 10),
        ServedSpan("b", 10, 20, 10),
        ServedSpan("c", 0, 10, 10),
        ServedSpan("d", 10, 20, 11),
    ]
    assert better_start(20, spans, "c") is None
    # a slow second half with a spare fast peer on the first half: moving it doubles the bottleneck
    spans = [ServedSpan("a", 0, 10, 10), ServedSpan("b", 10, 20, 5), ServedSpan("c", 0, 10, 10)]
    assert better_start(20, spans, "c") == 10
    # a slow spare moving over would gain nothing (the first half would drop to 10)
    spans = [ServedSpan("a", 0, 10, 10), ServedSpan("b", 10, 20, 10), ServedSpan("c", 0, 10, 1)]
    assert better_start(20, spans, "c") is None
