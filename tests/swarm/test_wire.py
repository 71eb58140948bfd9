"""Property tests of the frame codec: round trips, and hostile input rejected early."""

from __future__ import annotations

import asyncio
import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.wire import (
    BAD_REQUEST,
    DTYPES,
    TENSORS_KEY,
    TOO_LARGE,
    TRUNCATED,
    Frame,
    WireError,
    WireLimits,
    decode_frame,
    encode_frame,
    encode_frame_bytes,
    error_header,
    read_frame,
    tensor_bytes,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
headers = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k != TENSORS_KEY), plain, max_size=5
)
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4)


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    """Any allowed dtype and shape, arbitrary bit patterns (NaNs included), sometimes a
    non-contiguous view."""
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    shape = draw(shapes)
    numel = 1
    for d in shape:
        numel *= d
    raw = bytearray(
        draw(st.binary(min_size=numel * dtype.itemsize, max_size=numel * dtype.itemsize))
    )
    t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
    t = t.reshape(shape)
    if len(shape) >= 2 and draw(st.booleans()):
        t = t.transpose(0, 1)
    return t


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and bytes(tensor_bytes(a)) == bytes(tensor_bytes(b))
    )


def chunked_reader(data: bytes, sizes: list[int]) -> Any:
    """A stream that hands out at most the next of `sizes` bytes per read."""
    pos = 0
    i = 0

    async def read(n: int) -> bytes:
        nonlocal pos, i
        step = max(1, sizes[i % len(sizes)]) if sizes else n
        i += 1
        chunk = data[pos : pos + min(n, step)]
        pos += len(chunk)
        return chunk

    return read


def read_all(data: bytes, sizes: list[int], limits: WireLimits | None = None) -> list[Frame]:
    async def go() -> list[Frame]:
        read = chunked_reader(data, sizes)
        out = []
        while (frame := await read_frame(read, limits or WireLimits())) is not None:
            out.append(frame)
        return out

    return asyncio.run(go())


@SETTINGS
@given(headers, st.lists(tensors(), max_size=4))
def test_round_trip_in_memory(header: dict[str, Any], ts: list[torch.Tensor]) -> None:
    frame = decode_frame(encode_frame_bytes(header, ts))
    assert frame.header == header
    assert len(frame.tensors) == len(ts)
    for a, b in zip(ts, frame.tensors, strict=True):
        assert same(a, b)


@SETTINGS
@given(
    st.lists(st.tuples(headers, st.lists(tensors(), max_size=3)), min_size=1, max_size=3),
    st.lists(st.integers(1, 64), max_size=5),
)
def test_round_trip_through_a_stream_in_small_pieces(
    frames: list[tuple[dict[str, Any], list[torch.Tensor]]], sizes: list[int]
) -> None:
    data = b"".join(encode_frame_bytes(h, ts) for h, ts in frames)
    got = read_all(data, sizes)
    assert len(got) == len(frames)
    for (h, ts), frame in zip(frames, got, strict=True):
        assert frame.header == h
        assert all(same(a, b) for a, b in zip(ts, frame.tensors, strict=True))


def test_every_dtype_including_bfloat16_comes_back_exactly() -> None:
    ts = [torch.arange(12, dtype=torch.float32).reshape(3, 4).to(dt) for dt in DTYPES.values()]
    frame = decode_frame(encode_frame_bytes({"type": "step"}, ts))
    for a, b in zip(ts, frame.tensors, strict=True):
        assert b.dtype == a.dtype and torch.equal(a, b)
    assert frame.tensors[1].dtype == torch.bfloat16  # numpy could not have held it


def test_decoded_tensors_are_writable_views_without_warnings() -> None:
    frame = decode_frame(encode_frame_bytes({}, [torch.ones(4)]))
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")
        frame.tensors[0].add_(1)
    assert frame.tensors[0].tolist() == [2.0] * 4


def test_big_tensors_are_sent_as_views_not_copies() -> None:
    big = torch.zeros(1 << 20)  # 4 MiB
    parts = encode_frame({"type": "x"}, [big])
    views = [p for p in parts if isinstance(p, memoryview)]
    assert len(views) == 1 and views[0].nbytes == big.numel() * 4
    big[0] = 7.0  # shares memory with the tensor
    assert struct.unpack_from("<f", views[0], 0)[0] == 7.0


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_wire_error(data: bytes) -> None:
    try:
        decode_frame(data)
    except WireError as e:
        assert e.code in {BAD_REQUEST, TOO_LARGE, TRUNCATED}
    try:
        read_all(data, [7])
    except WireError as e:
        assert e.code in {BAD_REQUEST, TOO_LARGE, TRUNCATED}


