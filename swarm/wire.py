"""Framing and codec for everything swarmgate sends over a stream.

A frame is::

    4-byte big-endian length H | msgpack header (H bytes, a map) | raw tensor bytes

The header is a plain dict; the reserved key ``"_t"`` lists the tensors that follow as
``[dtype, [dim, ...]]`` pairs. The tensor bytes are the tensors' raw little-endian
contents, in order, each starting at a multiple of 8 bytes from the start of the payload
(zero padding in between), so the payload size follows from the header alone.

Decoding checks the header length, the header, every dtype (a whitelist) and shape, and the
resulting payload size against `WireLimits` before it allocates anything for the payload.
Tensors come out as ``torch.frombuffer`` views over one received buffer (no copy; bfloat16
works, which numpy cannot hold). There is no pickle anywhere: headers are msgpack with
extension types refused.

Errors travel as ordinary frames whose header is ``{"type": "error", "code", "message"}``;
`WireError` is the exception for them and for anything malformed on the wire.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
import torch

TENSORS_KEY: Final = "_t"
PREFIX = struct.Struct(">I")
ALIGN: Final = 8

# the dtypes that may cross the wire, by their wire name
DTYPES: Final[dict[str, torch.dtype]] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
}
DTYPE_NAMES: Final[dict[torch.dtype, str]] = {v: k for k, v in DTYPES.items()}
# bfloat16 bytes are handed out through an integer view of the same width
_BYTES_VIEW: Final[dict[torch.dtype, torch.dtype]] = {torch.bfloat16: torch.int16}

# error codes used across the swarm (the set is open: peers may send others)
BAD_REQUEST: Final = "bad_request"
BUSY: Final = "busy"
TOO_LARGE: Final = "too_large"
NOT_FOUND: Final = "not_found"
INTERNAL: Final = "internal"
TRUNCATED: Final = "truncated"
TIMEOUT: Final = "timeout"
UNAVAILABLE: Final = "unavailable"
CLOSED: Final = "closed"
RESET: Final = "reset"

_MAX_NESTING: Final = 32
_COALESCE_BYTES: Final = 256 * 1024

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("swarm.wire assumes a little-endian host")


class WireError(Exception):
    """A protocol-level failure: malformed or oversized data, or an error frame received."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_header(self) -> dict[str, Any]:
        return error_header(self.code, self.message)


@dataclass(frozen=True)
class WireLimits:
    """Upper bounds a receiver enforces before allocating anything."""

    max_frame_bytes: int = 256 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_tensor_elements: int = 64 * 1024 * 1024
    max_dims: int = 8
    max_tensors: int = 64


DEFAULT_LIMITS: Final = WireLimits()


@dataclass
class Frame:
    """One decoded message: a plain header dict and the tensors that came with it."""

    header: dict[str, Any]
    tensors: list[torch.Tensor] = field(default_factory=list)

    @property
    def type(self) -> str | None:
        value = self.header.get("type")
        return value if isinstance(value, str) else None

    @property
    def is_error(self) -> bool:
        return self.type == "error"

    def raise_for_error(self) -> Frame:
        """Raise the `WireError` an error frame carries; return self otherwise."""
        if self.is_error:
            raise WireError(
                str(self.header.get("code", INTERNAL)), str(self.header.get("message", ""))
            )
        return self


@dataclass(frozen=True)
class TensorSpec:
    """What the header declares about one tensor."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # from the start of the payload

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def error_header(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


# ---------------------------------------------------------------------------- encoding


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A byte view of a tensor's contents; copies only when it is not contiguous or on CPU."""
    if tensor.dtype not in DTYPE_NAMES:
        raise WireError(BAD_REQUEST, f"dtype {tensor.dtype} cannot be sent")
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if not t.is_contiguous():
        t = t.contiguous()
    view_dtype = _BYTES_VIEW.get(t.dtype)
    if view_dtype is not None:
        t = t.view(view_dtype)
    if t.numel() == 0:
        return memoryview(b"")
    array: Any = t.numpy()  # shares memory with the tensor
    return memoryview(array).cast("B")


