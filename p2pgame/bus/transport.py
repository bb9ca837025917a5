"""ZeroMQ transport: one PUB socket per peer, one SUB connected to each in-neighbour.

No broker.  A peer binds its PUB socket (ipc:// on one host by default, or
tcp:// on 127.0.0.1 with an OS-chosen port), reports the endpoint to the
launcher, and connects its SUB socket to the endpoints of its in-neighbours,
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

import time
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


class Transport:
    """The data plane of one peer."""

    def __init__(self, peer_id: int, ctx: zmq.asyncio.Context | None = None) -> None:
        self.peer_id = peer_id
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.asyncio.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.sub = self.ctx.socket(zmq.SUB)
        for s in (self.pub, self.sub):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.RCVHWM, 0)
        self.endpoint = ""
        # Synchronous views of the same sockets, for the calls that never block (below):
        # they skip zmq.asyncio's per-call future.
        self._pub_now = zmq.Socket.shadow(self.pub.underlying)
        self._sub_now = zmq.Socket.shadow(self.sub.underlying)

    def bind(self, transport: str, host: str, ipc_dir: Path) -> str:
        self.endpoint = bind_endpoint(self.pub, transport, host, ipc_dir, f"peer-{self.peer_id}")
        return self.endpoint

    def connect(self, endpoints: dict[int, str], topics: dict[int, list[Topic]]) -> None:
        """Subscribe to ``topics[j]`` of every in-neighbour j, plus j's handshake topic."""
        for j, ep in sorted(endpoints.items()):
            self.sub.connect(ep)
            # Subscriptions reach the publisher in order: the handshake topic last, so that
            # hearing a handshake proves the data topics are live too.
            for topic in (*sorted(topics.get(j, ())), Topic.handshake(j)):
                self.sub.setsockopt(zmq.SUBSCRIBE, topic.subscription())

    async def send(self, frames: list[Any]) -> None:
        # A PUB socket never blocks (at its HWM it would drop, and the HWM is unlimited),
        # so send at once; the awaitable path stays for the case that it ever reports EAGAIN.
        try:
            self._pub_now.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            await self.pub.send_multipart(frames, copy=False)

    async def recv(self) -> list[zmq.Frame]:
        return await self.sub.recv_multipart(copy=False)

    async def recv_ready(self) -> list[list[zmq.Frame]]:
        """Wait for one message, then take every other one already queued."""
        out = [await self.sub.recv_multipart(copy=False)]
        while True:  # whole messages only: ZeroMQ delivers multipart messages atomically
            try:
                out.append(self._sub_now.recv_multipart(flags=zmq.NOBLOCK, copy=False))
            except zmq.Again:
                return out

    def control(self, endpoint: str) -> ControlClient:
        return ControlClient(self.peer_id, endpoint, self.ctx)

    def close(self) -> None:
        self.pub.close(linger=0)
        self.sub.close(linger=0)
        if self._own_ctx:
            self.ctx.term()


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
