"""Lanes: a peer's hot-path streams straight over TCP, encrypted and authenticated by Noise.

py-libp2p runs Noise and Yamux in Python on its trio thread, and every frame crosses between
that thread and the asyncio loop twice. On loopback an empty frame's round trip costs ~2.3 ms
there and bulk transfers reach 60–75 MB/s, where a plain socket does 0.09 ms and 500+ MB/s. A
lane carries the same frames (`swarm.wire`) on the asyncio loop that produces and consumes
them, over a TCP connection of its own, as Noise transport messages
(`Noise_NNpsk0_25519_ChaChaPoly_SHA256`, from the `noiseprotocol` package py-libp2p's Noise is
built on). Nothing ever goes out in plaintext but the ticket id.

Authentication rides on libp2p. The client makes a fresh ticket (a 16-byte id and a 32-byte
key) and hands it to the peer on an ordinary libp2p stream (`/swarmgate/lane/1`), which
libp2p's Noise XX has bound to both identities; the peer answers with its lane port. The TCP
connection presents the ticket id and runs the psk handshake with that key (ephemeral keys
too, so past traffic stays secret), so each side talks to the libp2p identity it gave the
ticket to or took it from. Tickets are single-use and expire after `TICKET_TTL`; a connection
that does not finish its handshake within `HANDSHAKE_TIMEOUT` is dropped; frames obey the same
`WireLimits` as libp2p streams.

On the TCP connection: the client sends `MAGIC`, the ticket id and the first handshake
message; the peer answers with the second; then both sides send Noise messages (2-byte
big-endian length, then the ciphertext of at most `MAX_PLAINTEXT` bytes) whose plaintexts, in
order, are a sequence of wire frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import torch
from cryptography.exceptions import InvalidTag
from noise.connection import NoiseConnection
from noise.exceptions import NoiseInvalidMessage

from swarm import busy_poll
from swarm.p2p import FrameStream, P2PNode, StreamClosedError, StreamResetError
from swarm.p2p.stream import ReceivedFrames
from swarm.wire import (
    BAD_REQUEST,
    DEFAULT_LIMITS,
    INTERNAL,
    NOT_FOUND,
    WireError,
    WireLimits,
    encode_frame,
    encode_frame_bytes,
    error_header,
    read_frame,
)

log = logging.getLogger("swarmgate.lanes")

LANE_PROTOCOL: Final = "/swarmgate/lane/1"
MAGIC: Final = b"swarmgate-lane/1"
NOISE_NAME: Final = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
TICKET_BYTES: Final = 16
KEY_BYTES: Final = 32
TICKET_TTL: Final = 10.0  # seconds a ticket waits for its connection
HANDSHAKE_TIMEOUT: Final = 5.0
FRAME_TIMEOUT: Final = 60.0  # seconds a frame may take once its first bytes arrived
MAX_TICKETS_PER_REMOTE: Final = 16  # tickets waiting plus lanes open, per remote identity
MAX_TICKETS: Final = 1024
MAX_LANES: Final = 512
MAX_HANDSHAKES: Final = 64  # connections not yet authenticated
MAX_NOISE_MESSAGE: Final = 65535
MAX_PLAINTEXT: Final = MAX_NOISE_MESSAGE - 16  # the Poly1305 tag
QUEUED_FRAMES: Final = 2  # frames read ahead of the consumer
REFUSE_SECONDS: Final = 2.0  # after a malformed frame, what the remote still sends is dropped
REFUSE_PAUSE: Final = 0.2  # for this long, or until it pauses this long
LENGTH = struct.Struct(">H")

LaneHandler = Callable[["LaneStream"], Awaitable[None]]


def _noise(initiator: bool, key: bytes, ticket: bytes) -> NoiseConnection:
    noise = NoiseConnection.from_name(NOISE_NAME)
    noise.set_psks(psk=key)
    noise.set_prologue(MAGIC + ticket)
    if initiator:
        noise.set_as_initiator()
    else:
        noise.set_as_responder()
    noise.start_handshake()
    return noise


class LaneStream(ReceivedFrames):
    """A framed stream over a lane, with `FrameStream`'s interface (send, recv, close, reset).

    A reader task decodes frames ahead of the consumer (at most `QUEUED_FRAMES`, so a slow
    consumer pushes back through TCP). `recv` raises `StreamClosedError` after the remote
    closed, `StreamResetError` after a broken connection or a message that fails to decrypt,
    or the `WireError` of a malformed frame (which also gets the remote an error frame).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        noise: NoiseConnection,
        remote_peer_id: str,
        protocol: str,
        limits: WireLimits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(QUEUED_FRAMES)
        self.remote_peer_id = remote_peer_id
        self.protocol = protocol
        self.limits = limits
        self._reader = reader
        self._writer = writer
        self._noise = noise
        self._plain = bytearray()
        self._send_lock = asyncio.Lock()
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop(), name="lane")

    # -- reading --------------------------------------------------------------------------

    async def _fill(self) -> bool:
        """Decrypt the next Noise message into the buffer unless it holds bytes already;
        False at a clean end between messages."""
        while not self._plain:
            try:
                head = await self._reader.readexactly(LENGTH.size)
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    raise StreamResetError("lane cut inside a message") from None
                return False
            (size,) = LENGTH.unpack(head)
            try:
                sealed = await self._reader.readexactly(size)
            except asyncio.IncompleteReadError:
                raise StreamResetError("lane cut inside a message") from None
            try:
                self._plain += self._noise.decrypt(sealed)
            except (InvalidTag, NoiseInvalidMessage):
                raise StreamResetError("a lane message failed to decrypt") from None
        return True

    async def _read_some(self, n: int) -> bytes:
        """Up to n plaintext bytes; b"" at a clean end between Noise messages."""
        if not await self._fill():
            return b""
        if len(self._plain) <= n:
            chunk = bytes(self._plain)
            self._plain.clear()
            return chunk
        chunk = bytes(self._plain[:n])
        del self._plain[:n]
        return chunk

    async def _read_loop(self) -> None:
        end: WireError = StreamClosedError()
        try:
            while await self._fill():  # no deadline for the next frame's first bytes
                # a frame's payload is allocated once its header arrived: a remote that starts
                # one must finish it in time, or the lane ends and the memory is freed
                try:
                    async with asyncio.timeout(FRAME_TIMEOUT):
                        frame = await read_frame(self._read_some, self.limits)
                except TimeoutError:
                    raise StreamResetError(
                        f"a frame was not finished within {FRAME_TIMEOUT:.0f} s"
                    ) from None
                if frame is None:
                    break
                busy_poll.poke()  # the answer (or the next message) follows shortly
                await self._queue.put(frame)
        except asyncio.CancelledError:
            end = StreamClosedError("stream closed locally")
            raise
        except StreamResetError as e:
            end = e
        except WireError as e:  # the remote broke framing or limits: tell it why, then hang up
            end = e
            await self._refuse(e)
        except (ConnectionError, OSError) as e:
            end = StreamResetError(f"lane broke: {type(e).__name__}")
        except Exception as e:  # whatever it was, the lane is unusable: a reset, not a close
            log.debug("lane read failed", exc_info=True)
            end = StreamResetError(f"lane read failed: {type(e).__name__}")
        finally:
            self._deliver_end(end)
            if isinstance(end, StreamResetError):
                self._writer.transport.abort()

    async def _refuse(self, error: WireError) -> None:
        """Send the error frame, then read and drop what the remote is still sending (for at
        most `REFUSE_SECONDS`, until it pauses): closing a socket with unread data resets the
        connection, and the remote would lose the error frame explaining why."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(REFUSE_SECONDS):
                await self._send_parts([encode_frame_bytes(error.to_header())])
                while True:
                    async with asyncio.timeout(REFUSE_PAUSE):
                        if not await self._reader.read(1 << 16):
                            break
        self._writer.close()

    def _deliver_end(self, end: WireError) -> None:
        try:
            self._queue.put_nowait(end)
        except asyncio.QueueFull:  # the consumer is behind: make room after its frames
            items = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
            self._queue = asyncio.Queue()
            for item in [*items, end]:
                self._queue.put_nowait(item)

    # -- writing --------------------------------------------------------------------------

    def _seal(self, parts: Sequence[bytes | memoryview]) -> list[bytes]:
        data = b"".join(parts)  # noiseprotocol takes bytes only; a whole-length slice is no copy
        out: list[bytes] = []
        for offset in range(0, len(data), MAX_PLAINTEXT):
            sealed = self._noise.encrypt(data[offset : offset + MAX_PLAINTEXT])
            out += (LENGTH.pack(len(sealed)), sealed)
        return out

    async def _send_parts(self, parts: Sequence[bytes | memoryview]) -> None:
        async with self._send_lock:
            # the whole frame goes into the transport's buffer at once: a cancelled drain
            # cannot leave half a frame behind
            try:
                self._writer.writelines(self._seal(parts))
                await self._writer.drain()
            except (ConnectionError, OSError) as e:
                raise StreamResetError(f"lane broke: {type(e).__name__}") from None

    async def send(self, header: Mapping[str, Any], tensors: Sequence[torch.Tensor] = ()) -> None:
        if self._closed or self._writer.is_closing():
            raise StreamClosedError("stream closed locally")
        busy_poll.poke()  # its answer is on its way soon
        await self._send_parts(encode_frame(header, tensors, self.limits))

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are, unframed but encrypted (fuzzing and protocol tests only)."""
        if self._closed:
            raise StreamClosedError("stream closed locally")
        await self._send_parts([data])

    # -- ending ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Finish the lane: what was sent is flushed, then the connection ends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._read_task.cancel()
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def reset(self) -> None:
        self.reset_nowait()

    def reset_nowait(self) -> None:
        """Abort the connection at once (the remote's reader sees it broken)."""
        self._closed = True
        self._read_task.cancel()
        transport = self._writer.transport
        transport.abort()

    def __repr__(self) -> str:
        return f"LaneStream({self.protocol} with {self.remote_peer_id[-8:]})"