def encode_header(header: Mapping[str, Any], tensors: Sequence[torch.Tensor]) -> bytes:
    if TENSORS_KEY in header:
        raise ValueError(f"header key {TENSORS_KEY!r} is reserved")
    body = dict(header)
    if tensors:
        body[TENSORS_KEY] = [[DTYPE_NAMES[t.dtype], list(t.shape)] for t in tensors]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def encode_frame(
    header: Mapping[str, Any],
    tensors: Sequence[torch.Tensor] = (),
    limits: WireLimits = DEFAULT_LIMITS,
) -> list[bytes | memoryview]:
    """The buffers of one frame, in order: small parts joined, big tensors as views.

    The views share memory with the tensors: write them out before modifying those tensors.
    """
    views = [tensor_bytes(t) for t in tensors]  # validates dtypes first
    head = encode_header(header, tensors)
    if len(head) > limits.max_header_bytes:
        raise WireError(TOO_LARGE, f"header is {len(head)} bytes > {limits.max_header_bytes}")
    parts: list[bytes | memoryview] = [PREFIX.pack(len(head)), head]
    size = 0
    for v in views:
        pad = _align(size) - size
        if pad:
            parts.append(b"\0" * pad)
        parts.append(v)
        size += pad + v.nbytes
    total = PREFIX.size + len(head) + size
    if total > limits.max_frame_bytes:
        raise WireError(TOO_LARGE, f"frame is {total} bytes > {limits.max_frame_bytes}")
    # coalesce runs of small parts so a small message becomes one write
    out: list[bytes | memoryview] = []
    run: list[bytes | memoryview] = []
    for p in parts:
        if len(p) >= _COALESCE_BYTES:
            if run:
                out.append(b"".join(run))
                run = []
            out.append(p)
        else:
            run.append(p)
    if run:
        out.append(b"".join(run))
    return out


def encode_frame_bytes(
    header: Mapping[str, Any],
    tensors: Sequence[torch.Tensor] = (),
    limits: WireLimits = DEFAULT_LIMITS,
) -> bytes:
    return b"".join(encode_frame(header, tensors, limits))


# ---------------------------------------------------------------------------- decoding


def _refuse_ext(code: int, data: bytes) -> Any:
    raise WireError(BAD_REQUEST, f"msgpack extension type {code} is not allowed")


