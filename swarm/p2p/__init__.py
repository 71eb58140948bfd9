"""The p2p layer: one trio thread per process runs py-libp2p (host + Kademlia DHT) behind an
asyncio facade. See `P2PNode` and `FrameStream`."""

from swarm.p2p.errors import (
    DialError,
    NodeStoppedError,
    P2PError,
    RequestTimeoutError,
    StreamClosedError,
    StreamResetError,
)
from swarm.p2p.node import Handler, P2PNode, Validator
from swarm.p2p.stream import FrameStream

__all__ = [
    "DialError",
    "FrameStream",
    "Handler",
    "NodeStoppedError",
    "P2PError",
    "P2PNode",
    "RequestTimeoutError",
    "StreamClosedError",
    "StreamResetError",
    "Validator",
]