# ------------------------------------------------------------------------------ peer side


@dataclass
class _Ticket:
    remote_peer_id: str
    protocol: str
    key: bytes
    expires: float


class LaneServer:
    """The peer's lane listener: takes tickets over libp2p, then serves the connections.

    `handlers` maps a protocol to what serves its streams (the same handler as the libp2p
    protocol). Register `take_ticket` as the libp2p handler of `LANE_PROTOCOL`.
    """

    def __init__(
        self,
        handlers: Mapping[str, LaneHandler],
        host: str = "127.0.0.1",
        port: int = 0,
        limits: WireLimits = DEFAULT_LIMITS,
    ) -> None:
        self.handlers = dict(handlers)
        self.host = host
        self.port = port
        self.limits = limits
        self.opened = 0  # lanes served since start
        self.refused = 0  # connections dropped before or during the handshake
        self._tickets: dict[bytes, _Ticket] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshaking = 0
        self._lanes_of: dict[str, int] = {}  # remote → its open lanes

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, limit=MAX_NOISE_MESSAGE + LENGTH.size
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        self._server = None

    def _expire(self, now: float) -> None:
        for ticket_id, ticket in list(self._tickets.items()):
            if ticket.expires <= now:
                del self._tickets[ticket_id]

    def admit(self, remote_peer_id: str, protocol: str, ticket: bytes, key: bytes) -> None:
        """Hold a ticket for one connection of `remote_peer_id` (already authenticated)."""
        if protocol not in self.handlers:
            raise WireError(NOT_FOUND, f"no lanes for {protocol!r}")
        if len(ticket) != TICKET_BYTES or len(key) != KEY_BYTES:
            raise WireError(BAD_REQUEST, "a ticket is 16 bytes of id and 32 bytes of key")
        now = time.monotonic()
        self._expire(now)
        held = sum(t.remote_peer_id == remote_peer_id for t in self._tickets.values())
        held += self._lanes_of.get(remote_peer_id, 0)
        if held >= MAX_TICKETS_PER_REMOTE or len(self._tickets) >= MAX_TICKETS:
            raise WireError("busy", "too many lane tickets waiting")
        if ticket in self._tickets:
            raise WireError(BAD_REQUEST, "this ticket id is taken")
        self._tickets[ticket] = _Ticket(remote_peer_id, protocol, key, now + TICKET_TTL)

    async def take_ticket(self, stream: FrameStream) -> None:
        """The libp2p handler of `LANE_PROTOCOL`: one ticket in, the lane's port out."""
        frame = await stream.recv()
        header = frame.header
        ticket, key, protocol = header.get("ticket"), header.get("key"), header.get("protocol")
        if header.get("type") != "lane" or not isinstance(protocol, str):
            raise WireError(BAD_REQUEST, "expected a lane ticket")
        if not isinstance(ticket, bytes) or not isinstance(key, bytes):
            raise WireError(BAD_REQUEST, "a ticket's id and key are bytes")
        self.admit(stream.remote_peer_id, protocol, ticket, key)
        await stream.send({"type": "lane", "port": self.port})

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # closing: the task ends here
            await self._accept_one(reader, writer)

    async def _accept_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._handshaking >= MAX_HANDSHAKES or len(self._tasks) >= MAX_LANES + MAX_HANDSHAKES:
            writer.transport.abort()
            self.refused += 1
            return
        self._tasks.add(task)
        self._handshaking += 1
        try:
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    lane = await self._handshake(reader, writer)
            except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
                lane = None
            except Exception as e:  # a malformed handshake message, say
                log.debug("lane handshake failed: %s", e)
                lane = None
            finally:
                self._handshaking -= 1
            if lane is None or len(self._tasks) - self._handshaking > MAX_LANES:
                self.refused += 1
                writer.transport.abort()
                return
            remote = lane.remote_peer_id
            self._lanes_of[remote] = self._lanes_of.get(remote, 0) + 1
            self.opened += 1
            try:
                await self._serve(lane)
            finally:
                if self._lanes_of[remote] <= 1:
                    del self._lanes_of[remote]
                else:
                    self._lanes_of[remote] -= 1
        finally:
            self._tasks.discard(task)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> LaneStream | None:
        hello = await reader.readexactly(len(MAGIC) + TICKET_BYTES + LENGTH.size)
        if hello[: len(MAGIC)] != MAGIC:
            return None
        ticket_id = hello[len(MAGIC) : len(MAGIC) + TICKET_BYTES]
        ticket = self._tickets.pop(ticket_id, None)
        if ticket is None or ticket.expires <= time.monotonic():
            return None
        (size,) = LENGTH.unpack(hello[-LENGTH.size :])
        noise = _noise(False, ticket.key, ticket_id)
        noise.read_message(await reader.readexactly(size))
        answer = bytes(noise.write_message())
        writer.write(LENGTH.pack(len(answer)) + answer)
        await writer.drain()
        if not noise.handshake_finished:
            return None
        remote, protocol = ticket.remote_peer_id, ticket.protocol
        return LaneStream(reader, writer, noise, remote, protocol, self.limits)

    async def _serve(self, lane: LaneStream) -> None:
        """Run the protocol's handler; like a libp2p handler, a `WireError` it raises goes
        back as an error frame and anything else as `internal`."""
        try:
            await self.handlers[lane.protocol](lane)
        except asyncio.CancelledError:
            lane.reset_nowait()
            raise
        except WireError as e:
            with contextlib.suppress(WireError):
                await lane.send(e.to_header())
        except Exception:
            log.exception("lane handler for %s failed", lane.protocol)
            with contextlib.suppress(WireError):
                await lane.send(error_header(INTERNAL, "internal error"))
        await lane.close()