def _check_plain(value: Any, depth: int = 0) -> None:
    if depth > _MAX_NESTING:
        raise WireError(BAD_REQUEST, "header nested too deeply")
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return
    if isinstance(value, list):
        for v in value:
            _check_plain(v, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise WireError(BAD_REQUEST, "header map keys must be strings")
            _check_plain(v, depth + 1)
        return
    raise WireError(BAD_REQUEST, f"header value of type {type(value).__name__} is not allowed")


def decode_header(
    data: bytes | bytearray | memoryview, limits: WireLimits = DEFAULT_LIMITS
) -> tuple[dict[str, Any], list[TensorSpec], int]:
    """Parse and check a header; return (header, tensor specs, payload size in bytes)."""
    if len(data) > limits.max_header_bytes:
        raise WireError(TOO_LARGE, f"header is {len(data)} bytes > {limits.max_header_bytes}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            timestamp=0,
        )
    except WireError:
        raise
    except Exception as e:  # msgpack raises many types on garbage
        raise WireError(BAD_REQUEST, f"header is not valid msgpack: {type(e).__name__}") from None
    if not isinstance(obj, dict):
        raise WireError(BAD_REQUEST, "header must be a map")
    _check_plain(obj)
    declared = obj.pop(TENSORS_KEY, [])
    if not isinstance(declared, list):
        raise WireError(BAD_REQUEST, "tensor list must be an array")
    if len(declared) > limits.max_tensors:
        raise WireError(TOO_LARGE, f"{len(declared)} tensors > {limits.max_tensors}")
    specs: list[TensorSpec] = []
    offset = 0
    for item in declared:
        if not (isinstance(item, list) and len(item) == 2):
            raise WireError(BAD_REQUEST, "tensor entry must be [dtype, shape]")
        name, shape = item
        dtype = DTYPES.get(name) if isinstance(name, str) else None
        if dtype is None:
            raise WireError(BAD_REQUEST, f"dtype {name!r} is not allowed")
        if not isinstance(shape, list):
            raise WireError(BAD_REQUEST, "tensor shape must be an array")
        if len(shape) > limits.max_dims:
            raise WireError(TOO_LARGE, f"{len(shape)} dims > {limits.max_dims}")
        numel = 1
        for d in shape:
            if isinstance(d, bool) or not isinstance(d, int) or d < 0:
                raise WireError(BAD_REQUEST, f"bad tensor dimension {d!r}")
            numel *= d
            if numel > limits.max_tensor_elements:  # also stops huge products early
                break
        if numel > limits.max_tensor_elements:
            raise WireError(
                TOO_LARGE, f"tensor of shape {shape} > {limits.max_tensor_elements} elements"
            )
        offset = _align(offset)
        spec = TensorSpec(dtype, tuple(shape), offset)
        specs.append(spec)
        offset += spec.nbytes
        if PREFIX.size + len(data) + offset > limits.max_frame_bytes:
            raise WireError(TOO_LARGE, f"frame would exceed {limits.max_frame_bytes} bytes")
    return obj, specs, offset


def tensors_from_payload(
    specs: Sequence[TensorSpec], payload: bytearray | memoryview
) -> list[torch.Tensor]:
    """Views over `payload` (which must be writable and exactly the declared size)."""
    tensors = []
    for spec in specs:
        if spec.numel == 0:
            tensors.append(torch.empty(spec.shape, dtype=spec.dtype))
            continue
        flat = torch.frombuffer(payload, dtype=spec.dtype, count=spec.numel, offset=spec.offset)
        tensors.append(flat.view(spec.shape))
    return tensors


def decode_frame(
    data: bytes | bytearray | memoryview, limits: WireLimits = DEFAULT_LIMITS
) -> Frame:
    """Decode one whole frame held in memory (copies the payload into its own buffer)."""
    view = memoryview(data).cast("B")
    if len(view) > limits.max_frame_bytes:
        raise WireError(TOO_LARGE, f"frame is {len(view)} bytes > {limits.max_frame_bytes}")
    if len(view) < PREFIX.size:
        raise WireError(TRUNCATED, f"frame of {len(view)} bytes has no length prefix")
    (hlen,) = PREFIX.unpack_from(view)
    if hlen > limits.max_header_bytes:
        raise WireError(TOO_LARGE, f"header is {hlen} bytes > {limits.max_header_bytes}")
    end = PREFIX.size + hlen
    if len(view) < end:
        raise WireError(TRUNCATED, f"frame ends inside its header ({len(view)} < {end} bytes)")
    header, specs, psize = decode_header(view[PREFIX.size : end], limits)
    if len(view) - end != psize:
        code = TRUNCATED if len(view) - end < psize else BAD_REQUEST
        raise WireError(code, f"payload is {len(view) - end} bytes, header declares {psize}")
    payload = bytearray(view[end:])
    return Frame(header, tensors_from_payload(specs, payload))


# ---------------------------------------------------------------------------- streams

ReadSome = Callable[[int], Awaitable[bytes]]
"""Reads up to n bytes (at least 1) from a stream; returns b"" at end of stream."""


async def read_exactly(read: ReadSome, n: int, into: bytearray | None = None) -> bytearray:
    """Read exactly n bytes, however small the pieces the stream hands out.

    Raises `WireError(TRUNCATED)` when the stream ends first (and `EOFError` when it ends
    before the first byte, so callers can tell a clean end from a cut frame).
    """
    buf = into if into is not None else bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        chunk = await read(n - got)
        if not chunk:
            if got == 0:
                raise EOFError("stream ended")
            raise WireError(TRUNCATED, f"stream ended after {got} of {n} bytes")
        if len(chunk) > n - got:
            raise WireError(INTERNAL, "reader returned more bytes than asked for")
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
    return buf


async def read_frame(read: ReadSome, limits: WireLimits = DEFAULT_LIMITS) -> Frame | None:
    """Read one frame; None when the stream ends cleanly between frames."""
    try:
        prefix = await read_exactly(read, PREFIX.size)
    except EOFError:
        return None
    (hlen,) = PREFIX.unpack(prefix)
    if hlen > limits.max_header_bytes:
        raise WireError(TOO_LARGE, f"header is {hlen} bytes > {limits.max_header_bytes}")
    try:
        head = await read_exactly(read, hlen)
        header, specs, psize = decode_header(head, limits)
        payload = await read_exactly(read, psize) if psize else bytearray()
    except EOFError:
        raise WireError(TRUNCATED, "stream ended inside a frame") from None
    return Frame(header, tensors_from_payload(specs, payload))


async def write_frame(
    write: Callable[[bytes | memoryview], Awaitable[None]],
    header: Mapping[str, Any],
    tensors: Sequence[torch.Tensor] = (),
    limits: WireLimits = DEFAULT_LIMITS,
) -> None:
    for part in encode_frame(header, tensors, limits):
        await write(part)
