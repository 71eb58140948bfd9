"""Fresh DHT lookups (trio side) on top of py-libp2p's KadDHT.

KadDHT 0.8.1 answers `get_value` from its local store whenever it holds the key (and caches
every value it fetched there), and `find_providers` from its local provider list whenever that
is non-empty. A node that looked once would never see an updated record or a new provider.
These helpers always ask the closest peers, validate what comes back with the DHT's
validator, and merge it with the local copy. Private KadDHT helpers are used on purpose;
libp2p is pinned to 0.8.1.
"""

from __future__ import annotations

import contextlib
import logging

import trio
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.kad_dht.pb.kademlia_pb2 import Record
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

log = logging.getLogger(__name__)

QUERY_TIMEOUT = 5.0
CONCURRENCY = 8


def _encode_provider_key(key: str) -> bytes:
    """The same key bytes KadDHT.provide() uses for a hex string key."""
    try:
        return bytes.fromhex(key)
    except ValueError:
        return key.encode()


async def fresh_get(dht: KadDHT, key: str) -> bytes | None:
    """The best valid value for `key` among the local store and the closest peers."""
    validator = dht.validator
    if validator is None:
        raise ValueError("the DHT has no validator")
    key_b = key.encode()
    candidates: list[bytes] = []
    best_record: list[Record] = []

    def consider(value: bytes, record: Record | None) -> None:
        try:
            validator.validate(key, value)
        except Exception as e:
            log.debug("dropping invalid value for %s: %s", key, e)
            return
        candidates.append(value)
        if record is not None:
            best_record.append(record)

    local = dht.value_store.get(key_b)
    if local is not None:
        consider(local.value, None)
        if not candidates:  # expired or otherwise invalid now: stop serving it
            dht.value_store.remove(key_b)

    peers = [
        p
        for p in await dht.peer_routing.find_closest_peers_network(key_b)
        if p != dht.local_peer_id
    ]
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def ask(peer: ID) -> None:
        async with limiter:
            with trio.move_on_after(QUERY_TIMEOUT), contextlib.suppress(Exception):
                rec = await dht.value_store._get_from_peer(peer, key_b, return_record=True)
                if isinstance(rec, Record) and rec.value:
                    consider(rec.value, rec)

    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(ask, peer)

    if not candidates:
        return None
    best = candidates[validator.select(key, candidates)]
    if local is not None and best != local.value:
        # we hold this key as a DHT server: keep our copy current
        for rec in best_record:
            if rec.value == best:
                dht.value_store.put_record(key_b, rec)
                break
    return best


async def fresh_find_providers(dht: KadDHT, key: str, count: int = 20) -> list[PeerInfo]:
    """Providers of `key` from the local provider store and the closest peers (deduplicated)."""
    key_b = _encode_provider_key(key)
    found: dict[ID, PeerInfo] = {}
    for info in dht.provider_store.get_providers(key_b):
        found.setdefault(info.peer_id, info)
    peers = [
        p
        for p in await dht.peer_routing.find_closest_peers_network(key_b)
        if p != dht.local_peer_id
    ]
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def ask(peer: ID) -> None:
        async with limiter:
            with trio.move_on_after(QUERY_TIMEOUT), contextlib.suppress(Exception):
                providers, _closer = await dht.provider_store._get_providers_from_peer_with_closers(
                    peer, key_b
                )
                for info in providers:
                    found.setdefault(info.peer_id, info)

    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(ask, peer)
    return list(found.values())[:count]
