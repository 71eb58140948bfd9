"""The KV-cache budget of a peer, in tokens, reserved per session at `open`.

A session reserves `max_length` tokens up front (batch x length); when the budget cannot cover
a new session the peer answers `busy` and the client routes elsewhere. Closing or expiring a
session gives its tokens back at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def kv_bytes_per_token(
    num_blocks: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
) -> int:
    """Bytes of keys and values one token occupies across a span's blocks."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * num_blocks * num_kv_heads * head_dim * element


def available_memory_bytes(device: torch.device) -> int:
    """Memory free for caches right now (CUDA: device memory; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def default_cache_tokens(
    bytes_per_token: int, device: torch.device, fraction: float = 0.4, cap: int = 1 << 20
) -> int:
    """A budget that uses `fraction` of the free memory, at most `cap` tokens."""
    return max(1024, min(cap, int(available_memory_bytes(device) * fraction) // bytes_per_token))


class BudgetExceededError(RuntimeError):
    """Not enough free cache tokens for the request."""


@dataclass
class CacheBudget:
    total_tokens: int
    reservations: dict[str, int] = field(default_factory=dict)

    @property
    def used_tokens(self) -> int:
        return sum(self.reservations.values())

    @property
    def free_tokens(self) -> int:
        return self.total_tokens - self.used_tokens

    def reserve(self, session_id: str, tokens: int) -> None:
        if tokens <= 0:
            raise ValueError("a reservation needs a positive number of tokens")
        if session_id in self.reservations:
            raise ValueError(f"session {session_id!r} already holds a reservation")
        if tokens > self.free_tokens:
            raise BudgetExceededError(
                f"{tokens} cache tokens requested, {self.free_tokens} of {self.total_tokens} free"
            )
        self.reservations[session_id] = tokens

    def release(self, session_id: str) -> int:
        return self.reservations.pop(session_id, 0)
