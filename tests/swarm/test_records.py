"""DHT records: keys, encoding, and the validators KadDHT runs on every put and get."""

from __future__ import annotations

import dataclasses
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.records import (
    MAX_PEER_RECORD_BYTES,
    MODEL_NAMESPACE,
    OFFLINE,
    PEER_NAMESPACE,
    ModelRecord,
    PeerRecord,
    RecordError,
    block_key,
    model_key,
    model_validator,
    peer_key,
    peer_validator,
    register_validators,
)

NOW = 1_800_000_000.0
PEER = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
MODEL = "f" * 64


def clock() -> float:
    return NOW


def peer_record(**changes: object) -> PeerRecord:
    rec = PeerRecord(
        peer_id=PEER,
        addrs=(f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}",),
        model_hash=MODEL,
        start=0,
        end=12,
        dtype="bfloat16",
        throughput_decode=20.0,
        throughput_prefill=400.0,
        cache_tokens_free=8192,
        queue_len=1,
        version="0.1.0",
    ).stamped(NOW)
    return dataclasses.replace(rec, **changes)  # type: ignore[arg-type]


def model_record(**changes: object) -> ModelRecord:
    rec = ModelRecord(
        name="smollm2-135m-instruct",
        model_hash=MODEL,
        family="llama",
        num_blocks=3,
        hidden_size=576,
        block_hashes=("a" * 64, "b" * 64, "c" * 64),
        aliases=("smollm2",),
        chat_template="{{ messages }}",
        ts=NOW,
    )
    return dataclasses.replace(rec, **changes)  # type: ignore[arg-type]


def test_keys_are_short_and_bound_to_their_subject() -> None:
    key = peer_key(PEER)
    assert key.startswith(f"/{PEER_NAMESPACE}/") and len(key.split("/")[2]) == 40
    assert len(key) <= 50 and len(model_key(MODEL)) <= 50  # longer keys stop after one hop
    assert model_key(MODEL).startswith(f"/{MODEL_NAMESPACE}/")
    assert block_key(MODEL, 0) != block_key(MODEL, 1)
    assert len(block_key(MODEL, 7)) == 64 and int(block_key(MODEL, 7), 16) >= 0


def test_records_round_trip() -> None:
    rec = peer_record()
    assert PeerRecord.from_bytes(rec.to_bytes()) == rec
    model = model_record()
    assert ModelRecord.from_bytes(model.to_bytes()) == model
    assert ModelRecord.from_bytes(model_record(chat_template=None).to_bytes()).chat_template is None


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    data = msgpack.unpackb(peer_record().to_bytes())
    data["new_field"] = [1, 2, 3]
    assert PeerRecord.from_bytes(msgpack.packb(data)) == peer_record()


def test_valid_records_pass_their_validator() -> None:
    peer_validator(clock).validate(peer_key(PEER), peer_record().to_bytes())
    model_validator(clock).validate(model_key(MODEL), model_record().to_bytes())


@pytest.mark.parametrize(
    ("why", "value"),
    [
        ("another peer's record", peer_record(peer_id="12D3KooWother").to_bytes()),
        ("expired", peer_record().stamped(NOW - 100, ttl=90).to_bytes()),
        ("from the future", peer_record().stamped(NOW + 3600).to_bytes()),
        ("lives too long", peer_record().stamped(NOW, ttl=10_000).to_bytes()),
        ("empty span", peer_record(start=5, end=5).to_bytes()),
        ("unknown state", peer_record(state="dancing").to_bytes()),
        ("negative throughput", peer_record(throughput_decode=-1.0).to_bytes()),
        ("garbage", b"\x00\x01\x02"),
        ("not a map", msgpack.packb([1, 2])),
        ("missing field", msgpack.packb({"peer_id": PEER})),
        ("oversized", msgpack.packb({"pad": "x" * MAX_PEER_RECORD_BYTES})),
        ("extension type", msgpack.packb({"peer_id": msgpack.ExtType(1, b"x")})),
    ],
)
def test_bad_peer_records_are_rejected(why: str, value: bytes) -> None:
    with pytest.raises(RecordError):
        peer_validator(clock).validate(peer_key(PEER), value)


def test_bad_model_records_are_rejected() -> None:
    v = model_validator(clock)
    with pytest.raises(RecordError):
        v.validate(model_key("0" * 64), model_record().to_bytes())  # key of another model
    with pytest.raises(RecordError):
        v.validate(model_key(MODEL), model_record(block_hashes=("a" * 64,)).to_bytes())
    with pytest.raises(RecordError):
        v.validate(model_key(MODEL), model_record(num_blocks=0, block_hashes=()).to_bytes())


def test_select_prefers_the_newest_valid_record() -> None:
    v = peer_validator(clock)
    key = peer_key(PEER)
    old = peer_record().stamped(NOW - 10).to_bytes()
    new = peer_record(end=20).stamped(NOW - 1).to_bytes()
    offline = peer_record().stamped(NOW, state=OFFLINE).to_bytes()
    expired = peer_record().stamped(NOW - 500).to_bytes()
    assert v.select(key, [old, new]) == 1
    assert v.select(key, [new, old]) == 0
    assert v.select(key, [old, new, offline]) == 2  # going offline is news too
    assert v.select(key, [expired, old]) == 1
    assert v.select(key, [b"junk", old]) == 1
    # a re-sent copy of the stored value is accepted (ties go to the later index)
    assert v.select(key, [old, old]) == 1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(NOW - 80, NOW + 60), min_size=1, max_size=8, unique=True), st.randoms())
def test_select_is_independent_of_order(stamps: list[float], rnd: random.Random) -> None:
    v = peer_validator(clock)
    values = [peer_record(end=i + 1).stamped(ts).to_bytes() for i, ts in enumerate(stamps)]
    rnd.shuffle(values)
    best = PeerRecord.from_bytes(values[v.select(peer_key(PEER), values)])
    assert best.ts == max(stamps)


def test_register_validators_covers_both_namespaces() -> None:
    seen: dict[str, object] = {}

    class Host:
        def register_validator(self, namespace: str, validator: object) -> None:
            seen[namespace] = validator

    register_validators(Host())
    assert set(seen) == {PEER_NAMESPACE, MODEL_NAMESPACE}