@SETTINGS
@given(headers, st.lists(tensors(), min_size=1, max_size=3), st.data())
def test_truncated_frames_are_rejected(
    header: dict[str, Any], ts: list[torch.Tensor], data: st.DataObject
) -> None:
    whole = encode_frame_bytes(header, ts)
    cut = data.draw(st.integers(0, len(whole) - 1))
    with pytest.raises(WireError) as err:
        decode_frame(whole[:cut])
    assert err.value.code == TRUNCATED
    if cut == 0:
        assert read_all(whole[:cut], [5]) == []  # a clean end between frames
    else:
        with pytest.raises(WireError) as err2:
            read_all(whole[:cut], [5])
        assert err2.value.code == TRUNCATED


def frame_declaring(entries: list[Any], extra: bytes = b"") -> bytes:
    head = msgpack.packb({"type": "step", TENSORS_KEY: entries}, use_bin_type=True)
    return struct.pack(">I", len(head)) + head + extra


@SETTINGS
@given(st.lists(st.integers(1, 2**40), min_size=1, max_size=4).filter(lambda s: _numel(s) > 2**26))
def test_oversized_tensors_are_rejected_before_any_allocation(shape: list[int]) -> None:
    data = frame_declaring([["float32", shape]])
    tracemalloc.start()
    try:
        with pytest.raises(WireError) as err:
            decode_frame(data)
        with pytest.raises(WireError) as err2:
            read_all(data, [1 << 16])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.code == TOO_LARGE and err2.value.code == TOO_LARGE
    assert peak < 1 << 20, f"decoder allocated {peak} bytes for a rejected frame"


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_limits_are_enforced_before_reading_the_payload() -> None:
    small = WireLimits(
        max_frame_bytes=500,
        max_header_bytes=100,
        max_tensor_elements=50,
        max_dims=2,
        max_tensors=2,
    )
    cases = {
        "too many elements": frame_declaring([["uint8", [51]]]),
        "too many dims": frame_declaring([["uint8", [1, 1, 1]]]),
        "too many tensors": frame_declaring([["uint8", [1]]] * 3),
        "frame too big": frame_declaring([["int64", [50]], ["int64", [50]]]),
        "header too big": struct.pack(">I", 101) + b"\x80" * 101,
        "huge header length": struct.pack(">I", 2**32 - 1),
    }
    for why, data in cases.items():
        # a reader that has nothing past the header: if the decoder tried to read the
        # payload first it would report truncation, not the limit
        with pytest.raises(WireError) as err:
            read_all(data, [1 << 16], small)
        assert err.value.code == TOO_LARGE, why
    with pytest.raises(WireError) as e:
        encode_frame({}, [torch.zeros(300)], small)
    assert e.value.code == TOO_LARGE


@pytest.mark.parametrize(
    "entries",
    [
        [["float64", [2]]],
        [["object", [2]]],
        [[3, [2]]],
        [["float32", [-1]]],
        [["float32", [True]]],
        [["float32", [1.5]]],
        [["float32", "2"]],
        [["float32"]],
        "nope",
    ],
)
def test_bad_tensor_declarations_are_bad_requests(entries: Any) -> None:
    with pytest.raises(WireError) as err:
        decode_frame(frame_declaring(entries))
    assert err.value.code == BAD_REQUEST


def test_headers_must_be_plain_maps() -> None:
    bad = [
        msgpack.packb([1, 2]),
        msgpack.packb({1: 2}),
        msgpack.packb({"a": msgpack.ExtType(5, b"x")}),
        msgpack.packb({"t": msgpack.Timestamp(1)}),
        b"\xc1",  # never used in msgpack
    ]
    for head in bad:
        with pytest.raises(WireError) as err:
            decode_frame(struct.pack(">I", len(head)) + head)
        assert err.value.code == BAD_REQUEST


def test_payload_longer_than_declared_is_rejected() -> None:
    with pytest.raises(WireError) as err:
        decode_frame(encode_frame_bytes({}, [torch.zeros(2)]) + b"\0")
    assert err.value.code == BAD_REQUEST


def test_reserved_key_and_unsendable_dtype_are_refused_on_encode() -> None:
    with pytest.raises(ValueError):
        encode_frame({TENSORS_KEY: 1})
    with pytest.raises(WireError):
        encode_frame({}, [torch.zeros(2, dtype=torch.float64)])


def test_error_frames_round_trip_into_wire_errors() -> None:
    frame = decode_frame(encode_frame_bytes(error_header("busy", "cache full")))
    assert frame.is_error
    with pytest.raises(WireError) as err:
        frame.raise_for_error()
    assert (err.value.code, err.value.message) == ("busy", "cache full")
    assert WireError("not_found", "x").to_header() == {
        "type": "error",
        "code": "not_found",
        "message": "x",
    }
    ok = Frame({"type": "result"})
    assert ok.raise_for_error() is ok
