"""The swarm's DHT records, their keys and their validators.

- `PeerRecord` under `/sgpeer/<first 40 hex of sha256(peer id)>`: what a peer serves (model hash,
  block span `[start, end)`, dtype, quantization), how fast (decode/prefill tokens/s), how loaded
  (free KV-cache tokens, queue length), its software version, state, `ts` and `expires`.
- `ModelRecord` under `/sgmodel/<first 40 hex of sha256(model hash)>`: the model's names, family,
  shape, per-block content hashes and chat template.
- Provider keys, one per block: sha256 hex of `"<model hash>/block/<i>"`.

Records are msgpack maps of their fields (unknown fields are ignored, so newer peers can add
some). There are no signatures: validators bind each key to the record's content (the key must be
the hash of the peer id / model hash inside), reject expired records, records from the future
and oversized ones, and `select` keeps the newest `ts`. Short keys on purpose: py-libp2p's
Kademlia stops after one hop for keys longer than 50 bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Protocol

import msgpack

PEER_NAMESPACE: Final = "sgpeer"
MODEL_NAMESPACE: Final = "sgmodel"
KEY_HEX: Final = 40

MAX_PEER_RECORD_BYTES: Final = 4 * 1024
MAX_MODEL_RECORD_BYTES: Final = 64 * 1024
MAX_ADDRS: Final = 16
MAX_BLOCKS: Final = 4096
MAX_CLOCK_SKEW: Final = 120.0  # a record may be this far in the future (clock drift)
MAX_TTL: Final = 600.0  # expires - ts
DEFAULT_TTL: Final = 90.0
REPUBLISH_INTERVAL: Final = 30.0

ONLINE: Final = "online"
OFFLINE: Final = "offline"
STATES: Final = (ONLINE, OFFLINE)

Clock = Callable[[], float]


class RecordError(ValueError):
    """A record that does not decode or does not validate."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def peer_key(peer_id: str) -> str:
    return f"/{PEER_NAMESPACE}/{_digest(peer_id)[:KEY_HEX]}"


def model_key(model_hash: str) -> str:
    return f"/{MODEL_NAMESPACE}/{_digest(model_hash)[:KEY_HEX]}"


def block_key(model_hash: str, block: int) -> str:
    """The provider key of one block of a model."""
    return _digest(f"{model_hash}/block/{block}")


# ------------------------------------------------------------------------- field checks


def _str(v: Any, name: str, max_len: int = 256) -> str:
    if not isinstance(v, str) or len(v) > max_len:
        raise RecordError(f"{name} must be a string of at most {max_len} characters")
    return v


def _int(v: Any, name: str, lo: int = 0, hi: int = 2**53) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise RecordError(f"{name} must be an integer in [{lo}, {hi}]")
    return v


