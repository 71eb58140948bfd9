"""The peer protocols' ids and message shapes, shared by peers and their clients.

`/swarmgate/inference/1`: one long-lived stream per (session, span).
    open  {type: open, session, model, start, end, max_length, batch, keep_alive?, resume?}
      →   {type: ok, session, length, cache_tokens}   (length: positions already cached)
    step  {type: step, seq, position} + hidden[batch, n, h]
      →   {type: result, seq, length} + hidden[batch, n, h]
    close {type: close, keep_alive?}                   (the stream then ends)
  A step whose position is below the cache length rolls the cache back first.
`/swarmgate/sessions/1`: one long-lived stream per (client, peer) carrying all of the client's
  sessions with that peer; each frame is a round of operations, answered by one frame:
    {type: round, ops: [op, ...]} + rows[P, h]  →  {type: round, results: [r, ...]} + rows[Q, h]
  An op is an `open`, `step` or `close` message of `/swarmgate/inference/1` plus its `session`;
  a step also declares `shape: [batch, n]`, and its positions are its batch × n consecutive rows
  of the frame's one tensor (ops in order). Each result is the reply that op would get on its own
  stream (`ok`, `result`, `closed` or an error); the reply's tensor holds the outputs of the
  successful steps, in order. The steps of one round run as one batched forward at the peer, so
  a client decoding many sessions sends one frame per hop per token, not one per session.
  When the stream ends, its sessions are detached (kept if their close or open asked for it).
  Peer-to-peer push: a client sends a step to every hop of its chain at once. A step may carry
  `push: {peer, addrs, seq}`: once computed, the peer sends its output to `peer` (at one of
  `addrs`) as the op `{type: push, session, seq, position, shape}` + rows on its own channel
  there, and the step's result says whether that worked (`pushed`). A step with `pushed: true`
  carries no rows: they come in such a push (or from the client itself, on a second channel,
  when the hop could not push); `{type: push, session, seq, cancel: true}` ends the wait.
  A push is answered by `{type: pushed}` once its rows are with the waiting step's peer.
`/swarmgate/forward/1`: {type: forward, start, end} + hidden → {type: result} + hidden, no cache.
`/swarmgate/info/1`: {type: info} → the peer's live status.
Errors are error frames `{type: error, code, message}` (codes in `swarm.wire`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import torch

from swarm.wire import BAD_REQUEST, WireError

INFERENCE_PROTOCOL: Final = "/swarmgate/inference/1"
FORWARD_PROTOCOL: Final = "/swarmgate/forward/1"
INFO_PROTOCOL: Final = "/swarmgate/info/1"
SESSIONS_PROTOCOL: Final = "/swarmgate/sessions/1"

MAX_STEP_TOKENS: Final = 8192  # positions in one frame (one step, or one round of ops)
MAX_ROUND_OPS: Final = 128  # operations in one round frame

MAX_SESSION_ID: Final = 128
MAX_PUSH_ADDRS: Final = 8  # addresses a push target may name
MAX_ADDR: Final = 256  # characters of one multiaddr
TRANSPORT_DTYPES: Final = (torch.float32, torch.bfloat16)  # never fp16: Gemma overflows it


def field_int(header: dict[str, Any], name: str, lo: int, hi: int) -> int:
    value = header.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise WireError(BAD_REQUEST, f"{name!r} must be an integer in [{lo}, {hi}]")
    return value


def field_float(header: dict[str, Any], name: str, default: float, hi: float) -> float:
    value = header.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= hi:
        raise WireError(BAD_REQUEST, f"{name!r} must be a number in [0, {hi}]")
    return float(value)


def field_str(header: dict[str, Any], name: str, max_len: int = MAX_SESSION_ID) -> str:
    value = header.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise WireError(BAD_REQUEST, f"{name!r} must be a string of 1..{max_len} characters")
    return value


def check_hidden(
    tensors: list[torch.Tensor], hidden_size: int, batch: int | None, finite: bool = False
) -> torch.Tensor:
    """The one hidden-state tensor of a step, checked: [batch, n, hidden], float32/bfloat16,
    and finite (unless the caller already knows it is: `finite`)."""
    if len(tensors) != 1:
        raise WireError(BAD_REQUEST, "a step carries exactly one tensor")
    hidden = tensors[0]
    if hidden.dtype not in TRANSPORT_DTYPES:
        raise WireError(
            BAD_REQUEST, f"hidden states must be float32 or bfloat16, not {hidden.dtype}"
        )
    if hidden.dim() != 3 or hidden.shape[2] != hidden_size or hidden.shape[1] < 1:
        raise WireError(
            BAD_REQUEST, f"hidden must be [batch, n, {hidden_size}], got {list(hidden.shape)}"
        )
    if batch is not None and hidden.shape[0] != batch:
        raise WireError(BAD_REQUEST, f"batch {hidden.shape[0]} differs from the session's {batch}")
    if not finite and not all_finite(hidden):
        raise WireError(BAD_REQUEST, "hidden states contain NaN or infinity")
    return hidden


def all_finite(rows: torch.Tensor) -> bool:
    """Whether every value of a host tensor of fp32 or bf16 is finite, without a torch op
    (numpy: ~7x cheaper per call, and no OpenMP team on the calling thread). A bf16 value is
    NaN or infinite exactly when its 8 exponent bits are all ones."""
    if rows.device.type != "cpu" or rows.requires_grad:
        return bool(torch.isfinite(rows).all())
    if rows.dtype == torch.bfloat16:
        bits = rows.contiguous().view(torch.int16).numpy()
        return not bool(((bits & 0x7F80) == 0x7F80).any())
    if rows.dtype == torch.float32:
        return bool(np.isfinite(rows.contiguous().numpy()).all())
    return bool(torch.isfinite(rows).all())


def op_header(
    kind: str, session: str, seq: int, position: int, shape: Sequence[int]
) -> dict[str, Any]:
    """A `step` or `push` op of a sessions round: step `seq` of `session` at `position`, with
    rows `[batch, n, h]` of `shape` (a pushed step's come from the hop before)."""
    return {
        "type": kind,
        "session": session,
        "seq": seq,
        "position": position,
        "shape": [shape[0], shape[1]],
    }


@dataclass(frozen=True)
class PushTarget:
    """Where a hop sends its output: the next hop's peer, step `seq` of the same session."""

    peer: str
    addrs: tuple[str, ...]
    seq: int


def push_target(header: dict[str, Any]) -> PushTarget | None:
    """A step's `push` field, checked; None when the step has none."""
    raw = header.get("push")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise WireError(BAD_REQUEST, "'push' must be a map")
    addrs = raw.get("addrs", [])
    if (
        not isinstance(addrs, list)
        or len(addrs) > MAX_PUSH_ADDRS
        or not all(isinstance(a, str) and 0 < len(a) <= MAX_ADDR for a in addrs)
    ):
        raise WireError(BAD_REQUEST, f"'push.addrs' must be at most {MAX_PUSH_ADDRS} addresses")
    return PushTarget(field_str(raw, "peer"), tuple(addrs), field_int(raw, "seq", 0, 1 << 62))
