"""A peer measures its own speed at start: decode and prefill tokens/s through its span.

Results are cached per (hardware, model hash, span, dtype, quantization) so a restart does not
measure again.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from swarm.blocks import Span
from swarm.models.store import cache_root


@dataclass(frozen=True)
class Throughput:
    decode: float  # tokens/s through the whole span, batch 1
    prefill: float  # tokens/s through the whole span, one 128-token chunk


def hardware_id(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.machine()}:{platform.processor()}:{torch.get_num_threads()}t"


def _sync(span: Span) -> None:
    if span.device.type == "cuda":
        torch.cuda.synchronize(span.device)


def _measure(span: Span, decode_steps: int = 8, prefill_tokens: int = 128) -> Throughput:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, prefill_tokens, span.hidden_size, generator=generator) * 0.1
    cache, prefill_cache = span.new_cache(), span.new_cache()
    span.forward(hidden[:, :8], cache)  # warm up
    span.forward(hidden[:, 8:9], cache)
    _sync(span)
    started = time.perf_counter()
    span.forward(hidden, prefill_cache)
    _sync(span)
    prefill = prefill_tokens / max(time.perf_counter() - started, 1e-9)
    started = time.perf_counter()
    for i in range(decode_steps):
        span.forward(hidden[:, 9 + i : 10 + i], cache)
    _sync(span)
    decode = decode_steps / max(time.perf_counter() - started, 1e-9)
    cache.release()
    prefill_cache.release()
    return Throughput(decode=round(decode, 2), prefill=round(prefill, 2))


def measure_throughput(span: Span, model_hash: str, cache_file: Path | None = None) -> Throughput:
    """The span's throughput, from the cache file when this hardware measured it before."""
    path = cache_file or cache_root() / "throughput.json"
    key = "|".join(
        [
            hardware_id(span.device),
            model_hash[:16],
            f"{span.start}:{span.end}",
            str(span.dtype),
            span.quant + ("+compiled" if span.compiled else ""),
        ]
    )
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return Throughput(**known[key])
    result = _measure(span)
    known[key] = {"decode": result.decode, "prefill": result.prefill}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(known, indent=1))
    tmp.replace(path)
    return result
