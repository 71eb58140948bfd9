"""`P2PNode`: the asyncio facade over one process's libp2p host and Kademlia DHT.

Everything libp2p runs in one trio thread (`TrioThread`); methods named `_t_*` run there, the
public coroutines run on the caller's asyncio loop and only pass bytes, str, plain dicts and
tensors across. Security is Noise only (py-libp2p's default host would also accept plaintext
and secio), the muxer is Yamux only (Mplex breaks on messages >= 1 MiB), and one connection per
peer is kept (the default config waits 250 ms on every dial).

Handlers registered with `serve` run as asyncio tasks, one per inbound stream; a remote reset
cancels the task, and when a caller cancels `request` the stream is reset so the remote handler
is cancelled too. Model compute belongs in an executor: never block the event loop of either
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from swarm.p2p.bridge import TrioThread, describe
from swarm.p2p.dht import fresh_find_providers, fresh_get
from swarm.p2p.errors import DialError, NodeStoppedError, P2PError, RequestTimeoutError
from swarm.p2p.identity import KnownPeers, known_peers_path, load_or_create_identity
from swarm.p2p.logs import tame_libp2p_logging
from swarm.p2p.ping import PING_PROTOCOL, PingService
from swarm.p2p.stream import FrameStream, StreamPump
from swarm.wire import DEFAULT_LIMITS, INTERNAL, Frame, WireError, WireLimits, error_header

log = logging.getLogger(__name__)

Handler = Callable[[FrameStream], Awaitable[None]]
DEFAULT_LISTEN = ("/ip4/127.0.0.1/tcp/0",)
MAINTENANCE_INTERVAL = 30.0
# every node of a swarm is ours; KadDHT's default (10 ADD_PROVIDER per 10 s per peer) would
# silently drop the per-block provider records of any peer serving more than 10 blocks
PROVIDER_RATE_MAX = 4096


class Validator(Protocol):
    """What KadDHT calls for the keys of one namespace (runs in the trio thread)."""

    def validate(self, key: str, value: bytes) -> None: ...

    def select(self, key: str, values: list[bytes]) -> int: ...


def _peer_id(peer_id: str) -> ID:
    try:
        return ID.from_base58(peer_id)
    except Exception as e:
        raise P2PError(f"not a peer id: {peer_id!r} ({describe(e)})") from None


def _maddrs(addrs: Sequence[str] | None) -> list[Multiaddr]:
    out = []
    for a in addrs or ():
        try:
            out.append(Multiaddr(a))
        except Exception as e:
            raise P2PError(f"bad multiaddr {a!r}: {describe(e)}") from None
    return out


def _strip_p2p(addr: Multiaddr) -> Multiaddr:
    text = str(addr)
    return Multiaddr(text.split("/p2p/")[0]) if "/p2p/" in text else addr


class P2PNode:
    """One process's presence in the swarm: libp2p host, DHT, stream handlers, ping."""

    def __init__(
        self,
        identity_path: Path | None = None,
        listen: Sequence[str] = DEFAULT_LISTEN,
        bootstrap: Sequence[str] = (),
        dht_mode: Literal["server", "client"] = "server",
        announce: Sequence[str] | None = None,
        *,
        limits: WireLimits = DEFAULT_LIMITS,
        connect_timeout: float = 5.0,
        verbose_libp2p: bool = False,
    ) -> None:
        if dht_mode not in ("server", "client"):
            raise ValueError(f"dht_mode must be 'server' or 'client', not {dht_mode!r}")
        self.identity_path = identity_path
        self._key_pair = load_or_create_identity(identity_path)
        self.peer_id: str = str(ID.from_pubkey(self._key_pair.public_key))
        self.listen = [str(a) for a in listen]
        self.bootstrap = [str(a) for a in bootstrap]
        self.dht_mode = dht_mode
        self.announce = list(announce) if announce is not None else None
        self.limits = limits
        self.connect_timeout = connect_timeout
        self.verbose_libp2p = verbose_libp2p
        self.listen_maddrs: list[str] = []
        self.known = KnownPeers.load(known_peers_path(identity_path) if identity_path else None)
        self._bridge = TrioThread(name=f"p2p-{self.peer_id[-6:]}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._host: IHost | None = None
        self._dht: KadDHT | None = None
        self._ping: PingService | None = None
        self._validators: dict[str, Validator] = {}
        self._handlers: dict[str, Handler] = {}
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._started = False

    # ================================================================== lifecycle

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("node already started")
        tame_libp2p_logging(self.verbose_libp2p)
        self._loop = asyncio.get_running_loop()
        self._started = True
        try:
            await self._bridge.start(self._t_body)
            await self._bridge.call(self._t_bootstrap)
        except BaseException:
            await self.stop()
            raise
        self._bridge.spawn(self._t_maintenance)

    async def stop(self) -> None:
        """Cancel handlers, close every stream and connection, join the thread. Idempotent."""
        if not self._started:
            return
        tasks = list(self._handler_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._bridge.stop()
        self._started = False

    async def __aenter__(self) -> P2PNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._started and self._bridge.running

    @asynccontextmanager
    async def _t_body(self) -> AsyncIterator[None]:
        """Build and run the host and the DHT for the life of the trio thread."""
        kp = self._key_pair
        noise = NoiseTransport(kp, noise_privkey=create_x25519_key_pair().private_key)
        listen = _maddrs(self.listen)
        host = new_host(
            key_pair=kp,
            sec_opt={NOISE_PROTOCOL_ID: noise},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            listen_addrs=listen,
            connection_config=ConnectionConfig(max_connections_per_peer=1),
            announce_addrs=_maddrs(self.announce) if self.announce is not None else None,
        )
        mode = DHTMode.SERVER if self.dht_mode == "server" else DHTMode.CLIENT
        dht = KadDHT(host, mode, strict_validation=True)
        dht._provider_rate_max = PROVIDER_RATE_MAX
        for namespace, validator in self._validators.items():
            dht.register_validator(namespace, validator)  # type: ignore[arg-type]
        ping = PingService(host)
        host.set_stream_handler(TProtocol(PING_PROTOCOL), ping.handle)
        for protocol in self._handlers:
            self._t_set_handler(host, protocol)
        async with host.run(listen), background_trio_service(dht):
            self._host, self._dht, self._ping = host, dht, ping
            if listen and not host.get_transport_addrs():
                # py-libp2p logs a failed bind (port taken, address not local) and carries on
                with trio.move_on_after(5) as scope:
                    scope.shield = True
                    await host.close()
                raise P2PError(f"could not listen on {', '.join(self.listen)}")
            self.listen_maddrs = [str(a) for a in host.get_addrs()]
            try:
                yield
            finally:
                with trio.CancelScope(shield=True):
                    self._t_remember_peers()
                    with trio.move_on_after(2):
                        await ping.close()
                    # leaving host.run() does not close connections (their sockets would
                    # linger in CLOSE_WAIT): close the network explicitly
                    with trio.move_on_after(5):
                        await host.close()
                self._host = self._dht = self._ping = None

    # ================================================================== peers

    def _t_host(self) -> IHost:
        if self._host is None:
            raise NodeStoppedError()
        return self._host

    def _t_dht(self) -> KadDHT:
        if self._dht is None:
            raise NodeStoppedError()
        return self._dht

    async def _t_connect(self, pid: ID, addrs: Sequence[Multiaddr] = ()) -> None:
        host = self._t_host()
        if host.get_network().connections.get(pid):
            return
        store = host.get_peerstore()
        if addrs:
            store.add_addrs(pid, [_strip_p2p(a) for a in addrs], 0)
        try:
            known = store.addrs(pid)
        except Exception:
            known = []
        if not known:
            with trio.move_on_after(self.connect_timeout):
                info = await self._t_dht().find_peer(pid)
                if info is not None:
                    known = list(info.addrs)
        if not known:
            raise DialError(f"no address known for peer {pid}")
        try:
            with trio.fail_after(self.connect_timeout):
                await host.connect(PeerInfo(pid, known))
        except trio.TooSlowError:
            raise DialError(f"dialing {pid} timed out") from None
        except Exception as e:
            raise DialError(f"cannot connect to {pid}: {describe(e)}") from None
        # the accepting side only adds us after identify; the dialer adds the peer itself
        with contextlib.suppress(Exception):
            await self._t_dht().add_peer(pid)
        self.known.note(str(pid), [str(a) for a in known])

    async def _t_connect_maddr(self, maddr: str) -> str:
        try:
            info = info_from_p2p_addr(Multiaddr(maddr))
        except Exception as e:
            raise P2PError(f"bad peer address {maddr!r} (needs /p2p/<id>): {describe(e)}") from None
        await self._t_connect(info.peer_id, info.addrs)
        return str(info.peer_id)

    async def _t_try_connect_all(self, targets: Sequence[tuple[ID, list[Multiaddr]]]) -> int:
        ok = [0]

        async def one(pid: ID, addrs: list[Multiaddr]) -> None:
            try:
                await self._t_connect(pid, addrs)
                ok[0] += 1
            except WireError as e:
                log.info("bootstrap peer %s unreachable: %s", pid, e.message)

        async with trio.open_nursery() as nursery:
            for pid, addrs in targets:
                if pid != self._t_host().get_id():
                    nursery.start_soon(one, pid, addrs)
        return ok[0]

    async def _t_bootstrap(self) -> int:
        """Dial the bootstrap peers; fall back to the peers remembered from earlier runs."""
        targets: list[tuple[ID, list[Multiaddr]]] = []
        for maddr in self.bootstrap:
            try:
                info = info_from_p2p_addr(Multiaddr(maddr))
            except Exception as e:
                raise P2PError(f"bad bootstrap address {maddr!r}: {describe(e)}") from None
            targets.append((info.peer_id, list(info.addrs)))
        connected = await self._t_try_connect_all(targets) if targets else 0
        if connected == 0 and self.known.peers:
            remembered = [(_peer_id(pid), _maddrs(addrs)) for pid, addrs in self.known.newest()]
            remembered = [
                (pid, addrs) for pid, addrs in remembered if pid not in {t[0] for t in targets}
            ]
            connected = await self._t_try_connect_all(remembered)
        if connected:
            with trio.move_on_after(10), contextlib.suppress(Exception):
                await self._t_dht().refresh_routing_table()
        elif self.bootstrap:
            log.warning("no bootstrap peer reachable; running alone until one is")
        return connected

    def _t_remember_peers(self) -> None:
        host = self._host
        if host is None:
            return
        store = host.get_peerstore()
        for pid in host.get_connected_peers():
            with contextlib.suppress(Exception):
                self.known.note(str(pid), [str(a) for a in store.addrs(pid)])
        with contextlib.suppress(OSError):
            self.known.save()

    async def _t_maintenance(self) -> None:
        while True:
            await trio.sleep(MAINTENANCE_INTERVAL)
            self._t_remember_peers()
            if not self._t_host().get_connected_peers() and (self.bootstrap or self.known.peers):
                with contextlib.suppress(WireError):
                    await self._t_bootstrap()

    # ================================================================== streams

    def _t_set_handler(self, host: IHost, protocol: str) -> None:
        async def on_stream(net_stream: INetStream) -> None:
            await self._t_inbound(net_stream, protocol)

        host.set_stream_handler(TProtocol(protocol), on_stream)

    async def _t_inbound(self, net_stream: INetStream, protocol: str) -> None:
        """libp2p's handler for an inbound stream: run the asyncio handler for its life.

        Must never raise (a raising handler breaks the connection in py-libp2p).
        """
        loop, handler = self._loop, self._handlers.get(protocol)
        if loop is None or handler is None:
            with contextlib.suppress(Exception):
                await net_stream.reset()
            return
        pump = StreamPump(net_stream, self.limits)
        stream = FrameStream(self._bridge, loop, pump.remote_peer_id, protocol, self.limits)
        stream.attach(pump)
        done = trio.Event()
        pump.on_reset = lambda: self._post(stream._cancel_handler)

        def start_task() -> None:  # asyncio thread
            task = loop.create_task(self._run_handler(handler, stream))
            stream._handler_task = task
            self._handler_tasks.add(task)

            def finished(t: asyncio.Task[None]) -> None:
                self._handler_tasks.discard(t)
                self._bridge.run_sync_soon(done.set)

            task.add_done_callback(finished)

        try:
            self._post(start_task)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump.read_loop)
                await done.wait()
                nursery.cancel_scope.cancel()
        except trio.Cancelled:  # the node is stopping
            self._post(stream._cancel_handler)
            with trio.CancelScope(shield=True):
                await pump.reset()
            raise
        except Exception as e:  # never let libp2p see it
            log.warning("inbound %s stream failed: %s", protocol, describe(e))
            self._post(stream._cancel_handler)
            with trio.CancelScope(shield=True):
                await pump.reset()

    def _post(self, fn: Callable[[], Any]) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(fn)

    async def _run_handler(self, handler: Handler, stream: FrameStream) -> None:
        try:
            await handler(stream)
        except asyncio.CancelledError:
            stream.reset_nowait()
            return
        except WireError as e:
            await self._reply_error(stream, e.to_header())
            return
        except Exception:
            log.exception("handler for %s failed", stream.protocol)
            await self._reply_error(stream, error_header(INTERNAL, "internal error"))
            return
        await stream.close()

    @staticmethod
    async def _reply_error(stream: FrameStream, header: dict[str, Any]) -> None:
        with contextlib.suppress(WireError):
            if not stream.closed:
                await stream.send(header)
        await stream.close()

    async def serve(self, protocol: str, handler: Handler) -> None:
        """Run `await handler(stream)` for every inbound stream of `protocol`.

        When the handler returns the stream is closed; if it raises a `WireError` the remote
        gets that error frame, any other exception an `internal` error frame. A reset by the
        remote cancels the handler task.
        """
        self._handlers[protocol] = handler
        if self._bridge.running:
            await self._bridge.call(self._t_set_handler_async, protocol)

    async def _t_set_handler_async(self, protocol: str) -> None:
        self._t_set_handler(self._t_host(), protocol)

    async def _t_open(
        self, peer_id: str, protocol: str, addrs: list[str] | None, stream: FrameStream
    ) -> None:
        pid = _peer_id(peer_id)
        await self._t_connect(pid, _maddrs(addrs))
        try:
            net_stream = await self._t_host().new_stream(pid, [TProtocol(protocol)])
        except trio.Cancelled:
            raise
        except Exception as e:
            raise DialError(f"cannot open {protocol} to {peer_id}: {describe(e)}") from None
        pump = StreamPump(net_stream, self.limits)
        stream.attach(pump)
        self._bridge.nursery.start_soon(pump.read_loop)

    async def open_stream(
        self, peer_id: str, protocol: str, addrs: list[str] | None = None
    ) -> FrameStream:
        """A long-lived framed stream to `peer_id` (dialing it first if needed)."""
        loop = asyncio.get_running_loop()
        stream = FrameStream(self._bridge, loop, peer_id, protocol, self.limits)
        try:
            await self._bridge.call(self._t_open, peer_id, protocol, addrs, stream)
        except asyncio.CancelledError:
            stream.reset_nowait()  # it may have opened just before the cancellation landed
            raise
        return stream

    async def request(
        self,
        peer_id: str,
        protocol: str,
        header: Mapping[str, Any],
        tensors: Sequence[torch.Tensor] = (),
        timeout: float | None = 30.0,
        addrs: list[str] | None = None,
    ) -> Frame:
        """One request, one response, on a fresh stream. An error frame is raised as its
        `WireError`; a timeout or a cancellation resets the stream (cancelling the remote
        handler)."""
        stream: FrameStream | None = None
        try:
            async with asyncio.timeout(timeout):
                stream = await self.open_stream(peer_id, protocol, addrs)
                frame = await self._exchange(stream, header, tensors)
        except TimeoutError:
            if stream is not None:
                stream.reset_nowait()
            raise RequestTimeoutError(
                f"{protocol} to {peer_id} timed out after {timeout} s"
            ) from None
        except BaseException:
            if stream is not None:
                stream.reset_nowait()
            raise
        await stream.close()
        return frame.raise_for_error()

    @staticmethod
    async def _exchange(
        stream: FrameStream, header: Mapping[str, Any], tensors: Sequence[torch.Tensor]
    ) -> Frame:
        """Send while already listening: a server may answer (an error) before it has read
        everything, e.g. `too_large` after the header alone."""
        sending = asyncio.ensure_future(stream.send(header, tensors))
        receiving = asyncio.ensure_future(stream.recv())
        try:
            await asyncio.wait({sending, receiving}, return_when=asyncio.FIRST_COMPLETED)
            if receiving.done() and not sending.done():
                sending.cancel()  # resets the stream: the rest of the request is moot
                return receiving.result()
            try:
                sending.result()
            except WireError:
                # the answer that explains the failure may already be on its way
                done, _ = await asyncio.wait({receiving}, timeout=1.0)
                if done and not receiving.exception():
                    return receiving.result()
                raise
            return await receiving
        finally:
            for task in (sending, receiving):
                if not task.done():
                    task.cancel()
            await asyncio.gather(sending, receiving, return_exceptions=True)

    # ================================================================== misc peers API

    async def connect(self, maddr: str) -> str:
        """Dial a full address (`.../p2p/<id>`); returns the peer id."""
        return await self._bridge.call(self._t_connect_maddr, maddr)

    async def ping(
        self, peer_id: str, addrs: list[str] | None = None, timeout: float = 5.0
    ) -> float:
        """Round-trip time in seconds over a kept-open stream (dialing first if needed)."""

        async def run() -> float:
            pid = _peer_id(peer_id)
            try:
                with trio.fail_after(timeout):
                    await self._t_connect(pid, _maddrs(addrs))
                    if self._ping is None:
                        raise NodeStoppedError()
                    return await self._ping.ping(pid)
            except trio.TooSlowError:
                raise RequestTimeoutError(f"ping {peer_id} timed out") from None

        return await self._bridge.call(run)

    async def connected_peers(self) -> list[str]:
        async def run() -> list[str]:
            return [str(p) for p in self._t_host().get_connected_peers()]

        return await self._bridge.call(run)

    async def known_peers(self) -> list[tuple[str, list[str]]]:
        """Peers this node knows of (connected, or in the DHT routing table), with addresses."""

        async def run() -> list[tuple[str, list[str]]]:
            host, dht = self._t_host(), self._t_dht()
            ids = dict.fromkeys([*host.get_connected_peers(), *dht.routing_table.get_peer_ids()])
            store = host.get_peerstore()
            out = []
            for pid in ids:
                if pid == host.get_id():
                    continue
                try:
                    addrs = [str(a) for a in store.addrs(pid)]
                except Exception:
                    addrs = []
                out.append((str(pid), addrs))
            return out

        return await self._bridge.call(run)

    async def open_streams(self) -> dict[str, int]:
        """Open libp2p streams by protocol, over all connections (for leak checks)."""

        async def run() -> dict[str, int]:
            counts: dict[str, int] = {}
            for conns in self._t_host().get_network().connections.values():
                for conn in conns:
                    for st in conn.get_streams():
                        if getattr(st, "is_closed", False):
                            continue
                        proto = str(st.get_protocol())
                        counts[proto] = counts.get(proto, 0) + 1
            return counts

        return await self._bridge.call(run)

    # ================================================================== DHT

    def register_validator(self, namespace: str, validator: Validator) -> None:
        """Validate and order the records under `/namespace/...` (strict: keys in namespaces
        without a validator are refused). The validator runs in the trio thread."""
        self._validators[namespace] = validator
        dht = self._dht
        if dht is not None:
            self._bridge.run_sync_soon(lambda: dht.register_validator(namespace, validator))  # type: ignore[arg-type]

    async def put(self, key: str, value: bytes) -> None:
        async def run() -> None:
            await self._t_dht().put_value(key, value)

        await self._bridge.call(run)

    async def get(self, key: str) -> bytes | None:
        """The newest valid value, asking the network every time (never a stale cache)."""

        async def run() -> bytes | None:
            return await fresh_get(self._t_dht(), key)

        return await self._bridge.call(run)

    async def get_local(self, key: str) -> bytes | None:
        """The value this node itself stores for `key` (as a DHT server), if any."""

        async def run() -> bytes | None:
            rec = self._t_dht().value_store.get(key.encode())
            return None if rec is None else bytes(rec.value)

        return await self._bridge.call(run)

    async def provide(self, key: str) -> bool:
        """Announce this node as a provider of `key` (a hex digest); True if any peer took it."""

        async def run() -> bool:
            return await self._t_dht().provide(key)

        return await self._bridge.call(run)

    async def find_providers(self, key: str, count: int = 20) -> list[tuple[str, list[str]]]:
        """(peer id, addresses) of the providers of `key`, asking the network every time."""

        async def run() -> list[tuple[str, list[str]]]:
            infos = await fresh_find_providers(self._t_dht(), key, count)
            return [(str(i.peer_id), [str(a) for a in i.addrs]) for i in infos]

        return await self._bridge.call(run)

    def __repr__(self) -> str:
        return f"P2PNode({self.peer_id}, {'running' if self.running else 'stopped'})"
