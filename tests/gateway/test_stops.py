"""Properties of gateway.stops.StopMatcher over randomly split streams."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.stops import StopMatcher

# a small alphabet makes partial and overlapping matches frequent
ALPHABET = "ab\n"
texts = st.text(alphabet=ALPHABET, max_size=40)
stop_lists = st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=5), max_size=4)


def reference(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text cut where the stop that completes first starts (ties: the earliest start)."""
    best: tuple[int, int] | None = None
    for stop in stops:
        start = text.find(stop)
        if start >= 0 and (best is None or (start + len(stop), start) < best):
            best = (start + len(stop), start)
    return (text, False) if best is None else (text[: best[1]], True)


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(c, len(text)) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(text[last:p])
        last = p
    pieces.append(text[last:])
    return pieces


def run(pieces: list[str], stops: list[str]) -> tuple[str, bool, list[str]]:
    matcher = StopMatcher(stops)
    out: list[str] = []
    hit = False
    for piece in pieces:
        emitted, hit = matcher.feed(piece)
        out.append(emitted)
        if hit:
            break
    if not hit:
        out.append(matcher.flush())
    return "".join(out), hit, out


@settings(max_examples=400, deadline=None)
@given(text=texts, stops=stop_lists, cuts=st.lists(st.integers(0, 40), max_size=10))
def test_matches_reference_for_any_split(text: str, stops: list[str], cuts: list[int]) -> None:
    emitted, hit, _ = run(split(text, cuts), stops)
    assert (emitted, hit) == reference(text, stops)


@settings(max_examples=200, deadline=None)
@given(text=texts, stops=stop_lists)
def test_character_by_character(text: str, stops: list[str]) -> None:
    emitted, hit, _ = run(list(text), stops)
    assert (emitted, hit) == reference(text, stops)


@settings(max_examples=200, deadline=None)
@given(text=texts, stops=stop_lists, cuts=st.lists(st.integers(0, 40), max_size=10))
def test_emitted_never_contains_a_stop(text: str, stops: list[str], cuts: list[int]) -> None:
    emitted, _, pieces = run(split(text, cuts), stops)
    assert not any(stop in emitted for stop in stops)
    # every emitted piece is final: prefixes of the output only grow
    assert text.startswith(emitted)
    assert "".join(pieces) == emitted


def test_holds_back_possible_prefix() -> None:
    m = StopMatcher(["</s>"])
    assert m.feed("Hello <") == ("Hello ", False)
    assert m.held == "<"
    assert m.feed("/") == ("", False)
    assert m.feed("b>") == ("</b>", False)
    assert m.feed(" end</") == (" end", False)
    assert m.feed("s> trailing") == ("", True)
    assert m.hit and m.stop == "</s>"
    assert m.feed("more") == ("", True)
    assert m.flush() == ""


def test_flush_releases_held_text() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("abc ST") == ("abc ", False)
    assert m.flush() == "ST"
    assert m.flush() == ""


def test_no_stops_passes_through() -> None:
    m = StopMatcher([])
    assert m.feed("anything") == ("anything", False)
    assert m.flush() == ""


def test_first_completed_stop_wins() -> None:
    assert run(["abcd"], ["abcd", "c"])[:2] == ("ab", True)
    assert run(["ab", "cd"], ["abcd", "c"])[:2] == ("ab", True)
    # same end: the earlier start wins
    assert run(["xabcd"], ["bc", "abc"])[:2] == ("x", True)
    assert run(["xab", "cd"], ["bcd", "ab"])[:2] == ("x", True)


def test_rejects_empty_stop() -> None:
    with pytest.raises(ValueError):
        StopMatcher(["ok", ""])
    with pytest.raises(TypeError):
        StopMatcher("abc")
