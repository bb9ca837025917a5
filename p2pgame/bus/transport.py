"""ZeroMQ transport: one PUB socket per peer, one SUB connected to each in-neighbour.

No broker.  A peer binds its PUB socket (ipc:// on one host by default, or
tcp:// on 127.0.0.1 with an OS-chosen port), reports the endpoint to the
launcher, and connects one SUB socket to each in-neighbour's endpoint,
subscribing to exactly the topics it learns from (:mod:`p2pgame.bus.topics`),
so the publisher never sends it a byte it cannot use.  High-water marks are
unlimited so that PUB never silently drops: losses come only from the link
emulation, where they are counted.

Control (launcher <-> peers) uses ROUTER/DEALER, which queues messages until a
connection exists, so readiness reports and commands are never lost.  The
control channel carries opaque bytes here; the typed messages are
:mod:`p2pgame.peer.control`'s.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from p2pgame.bus.topics import Topic


def bind_endpoint(sock: zmq.Socket, transport: str, host: str, ipc_dir: Path, name: str) -> str:
    if transport == "ipc":
        path = Path(ipc_dir) / f"{name}.sock"
        if len(str(path)) > 100:
            raise ValueError(f"ipc path too long for a unix socket: {path}")
        endpoint = f"ipc://{path}"
        sock.bind(endpoint)
        return endpoint
    port = sock.bind_to_random_port(f"tcp://{host}")
    return f"tcp://{host}:{port}"


def shared_context(sockets: int) -> zmq.asyncio.Context:
    """One zmq context for all the peers of a worker process: one I/O thread for them
    all instead of one each, with room for ``sockets`` sockets (ZeroMQ's default cap is
    1023, too few for hundreds of peers).  Each peer keeps its own sockets."""
    ctx = zmq.asyncio.Context()
    ctx.set(zmq.MAX_SOCKETS, max(1024, sockets))
    return ctx


class Transport:
    """The data plane of one peer."""

    def __init__(self, peer_id: int, ctx: zmq.asyncio.Context | None = None,
                 max_message_bytes: int = -1) -> None:
        self.peer_id = peer_id
        # ZeroMQ refuses a larger frame as it arrives (and drops that connection, which it
        # then re-opens) instead of receiving all of it into memory first.
        self.max_message_bytes = max_message_bytes
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.asyncio.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        _options(self.pub)
        self.endpoint = ""
        # One SUB socket per in-neighbour, connected to that neighbour's endpoint alone:
        # the socket a message arrives on says who sent it, whatever its header claims
        # (the receiver checks the two agree: sender binding).
        self.subs: dict[int, zmq.asyncio.Socket] = {}
        self._subs_now: dict[int, zmq.Socket] = {}
        self.poller = zmq.asyncio.Poller()
        self._held: deque[tuple[int, list[zmq.Frame]]] = deque()  # taken, not yet returned
        # Synchronous views of the same sockets, for the calls that never block (below):
        # they skip zmq.asyncio's per-call future.
        self._pub_now = zmq.Socket.shadow(self.pub.underlying)

    def bind(self, transport: str, host: str, ipc_dir: Path) -> str:
        self.endpoint = bind_endpoint(self.pub, transport, host, ipc_dir, f"peer-{self.peer_id}")
        return self.endpoint

    def connect(self, endpoints: dict[int, str], topics: dict[int, list[Topic]]) -> None:
        """Subscribe to ``topics[j]`` of every in-neighbour j, plus j's handshake topic."""
        for j, ep in sorted(endpoints.items()):
            sub = self.ctx.socket(zmq.SUB)
            _options(sub)
            sub.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            sub.connect(ep)
            # Subscriptions reach the publisher in order: the handshake topic last, so that
            # hearing a handshake proves the data topics are live too.
            for topic in (*sorted(topics.get(j, ())), Topic.handshake(j)):
                sub.setsockopt(zmq.SUBSCRIBE, topic.subscription())
            self.subs[j] = sub
            self._subs_now[j] = zmq.Socket.shadow(sub.underlying)
            self.poller.register(sub, zmq.POLLIN)

    async def send(self, frames: list[Any]) -> None:
        # A PUB socket never blocks (at its HWM it would drop, and the HWM is unlimited),
        # so send at once; the awaitable path stays for the case that it ever reports EAGAIN.
        try:
            self._pub_now.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            await self.pub.send_multipart(frames, copy=False)

    def _drain(self) -> list[tuple[int, list[zmq.Frame]]]:
        out = []
        for j, sock in self._subs_now.items():
            while True:  # whole messages only: ZeroMQ delivers multipart messages atomically
                try:
                    out.append((j, sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)))
                except zmq.Again:
                    break
        return out

    async def recv_from(self) -> list[tuple[int, list[zmq.Frame]]]:
        """Wait for one message, then take every other one already queued, each with the
        in-neighbour whose connection it came on."""
        if self._held:
            out, self._held = list(self._held), deque()
            return out + self._drain()
        if not self.subs:
            await asyncio.Event().wait()  # nobody to hear from: wait until cancelled
        while True:
            out = self._drain()
            if out:
                return out
            await self.poller.poll()

    async def recv_ready(self) -> list[list[zmq.Frame]]:
        """Like :meth:`recv_from`, without the connections."""
        return [frames for _, frames in await self.recv_from()]

    async def recv(self) -> list[zmq.Frame]:
        """One message (the rest of a burst waits for the next call)."""
        if not self._held:
            self._held.extend(await self.recv_from())
        return self._held.popleft()[1]

    def control(self, endpoint: str) -> ControlClient:
        return ControlClient(self.peer_id, endpoint, self.ctx)

    def close(self) -> None:
        self.pub.close(linger=0)
        for sub in self.subs.values():
            sub.close(linger=0)
        if self._own_ctx:
            self.ctx.term()


def _options(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)


class ControlServer:
    """Launcher side of the control channel (ROUTER)."""

    def __init__(self, transport: str, host: str, ipc_dir: Path) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = bind_endpoint(self.sock, transport, host, ipc_dir, "control")
        self.junk = 0

    async def recv(self, timeout_s: float | None = None) -> tuple[int, bytes] | None:
        """(peer id, message bytes), or None when nothing came within ``timeout_s``.

        A frame that does not come from a peer's DEALER (an identity that is not
        ``peer-<id>``, or not two frames) is dropped and counted in ``junk``.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if wait is not None and not await self.sock.poll(int(wait * 1000)):
                return None
            frames = await self.sock.recv_multipart()
            peer = _peer_of(frames[0]) if len(frames) == 2 else None
            if peer is None:
                self.junk += 1
                continue
            return peer, frames[1]

    async def send(self, peer: int, data: bytes) -> None:
        await self.sock.send_multipart([f"peer-{peer}".encode(), data])

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class ControlClient:
    """Peer side of the control channel (DEALER)."""

    def __init__(self, peer_id: int, endpoint: str, ctx: zmq.asyncio.Context) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, f"peer-{peer_id}".encode())
        self.sock.setsockopt(zmq.LINGER, 2000)  # let the final report reach the launcher
        self.sock.connect(endpoint)

    async def send(self, data: bytes) -> None:
        await self.sock.send(data)

    async def recv(self) -> bytes:
        return await self.sock.recv()

    def close(self) -> None:
        self.sock.close()


def _peer_of(ident: bytes) -> int | None:
    try:
        prefix, _, num = ident.decode("ascii").partition("-")
    except UnicodeDecodeError:
        return None
    if prefix != "peer" or not num.isdigit():
        return None
    return int(num)
