"""Persistent node identity (an Ed25519 key file) and the small JSON file of peers seen,
kept beside it, that a node falls back to when its bootstrap peers are gone."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from libp2p import generate_new_ed25519_identity
from libp2p.crypto.keys import KeyPair
from libp2p.identity_utils import load_identity, save_identity

MAX_KNOWN_PEERS = 64


def load_or_create_identity(path: Path | None) -> KeyPair:
    """The key pair stored at `path` (created with mode 0600 on first use); a fresh
    ephemeral one when `path` is None."""
    if path is None:
        return generate_new_ed25519_identity()
    if path.exists():
        return load_identity(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key_pair = generate_new_ed25519_identity()
    save_identity(key_pair, path)
    return key_pair


def known_peers_path(identity_path: Path) -> Path:
    return identity_path.with_name(identity_path.name + ".peers.json")


@dataclass
class KnownPeers:
    """peer id -> (addresses, last seen); bounded, newest kept."""

    path: Path | None
    peers: dict[str, tuple[list[str], float]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> KnownPeers:
        kp = cls(path)
        if path is None or not path.exists():
            return kp
        try:
            data = json.loads(path.read_text())
            for item in data.get("peers", []):
                pid, addrs, seen = (
                    str(item["id"]),
                    [str(a) for a in item["addrs"]],
                    float(item["seen"]),
                )
                kp.peers[pid] = (addrs, seen)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            kp.peers.clear()  # a corrupt file is only a lost hint
        return kp

    def note(self, peer_id: str, addrs: list[str], seen: float | None = None) -> None:
        if addrs:
            self.peers[peer_id] = (list(addrs), time.time() if seen is None else seen)

    def forget(self, peer_id: str) -> None:
        self.peers.pop(peer_id, None)

    def newest(self, limit: int = MAX_KNOWN_PEERS) -> list[tuple[str, list[str]]]:
        ranked = sorted(self.peers.items(), key=lambda kv: kv[1][1], reverse=True)[:limit]
        return [(pid, addrs) for pid, (addrs, _seen) in ranked]

    def save(self) -> None:
        if self.path is None:
            return
        data = {
            "peers": [
                {"id": pid, "addrs": self.peers[pid][0], "seen": self.peers[pid][1]}
                for pid, _ in self.newest()
            ]
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