# ------------------------------------------------------------------------------ client side

_ADDR = re.compile(r"^/(ip4|ip6)/([^/]+)/tcp/\d+")


def listen_host(listen: Sequence[str], default: str = "127.0.0.1") -> str:
    """The host of the first TCP listen address (where a peer's lanes listen too)."""
    for addr in listen:
        match = _ADDR.match(addr)
        if match:
            return match.group(2)
    return default


def lane_host(addrs: Sequence[str]) -> str:
    """Where to dial a peer's lane: the host of the first TCP address we know it by (from its
    record, which libp2p dials too). Never a host the peer names itself: a peer must not be
    able to point gateways at other machines."""
    for addr in addrs:
        match = _ADDR.match(addr)
        if match:
            return match.group(2)
    raise WireError("unavailable", "no TCP address of the peer is known")


async def open_lane(
    node: P2PNode,
    peer_id: str,
    protocol: str,
    addrs: Sequence[str] = (),
    limits: WireLimits = DEFAULT_LIMITS,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> LaneStream:
    """A lane to `peer_id` for `protocol`: a ticket over libp2p, then TCP and the handshake.

    Raises a `WireError` when the peer offers no lane (an older peer, lanes switched off) or
    the connection fails; callers fall back to a libp2p stream.
    """
    host = lane_host(addrs)
    ticket, key = secrets.token_bytes(TICKET_BYTES), secrets.token_bytes(KEY_BYTES)
    header = {"type": "lane", "protocol": protocol, "ticket": ticket, "key": key}
    reply = await node.request(peer_id, LANE_PROTOCOL, header, timeout=timeout, addrs=list(addrs))
    port = reply.header.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise WireError("bad_response", "the peer's lane offer has no port")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, limit=MAX_NOISE_MESSAGE + LENGTH.size
            )
            noise = _noise(True, key, ticket)
            first = bytes(noise.write_message())
            writer.write(MAGIC + ticket + LENGTH.pack(len(first)) + first)
            await writer.drain()
            (size,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
            noise.read_message(await reader.readexactly(size))
            if not noise.handshake_finished:
                raise WireError("unavailable", "the lane handshake did not finish")
    except BaseException as e:
        if writer is not None:
            writer.transport.abort()
        if isinstance(e, WireError | asyncio.CancelledError):
            raise
        if isinstance(e, Exception):
            raise WireError("unavailable", f"lane to {host}:{port} failed: {e!r}") from None
        raise
    return LaneStream(reader, writer, noise, peer_id, protocol, limits)
