"""ZeroMQ transport: one PUB socket per peer, one SUB connected to each in-neighbour.

No broker.  A peer binds its PUB socket (ipc:// on one host by default, or
tcp:// on 127.0.0.1 with an OS-chosen port), reports the endpoint to the
launcher, and connects its SUB socket to the endpoints of its in-neighbours,
subscribing by topic prefix to ``<kind>/<sender>/``.  High-water marks are
unlimited so that PUB never silently drops: losses come only from the link
emulation, where they are counted.

Control (launcher <-> peers) uses ROUTER/DEALER, which queues messages until a
connection exists, so readiness reports and commands are never lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio

HANDSHAKE = "hs"


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

    def connect(self, endpoints: dict[int, str], kinds: tuple[str, ...]) -> None:
        """Subscribe to ``<kind>/<j>/`` of every in-neighbour j, plus its handshake topic."""
        for j, ep in sorted(endpoints.items()):
            self.sub.connect(ep)
            # Subscriptions reach the publisher in order: the handshake topic last, so that
            # hearing a handshake proves the data topics are live too.
            for kind in (*kinds, HANDSHAKE):
                self.sub.setsockopt(zmq.SUBSCRIBE, f"{kind}/{j}/".encode())

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


def pack(msg: dict) -> bytes:
    return msgpack.packb(msg)


def unpack(data: bytes) -> dict:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class ControlServer:
    """Launcher side of the control channel (ROUTER)."""

    def __init__(self, transport: str, host: str, ipc_dir: Path) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = bind_endpoint(self.sock, transport, host, ipc_dir, "control")

    async def recv(self, timeout_s: float | None = None) -> tuple[int, dict] | None:
        if timeout_s is not None and not await self.sock.poll(int(timeout_s * 1000)):
            return None
        ident, data = await self.sock.recv_multipart()
        return int(ident.decode().split("-")[1]), unpack(data)

    async def send(self, peer: int, msg: dict) -> None:
        await self.sock.send_multipart([f"peer-{peer}".encode(), pack(msg)])

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

    async def send(self, msg: dict) -> None:
        await self.sock.send(pack(msg))

    async def recv(self) -> dict:
        return unpack(await self.sock.recv())

    def close(self) -> None:
        self.sock.close()
