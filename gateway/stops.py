"""Stop sequences over streamed text.

``StopMatcher`` sits between detokenised text deltas and the client::

    matcher = StopMatcher(request.stop_list())
    for delta in text_deltas:
        safe, hit = matcher.feed(delta)
        emit(safe)
        if hit:
            break                      # finish_reason "stop"
    else:
        emit(matcher.flush())          # generation ended another way: release held text

``feed`` withholds any suffix that could still grow into a stop sequence, so emitted text never
contains a stop sequence nor anything after it. The stop that ends the text is the one whose
first occurrence *completes* earliest (ties: the one starting earliest); the text is cut where
that occurrence starts. This is what a generator checking its output after every character
does, and it does not depend on how the text is split into deltas. (With stops ``"abcd"`` and
``"c"``, ``"abcd"`` gives ``"ab"``: ``"c"`` is complete before ``"abcd"`` is.)
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopMatcher"]


class StopMatcher:
    """Incremental stop-sequence matcher for one choice."""

    def __init__(self, stops: Sequence[str]) -> None:
        if isinstance(stops, str):
            raise TypeError("stops must be a sequence of strings, not a string")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        self._stops = tuple(dict.fromkeys(stops))
        self._held = ""
        self._hit: str | None = None

    @property
    def hit(self) -> bool:
        """Whether a stop sequence was found (later feeds return ``("", True)``)."""
        return self._hit is not None

    @property
    def stop(self) -> str | None:
        """The stop sequence that was found, if any."""
        return self._hit

    @property
    def held(self) -> str:
        """Text withheld so far because it may begin a stop sequence."""
        return self._held

    def feed(self, text_delta: str) -> tuple[str, bool]:
        """Add generated text; return ``(text safe to emit now, stop hit)``."""
        if self._hit is not None:
            return "", True
        if not self._stops:
            return text_delta, False
        buf = self._held + text_delta
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self._stops:
            start = buf.find(stop)
            if start >= 0:
                candidate = (start + len(stop), start, stop)
                if best is None or candidate < best:
                    best = candidate
        if best is not None:
            _, start, stop = best
            self._hit = stop
            self._held = ""
            return buf[:start], True
        keep = self._partial_suffix(buf)
        cut = len(buf) - keep
        self._held = buf[cut:]
        return buf[:cut], False

    def flush(self) -> str:
        """Release the withheld text at the end of generation (``""`` after a hit)."""
        held, self._held = self._held, ""
        return "" if self._hit is not None else held

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of some stop."""
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:k]):
                    best = k
                    break
        return best
