"""Exceptions raised by the p2p layer; all are `WireError`s, so one except clause catches
every network failure and its `code` says what happened."""

from __future__ import annotations

from swarm.wire import CLOSED, RESET, TIMEOUT, UNAVAILABLE, WireError


class P2PError(WireError):
    """A failure of the p2p layer (the message is plain text, never a libp2p object)."""

    def __init__(self, message: str, code: str = UNAVAILABLE) -> None:
        super().__init__(code, message)


class DialError(P2PError):
    """No connection or stream could be opened to the peer."""


class StreamClosedError(P2PError):
    """The remote side closed the stream cleanly: no more frames will come."""

    def __init__(self, message: str = "stream closed by the remote side") -> None:
        super().__init__(message, CLOSED)


class StreamResetError(P2PError):
    """The stream was reset (by either side) or its connection died."""

    def __init__(self, message: str = "stream reset") -> None:
        super().__init__(message, RESET)


class NodeStoppedError(P2PError):
    """The node is not running (not started yet, or stopped)."""

    def __init__(self, message: str = "p2p node is not running") -> None:
        super().__init__(message, UNAVAILABLE)


class RequestTimeoutError(P2PError):
    def __init__(self, message: str = "request timed out") -> None:
        super().__init__(message, TIMEOUT)
