"""Peers started without --blocks spread over the model; a newcomer joins the weakest part."""

from __future__ import annotations

import asyncio
import time

import pytest

from peer.selection import ServedSpan, block_throughputs
from swarm.models import load_weights
from swarm.p2p import P2PNode
from swarm.records import register_validators
from swarm.swarm_view import ModelView, SwarmView
from tests.procs import Proc, start_peer

pytestmark = pytest.mark.slow


async def model_view(bootstrap: str, model_hash: str) -> ModelView | None:
    node = P2PNode(dht_mode="client", bootstrap=[bootstrap])
    register_validators(node)
    await node.start()
    try:
        snapshot = await SwarmView(node, ping=False).refresh([model_hash])
        return snapshot.models.get(model_hash)
    finally:
        await node.stop()


def wait_for(
    bootstrap: str, model_hash: str, peers: int, complete: bool, timeout: float = 180
) -> ModelView:
    deadline = time.monotonic() + timeout
    view = None
    while time.monotonic() < deadline:
        view = asyncio.run(model_view(bootstrap, model_hash))
        if view is not None and len(view.peers) >= peers and (view.complete or not complete):
            return view
        time.sleep(2)
    raise AssertionError(f"swarm did not settle: {view.to_json(time.time()) if view else None}")


def test_auto_selection_covers_the_model_and_newcomer_joins_weakest() -> None:
    model_hash = load_weights("smollm2-135m-instruct").model_hash
    common = [
        "--num-blocks",
        "12",
        "--rebalance-period",
        "6",
        "--join-jitter",
        "3",
        "--cache-tokens",
        "2048",
    ]
    procs: list[Proc] = []
    try:
        procs.append(start_peer(*common))
        bootstrap = str(procs[0].ready["maddrs"][0])  # type: ignore[index]
        procs += [start_peer(*common, bootstrap=bootstrap) for _ in range(2)]
        view = wait_for(bootstrap, model_hash, 3, complete=True)
        assert view.complete and view.coverage() and min(view.coverage()) >= 1
        served = [
            ServedSpan(p.peer_id, p.record.start, p.record.end, p.record.throughput_decode)
            for p in view.peers
        ]
        before = block_throughputs(30, served)
        procs.append(
            start_peer(
                "--num-blocks",
                "12",
                "--rebalance-period",
                "600",
                "--join-jitter",
                "0",
                bootstrap=bootstrap,
            )
        )
        start, end = int(procs[-1].ready["start"]), int(procs[-1].ready["end"])  # type: ignore[arg-type]
        assert end - start == 12
        assert min(before[start:end]) == pytest.approx(min(before)), (before, start)
    finally:
        codes = [p.stop() for p in procs]
    assert codes == [0] * len(procs)