def _num(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise RecordError(f"{name} must be a finite non-negative number")
    return float(v)


def _strs(v: Any, name: str, max_items: int, max_len: int = 256) -> tuple[str, ...]:
    if not isinstance(v, list | tuple) or len(v) > max_items:
        raise RecordError(f"{name} must be a list of at most {max_items} strings")
    return tuple(_str(x, name, max_len) for x in v)


def _unpack(data: bytes, max_bytes: int, what: str) -> dict[str, Any]:
    if len(data) > max_bytes:
        raise RecordError(f"{what} record is {len(data)} bytes > {max_bytes}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except Exception as e:
        raise RecordError(f"{what} record is not msgpack: {type(e).__name__}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{what} record must be a map")
    return obj


def _no_ext(code: int, data: bytes) -> Any:
    raise RecordError("msgpack extension types are not allowed")


def _pack(record: Any) -> bytes:
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    packed: bytes = msgpack.packb(
        {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}, use_bin_type=True
    )
    return packed


def _required(obj: dict[str, Any], name: str) -> Any:
    if name not in obj:
        raise RecordError(f"missing field {name!r}")
    return obj[name]


# ------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PeerRecord:
    """A peer's capability record. `end` is exclusive."""

    peer_id: str
    addrs: tuple[str, ...]
    model_hash: str
    start: int
    end: int
    dtype: str = "float32"
    quant: str = "none"
    throughput_decode: float = 0.0  # tokens/s through the whole span
    throughput_prefill: float = 0.0
    cache_tokens_free: int = 0
    queue_len: int = 0
    version: str = ""
    state: str = ONLINE
    ts: float = 0.0
    expires: float = 0.0

    MAX_BYTES: ClassVar[int] = MAX_PEER_RECORD_BYTES

    @property
    def key(self) -> str:
        return peer_key(self.peer_id)

    @property
    def blocks(self) -> range:
        return range(self.start, self.end)

    @property
    def online(self) -> bool:
        return self.state == ONLINE

    def expired(self, now: float) -> bool:
        return self.expires <= now

    def stamped(self, now: float, ttl: float = DEFAULT_TTL, state: str | None = None) -> PeerRecord:
        """A copy timestamped `now`, valid for `ttl` seconds."""
        return dataclasses.replace(self, ts=now, expires=now + ttl, state=state or self.state)

    def to_bytes(self) -> bytes:
        data = _pack(self)
        if len(data) > MAX_PEER_RECORD_BYTES:
            raise RecordError(f"peer record is {len(data)} bytes > {MAX_PEER_RECORD_BYTES}")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> PeerRecord:
        o = _unpack(data, MAX_PEER_RECORD_BYTES, "peer")
        rec = cls(
            peer_id=_str(_required(o, "peer_id"), "peer_id", 128),
            addrs=_strs(_required(o, "addrs"), "addrs", MAX_ADDRS),
            model_hash=_str(_required(o, "model_hash"), "model_hash", 128),
            start=_int(_required(o, "start"), "start", 0, MAX_BLOCKS),
            end=_int(_required(o, "end"), "end", 0, MAX_BLOCKS),
            dtype=_str(o.get("dtype", "float32"), "dtype", 32),
            quant=_str(o.get("quant", "none"), "quant", 32),
            throughput_decode=_num(o.get("throughput_decode", 0.0), "throughput_decode"),
            throughput_prefill=_num(o.get("throughput_prefill", 0.0), "throughput_prefill"),
            cache_tokens_free=_int(o.get("cache_tokens_free", 0), "cache_tokens_free"),
            queue_len=_int(o.get("queue_len", 0), "queue_len"),
            version=_str(o.get("version", ""), "version", 64),
            state=_str(_required(o, "state"), "state", 16),
            ts=_num(_required(o, "ts"), "ts"),
            expires=_num(_required(o, "expires"), "expires"),
        )
        if rec.start >= rec.end:
            raise RecordError(f"empty span [{rec.start}, {rec.end})")
        if rec.state not in STATES:
            raise RecordError(f"state must be one of {STATES}")
        return rec

    def check(self, key: str, now: float) -> None:
        """Raise RecordError unless this record may live under `key` at time `now`."""
        if key != self.key:
            raise RecordError("key does not match the record's peer id")
        _check_times(self.ts, now)
        if self.expires <= self.ts or self.expires - self.ts > MAX_TTL:
            raise RecordError(f"lifetime must be in (0, {MAX_TTL}] seconds")
        if self.expired(now):
            raise RecordError("record expired")


@dataclass(frozen=True)
class ModelRecord:
    """A model's identity and shape, published by the peers that load it."""

    name: str
    model_hash: str
    family: str
    num_blocks: int
    hidden_size: int
    block_hashes: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    chat_template: str | None = None
    ts: float = 0.0

    MAX_BYTES: ClassVar[int] = MAX_MODEL_RECORD_BYTES

    @property
    def key(self) -> str:
        return model_key(self.model_hash)

    def to_bytes(self) -> bytes:
        data = _pack(self)
        if len(data) > MAX_MODEL_RECORD_BYTES:
            raise RecordError(f"model record is {len(data)} bytes > {MAX_MODEL_RECORD_BYTES}")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelRecord:
        o = _unpack(data, MAX_MODEL_RECORD_BYTES, "model")
        template = o.get("chat_template")
        rec = cls(
            name=_str(_required(o, "name"), "name"),
            model_hash=_str(_required(o, "model_hash"), "model_hash", 128),
            family=_str(_required(o, "family"), "family", 64),
            num_blocks=_int(_required(o, "num_blocks"), "num_blocks", 1, MAX_BLOCKS),
            hidden_size=_int(_required(o, "hidden_size"), "hidden_size", 1, 2**20),
            block_hashes=_strs(o.get("block_hashes", []), "block_hashes", MAX_BLOCKS, 128),
            aliases=_strs(o.get("aliases", []), "aliases", 32),
            chat_template=None if template is None else _str(template, "chat_template", 32768),
            ts=_num(_required(o, "ts"), "ts"),
        )
        if rec.block_hashes and len(rec.block_hashes) != rec.num_blocks:
            raise RecordError("block_hashes must list one hash per block")
        return rec

    def check(self, key: str, now: float) -> None:
        if key != self.key:
            raise RecordError("key does not match the record's model hash")
        _check_times(self.ts, now)


def _check_times(ts: float, now: float) -> None:
    if ts > now + MAX_CLOCK_SKEW:
        raise RecordError("record timestamped in the future")


# ------------------------------------------------------------------------- validators


@dataclass
class RecordValidator:
    """KadDHT validator for one record type: strict decode, key binding, expiry, newest wins."""

    decode: Callable[[bytes], PeerRecord | ModelRecord]
    clock: Clock = field(default=time.time)

    def parse(self, key: str, value: bytes) -> PeerRecord | ModelRecord:
        rec = self.decode(value)
        rec.check(key, self.clock())
        return rec

    def validate(self, key: str, value: bytes) -> None:
        self.parse(key, value)

    def select(self, key: str, values: list[bytes]) -> int:
        """Index of the best value: valid before invalid, then newest `ts`, then latest
        expiry, then the larger encoding (deterministic everywhere); ties go to the later
        index, so a re-sent copy of the stored value is accepted."""
        if not values:
            raise ValueError("no values to select from")
        best, best_rank = 0, None
        for i, value in enumerate(values):
            try:
                rec = self.parse(key, value)
                expires = rec.expires if isinstance(rec, PeerRecord) else 0.0
                rank: tuple[Any, ...] = (1, rec.ts, expires, value)
            except (RecordError, ValueError):
                rank = (0, 0.0, 0.0, b"")
            if best_rank is None or rank >= best_rank:
                best, best_rank = i, rank
        return best


def peer_validator(clock: Clock = time.time) -> RecordValidator:
    return RecordValidator(PeerRecord.from_bytes, clock)


def model_validator(clock: Clock = time.time) -> RecordValidator:
    return RecordValidator(ModelRecord.from_bytes, clock)


class _ValidatorHost(Protocol):
    def register_validator(self, namespace: str, validator: Any) -> None: ...


def register_validators(node: _ValidatorHost, clock: Clock = time.time) -> None:
    """Register the `sgpeer` and `sgmodel` validators on a P2PNode."""
    node.register_validator(PEER_NAMESPACE, peer_validator(clock))
    node.register_validator(MODEL_NAMESPACE, model_validator(clock))


def decode_peer_record(value: bytes | None, key: str, now: float) -> PeerRecord | None:
    """A valid, unexpired record for `key`, or None."""
    if value is None:
        return None
    try:
        rec = PeerRecord.from_bytes(value)
        rec.check(key, now)
    except RecordError:
        return None
    return rec


def decode_model_record(value: bytes | None, key: str, now: float) -> ModelRecord | None:
    if value is None:
        return None
    try:
        rec = ModelRecord.from_bytes(value)
        rec.check(key, now)
    except RecordError:
        return None
    return rec
