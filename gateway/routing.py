"""Route selection: the chain of peers with the lowest per-token latency over blocks [s, e).

Nodes are block boundaries. A peer serving [a, b) offers an edge a → b (peers are entered at
the start of their span). Edge cost = measured RTT + one token's compute through the span
(1 / decode throughput) + a queue penalty. A peer that failed recently is left out; one whose
record says its cache is short costs a large penalty (records are up to 30 s old: the peer's own
`busy` answer is the truth). Dijkstra finds the cheapest chain.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from swarm.session import Hop
from swarm.swarm_view import PeerView

DEFAULT_RTT = 0.005  # seconds, for peers not yet pinged
SHORT_OF_CACHE_PENALTY = 10.0  # seconds: last resort, the record may be stale (peers say busy)


@dataclass
class Bans:
    """Peers that failed recently, banned with exponential backoff."""

    base: float = 5.0
    cap: float = 300.0
    until: dict[str, float] = field(default_factory=dict)
    strikes: dict[str, int] = field(default_factory=dict)

    def ban(self, peer_id: str) -> None:
        strikes = self.strikes.get(peer_id, 0) + 1
        self.strikes[peer_id] = strikes
        self.until[peer_id] = time.monotonic() + min(self.cap, self.base * 2 ** (strikes - 1))

    def banned(self, peer_id: str) -> bool:
        return self.until.get(peer_id, 0.0) > time.monotonic()

    def forgive(self, peer_id: str) -> None:
        self.strikes.pop(peer_id, None)
        self.until.pop(peer_id, None)


def edge_cost(peer: PeerView) -> float:
    record = peer.record
    per_token = 1.0 / max(record.throughput_decode, 1e-3)
    rtt = peer.rtt if peer.rtt is not None else DEFAULT_RTT
    return rtt + per_token * (1 + record.queue_len)


def find_route(
    peers: Iterable[PeerView],
    start: int,
    end: int,
    exclude: frozenset[str] = frozenset(),
    cache_tokens: int = 0,
) -> list[Hop] | None:
    """The cheapest chain of hops from boundary `start` to `end`, or None."""
    edges: dict[int, list[tuple[float, PeerView]]] = {}
    for peer in peers:
        record = peer.record
        if peer.peer_id in exclude or not peer.reachable or not record.online:
            continue
        penalty = SHORT_OF_CACHE_PENALTY if record.cache_tokens_free < cache_tokens else 0.0
        if start <= record.start < record.end <= end:
            edges.setdefault(record.start, []).append((edge_cost(peer) + penalty, peer))
    best: dict[int, float] = {start: 0.0}
    previous: dict[int, tuple[int, PeerView]] = {}
    counter = itertools.count()
    queue: list[tuple[float, int, int]] = [(0.0, next(counter), start)]
    while queue:
        cost, _, node = heapq.heappop(queue)
        if node == end:
            break
        if cost > best.get(node, float("inf")):
            continue
        for edge, peer in edges.get(node, []):
            target = peer.record.end
            total = cost + edge
            if total < best.get(target, float("inf")):
                best[target] = total
                previous[target] = (node, peer)
                heapq.heappush(queue, (total, next(counter), target))
    if end not in best:
        return None
    hops: list[Hop] = []
    node = end
    while node != start:
        source, peer = previous[node]
        record = peer.record
        hops.append(Hop(record.peer_id, record.start, record.end, tuple(record.addrs)))
        node = source
    return hops[::-1]
